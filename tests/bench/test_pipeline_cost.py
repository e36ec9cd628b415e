"""The pipeline benchmark's cost keys from two runs' figures, the best runs it keeps, and the
process and thread CPU probes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.pipeline import Run, cost_metrics, cpu_seconds, thread_cpu_seconds


def test_cost_per_million_from_the_runs_totals():
    totals = {
        "cpu_us_customer_features": 300_000,  # 0.3 s
        "cpu_us_score": 100_000,  # 0.1 s
        "bigtable_mutate_rows": 4,
        "bigtable_rows_mutated": 3_900,
        "bigtable_read_rows": 1,
        "bigtable_rows_read": 50,
        "feature_lookups": 2,
        "states_from_store": 3,
        "states_missing_from_store": 1,
    }
    full = Run(events=4_000, seconds=4.0, transactions=2_000, cpu_s=1.2, totals=totals)
    passthrough = Run(events=4_000, seconds=2.0, transactions=2_000, cpu_s=0.5, totals={})
    m = cost_metrics(full, passthrough)
    assert full.events_per_s == 1_000.0
    assert m["job_cpu_s_per_million"] == pytest.approx(200.0)  # 0.4 s over 2,000 tx
    assert m["runner_cpu_s_per_million"] == pytest.approx(400.0)
    assert m["process_cpu_s_per_million"] == pytest.approx(600.0)
    assert m["passthrough_cpu_s_per_million"] == pytest.approx(250.0)
    assert m["job_cpu_us_per_tx_by_stage"] == {"customer_features": 150.0, "score": 50.0}
    assert m["bigtable_writes_per_million"] == 2_000
    assert m["bigtable_rows_mutated_per_million"] == 1_950_000
    assert m["bigtable_reads_per_million"] == (1 + 2 + 3 + 1) * 500
    assert m["bigtable_rows_read_per_million"] == 25_000


def test_cpu_seconds_of_a_process_grow_with_its_work():
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert cpu_seconds(os.getpid()) > before


def test_thread_cpu_seconds_charge_the_thread_that_works():
    started, stop = threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def spin() -> None:
        ids["worker"] = threading.get_native_id()
        started.set()
        while not stop.is_set():
            sum(i * i for i in range(10_000))

    before = thread_cpu_seconds(os.getpid())
    worker = threading.Thread(target=spin)
    worker.start()
    started.wait()
    try:
        for _ in range(600):  # until the worker has 0.2 s of CPU (the kernel counts in ticks)
            now = thread_cpu_seconds(os.getpid())
            if now.get(ids["worker"], 0.0) >= 0.2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the spinning thread was charged no CPU time in 30 s")
    finally:
        stop.set()
        worker.join()
    main = threading.get_native_id()
    assert ids["worker"] not in before
    assert now[main] - before[main] < now[ids["worker"]]  # the main thread mostly slept


def test_the_runner_threads_share_of_a_core_over_the_phase():
    run = Run(events=4_000, seconds=4.0, transactions=2_000, cpu_s=3.0, totals={},
              busiest_thread_cpu_s=2.5)  # fmt: skip
    assert run.runner_thread_share == pytest.approx(0.625)
    assert Run(4_000, 4.0, 2_000, 3.0, {}).runner_thread_share == 0.0  # not measured


def test_the_best_run_of_each_job_is_kept_the_jobs_taking_turns(monkeypatch: pytest.MonkeyPatch):
    from bench import pipeline

    speeds = {"full": [900.0, 1_200.0, 1_000.0], "passthrough": [2_000.0, 1_500.0, 2_500.0]}
    calls: list[str] = []

    def throughput(kind: str, w: object, tmp: object, count: int) -> Run:
        calls.append(kind)
        return Run(events=count, seconds=count / speeds[kind].pop(0), transactions=count,
                   cpu_s=1.0, totals={})  # fmt: skip

    monkeypatch.setattr(pipeline, "_throughput", throughput)
    full, passthrough = pipeline._best_throughputs(None, None, 3_000, rounds=3)
    assert calls == ["full", "passthrough"] * 3
    assert full.events_per_s == pytest.approx(1_200.0)
    assert passthrough.events_per_s == pytest.approx(2_500.0)
    with pytest.raises(ValueError, match="rounds"):
        pipeline.bench_pipeline(rounds=0)
