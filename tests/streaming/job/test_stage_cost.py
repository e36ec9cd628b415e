"""What the stages report of their own cost: CPU time per stage in the process totals, and
the scoring batch's bytes for RunInference's metrics."""

from __future__ import annotations

import json

import numpy as np

import streaming.job.common as common
from streaming.job.common import ProcessTotals
from streaming.job.entity_state import FeatureRow
from streaming.job.parse import _Parse
from streaming.job.scoring import BoosterHandler
from streaming.schema import Transaction, parse_transaction
from tests.streaming.job.stages import TX


def test_a_stage_adds_its_cpu_time_once_per_bundle(monkeypatch):
    totals = ProcessTotals(every_s=3600)
    monkeypatch.setattr(common, "TOTALS", totals)
    ticks = iter(range(0, 10_000_000, 1_500))  # each reading 1.5 µs after the last
    monkeypatch.setattr(common.time, "thread_time_ns", lambda: next(ticks))
    fn = _Parse(parse_transaction, "parse_transactions", lambda: 1_700_000_000.0)
    fn.setup()
    out = [r for _ in range(4) for r in fn.process(json.dumps(TX))]
    assert [r.value.transaction_id for r in out] == [17] * 4
    assert totals.counts == {}  # nothing until the bundle ends
    fn.finish_bundle()
    assert totals.counts == {"cpu_us_parse_transactions": 6}  # 4 elements x 1.5 µs


def test_scoring_batch_bytes_are_its_features():
    tx = Transaction(1, 0, 2, 3, 10.0)
    rows = [FeatureRow(tx, np.zeros(40), 0), FeatureRow(tx, np.ones(40, np.float32), 0)]
    assert BoosterHandler("unused", "default").get_num_bytes(rows) == 40 * 8 + 40 * 4
