"""The sinks alone: ``WriteScored`` to parquet files in a directory (checked by reading them
back), ``WriteFeatures`` to an in-memory online store (read back; it emits nothing)."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from apache_beam import Create, Map
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from features.incremental import Status
from streaming.job.entity_state import FeatureRow
from streaming.job.scoring import Scored
from streaming.job.sinks import WriteFeatures, WriteScored
from streaming.schema import Transaction, scored_record, time_ns
from streaming.store.memory import InMemoryFeatureStore
from streaming.store.names import stored_entities
from tests.streaming.job.stages import SPEC, batch_pipeline

NOW = 1_700_000_000.0
START = datetime(2018, 4, 1)
FEATURES = ["TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW"]


def _tx(transaction_id: int, customer: int, terminal: int, minutes: int) -> Transaction:
    """Parsed one second before ``NOW``."""
    when = time_ns(START + timedelta(minutes=minutes))
    return Transaction(transaction_id, when, customer, terminal, 10.0 + transaction_id, NOW - 1)


def _scored(transaction_id: int, score: float, status: Status) -> Scored:
    return Scored(
        tx=_tx(transaction_id, 5, 33, transaction_id),
        score=score,
        threshold=0.5,
        model_version="v0001",
        reasons=(),
        status=int(status),
        accepted=status <= Status.LATE,
        features=np.array([10.0 + transaction_id, np.nan if transaction_id == 2 else 3.0]),
    )


def test_write_scored_writes_every_row_to_parquet_parts(tmp_path: Path) -> None:
    """One row per scored transaction (:func:`scored_record`), rejected ones included, NaN kept;
    the only files are complete ``part-*.parquet`` ones (no temporary file left behind). The
    rows carry their event time as the element timestamp, as the job's Pub/Sub read stamps
    them."""
    scored = [
        _scored(1, 0.9, Status.OK),
        _scored(2, 0.1, Status.LATE),
        _scored(3, 0.7, Status.TOO_LATE),
    ]
    directory = tmp_path / "scored"
    with batch_pipeline() as p:
        _ = (
            p
            | Create([scored[:1], scored[1:]])
            | Map(lambda b: TimestampedValue(b, min(s.tx.time_ns for s in b) / 1e9))
            | WriteScored(FEATURES, directory=str(directory), clock=lambda: NOW)
        )
    files = sorted(f for f in directory.rglob("*") if f.is_file())
    assert files and all(f.parent == directory and f.match("part-*.parquet") for f in files)
    got = pd.concat(map(pd.read_parquet, files)).sort_values("transaction_id", ignore_index=True)
    expected = pd.DataFrame([scored_record(s, FEATURES, lambda: NOW) for s in scored])
    assert list(got.columns) == list(expected.columns)
    assert got["alert"].tolist() == [True, False, False]  # a rejected row never alerts
    assert got["status"].tolist() == ["OK", "LATE", "TOO_LATE"]
    assert got["latency_ms"].tolist() == [1000.0] * 3
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


_STORES: dict[str, InMemoryFeatureStore] = {}


def _open_store(name: str) -> InMemoryFeatureStore:
    """The test's store by name: the runner unpickles the writer factory in this process, so
    the stage writes to the store the test reads."""
    return _STORES[name]


def _row(
    transaction_id: int, customer: int, terminal: int, minutes: int, status: Status
) -> FeatureRow:
    """A feature row whose values are ``transaction_id`` + column / 100, so the test can tell
    which transaction's values an entity holds."""
    values = transaction_id + np.arange(len(SPEC.names)) / 100
    return FeatureRow(_tx(transaction_id, customer, terminal, minutes), values, int(status))


def test_write_features_stores_each_entitys_newest_accepted_values(
    request: pytest.FixtureRequest,
) -> None:
    """Customer 1 pays at minutes 10 (tx 1) and 20 (tx 2, delivered first): tx 2's values win;
    terminal 8 holds tx 3's (newer than tx 1). Refused rows are not written: tx 4 (newer, of
    customer 1 and terminal 7) nor tx 5, the only one of customer 3 and terminal 9."""
    rows = [
        _row(2, customer=1, terminal=7, minutes=20, status=Status.OK),
        _row(1, customer=1, terminal=8, minutes=10, status=Status.OK),
        _row(3, customer=2, terminal=8, minutes=30, status=Status.LATE),
        _row(4, customer=1, terminal=7, minutes=40, status=Status.DUPLICATE),
        _row(5, customer=3, terminal=9, minutes=50, status=Status.TOO_LATE),
    ]
    name = request.node.nodeid
    _STORES[name] = store = InMemoryFeatureStore(SPEC, clock=lambda: START + timedelta(hours=1))
    try:
        with batch_pipeline() as p:
            batches = Create([rows[:2], rows[2:]])
            out = p | batches | WriteFeatures(SPEC, functools.partial(_open_store, name))
            assert_that(out, equal_to([]))
    finally:
        del _STORES[name]
    read = store.read({"CUSTOMER_ID": np.array([1, 2, 3]), "TERMINAL_ID": np.array([7, 8, 9])})
    winners = {"customer": [2, 3, None], "terminal": [2, 3, None]}  # the ids read, in order
    for entity in stored_entities(SPEC):
        names = SPEC.entity_names(entity)
        columns = [read.columns.index(n) for n in names]
        expected = np.array(
            [
                np.full(len(names), np.nan)
                if tx is None
                else tx + np.array([SPEC.names.index(n) for n in names]) / 100
                for tx in winners[entity.name]
            ]
        )
        assert read.found[entity.name].tolist() == [tx is not None for tx in winners[entity.name]]
        np.testing.assert_array_equal(read.values[:, columns], expected)
