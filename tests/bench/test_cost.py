"""The sizing arithmetic of bench.cost: workers and nodes from cost per million transactions."""

from __future__ import annotations

import json

import pytest

from bench import cost


def test_workers_round_up_to_whole_workers_of_the_usable_cores():
    # 1,000 tx/s at 2,000 CPU s per million = 2 cores; 4 vCPUs at 50 % give 2: one worker
    assert cost.workers(1_000, 2_000, vcpus=4, utilisation=0.5) == 1
    assert cost.workers(1_001, 2_000, vcpus=4, utilisation=0.5) == 2
    assert cost.workers(100_000, 2_000, vcpus=4, utilisation=0.5) == 100
    assert cost.workers(1, 0.001) == 1  # never none


@pytest.mark.parametrize(("vcpus", "utilisation"), [(0, 0.5), (4, 0.0), (4, 1.5)])
def test_workers_refuse_impossible_machines(vcpus, utilisation):
    with pytest.raises(ValueError, match="vcpus"):
        cost.workers(1_000, 1_000, vcpus=vcpus, utilisation=utilisation)


def test_bigtable_nodes_add_the_shares_of_writes_and_reads():
    per_node_writes = cost.BIGTABLE_SSD_WRITE_ROWS_PER_S
    per_node_reads = cost.BIGTABLE_SSD_READ_ROWS_PER_S
    # exactly one node's writes, then one node's writes plus one node's reads
    assert cost.bigtable_nodes(per_node_writes, 1e6, 0) == 1
    assert cost.bigtable_nodes(per_node_writes, 1e6, per_node_reads / per_node_writes * 1e6) == 2
    assert cost.bigtable_nodes(per_node_writes, 1e6, 0, headroom=2.0) == 2
    assert cost.bigtable_nodes(10, 1, 0) == 1  # a cluster has at least one node


def test_dataflow_cpu_is_the_stages_plus_the_runner_low_and_high():
    metrics = {"job_cpu_s_per_million": 500.0, "runner_cpu_s_per_million": 900.0}
    low, high = cost.dataflow_cpu_s_per_million(metrics)
    per_tx_us = cost.STEPS_PER_TRANSACTION * cost.BEAM_PYTHON_US_PER_ELEMENT_STEP
    assert low == pytest.approx(500.0 + per_tx_us)
    assert high == 1_400.0


def test_sizing_table_and_command(tmp_path, capsys):
    metrics = {
        "job_cpu_s_per_million": 1_000.0,
        "runner_cpu_s_per_million": 1_000.0,
        "bigtable_rows_mutated_per_million": 2_000_000,
        "bigtable_rows_read_per_million": 0,
    }
    rows = cost.sizing(metrics, rates=(10_000,))
    assert rows[0].tps == 10_000
    assert rows[0].workers_low < rows[0].workers_high
    assert rows[0].bigtable_nodes == 2  # 20,000 rows/s over 14,000 per node
    assert rows[0].bigtable_nodes_low_latency == 3
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(metrics))
    assert cost.main([str(path)]) == 0
    table = capsys.readouterr().out
    assert "| 1,000 |" in table and "| 100,000 |" in table
    path.write_text(json.dumps({"job_cpu_s_per_million": None}))
    assert cost.main([str(path)]) == 1
