"""In-stream monitoring: the windowed records equal the offline ones of the same scored rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.incremental import Status
from streaming.job.scoring import Scored
from streaming.monitoring.stats import window_records
from streaming.schema import Transaction, scored_record, time_ns
from training.drift import reference_profile

SPEC = presets.BASELINE
HOUR_NS = 3_600 * 10**9
_GOT: list[dict] = []


def _keep(record: dict) -> None:
    _GOT.append(record)


def _scored(n: int, seed: int = 0) -> list[Scored]:
    rng = np.random.default_rng(seed)
    start = time_ns(pd.Timestamp("2018-05-01").to_pydatetime())
    times = start + np.sort(rng.integers(0, 3 * HOUR_NS, n))
    shift = np.where(times >= start + 2 * HOUR_NS, 3.0, 0.0)  # the third hour drifts
    X = rng.normal(size=(n, len(SPEC.names))) + shift[:, None]
    scores = rng.random(n)
    return [
        Scored(
            tx=Transaction(i, int(t), i % 7, i % 5, 10.0, received_at=0.0),
            score=float(s),
            threshold=0.9,
            model_version="v0001",
            reasons=(),
            status=int(Status.OK),
            accepted=True,
            features=x,
        )
        for i, (t, x, s) in enumerate(zip(times.tolist(), X, scores, strict=True))
    ]


@pytest.mark.slow
def test_windowed_records_equal_the_offline_ones():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream, TimestampedValue

    from streaming.monitoring.stage import MonitorWindows

    rows = _scored(6_000)  # 2,000 a window: small windows read a higher PSI
    rng = np.random.default_rng(1)
    reference = reference_profile(
        rng.normal(size=(2_000, len(SPEC.names))), SPEC.names, scores=rng.random(2_000)
    )
    clock = lambda: 0.0  # noqa: E731 - latency 0 for every row, on both sides
    batches = [rows[i : i + 7] for i in range(0, len(rows), 7)]  # as the job's: lists of rows
    stream = (
        TestStream()
        .add_elements([TimestampedValue(b, b[0].tx.time_ns / 1e9) for b in batches])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    _GOT.clear()
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | stream
            | MonitorWindows(SPEC.names, reference, window_s=3600, clock=clock)
            | beam.Map(_keep)
        )
    offline = window_records(
        pd.DataFrame([scored_record(r, SPEC.names, clock) for r in rows]), reference, SPEC.names
    )
    got = sorted(_GOT, key=lambda r: r["window_start"])
    assert [r["window_start"] for r in got] == [r["window_start"] for r in offline]
    for streamed, expected in zip(got, offline, strict=True):
        assert streamed["events"] == expected["events"] and streamed["alerts"] == expected["alerts"]
        assert streamed["max_psi"] == pytest.approx(expected["max_psi"])
        assert streamed["drift"] == expected["drift"]
    assert [r["drift"] for r in got] == ["stable", "stable", "significant"]


def test_calendar_inputs_are_reported_but_do_not_make_a_window_drift():
    rows = _scored(2_000)
    night = SPEC.names.index("TX_DURING_NIGHT")
    for r in rows:  # the other inputs match the reference; an hour is all night or all day
        r.features[:] = np.random.default_rng(r.tx.transaction_id).normal(size=len(SPEC.names))
        r.features[night] = 1.0
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, len(SPEC.names)))
    X[:, night] = rng.random(len(X)) < 0.3
    reference = reference_profile(X, SPEC.names)
    records = window_records(
        pd.DataFrame([scored_record(r, SPEC.names, lambda: 0.0) for r in rows]),
        reference,
        SPEC.names,
    )
    assert all(r["psi_TX_DURING_NIGHT"] > 0.25 for r in records)
    assert all(r["max_psi_feature"] != "TX_DURING_NIGHT" for r in records)
    assert [r["drift"] for r in records] == ["stable"] * len(records)


def test_parts_count_as_their_rows_and_rows_from_before_an_update_still_count():
    """The combine's parts (the reference's inputs taken by name, here in another order than the
    features) give the counts of the same rows as dicts; dicts beside parts are counted too."""
    from streaming.monitoring.stage import _MonitorCombine
    from streaming.monitoring.stats import WindowCounts
    from streaming.schema import ScoredPart

    rows = _scored(500)  # scores uniform, threshold 0.9: about 50 alerts
    names = SPEC.names[::-1]
    rng = np.random.default_rng(2)
    reference = reference_profile(
        rng.normal(size=(2_000, len(names))), names, scores=rng.random(2_000)
    )
    combine = _MonitorCombine(reference, SPEC.names)
    dicts = [scored_record(r, SPEC.names, lambda: 1.0) for r in rows]
    acc = combine.create_accumulator()
    acc = combine.add_input(acc, ScoredPart.of(rows[:200], 1.0))
    acc = combine.add_input(acc, dicts[200])
    acc = combine.add_input(acc, ScoredPart.of(rows[201:], 1.0))
    got = combine.extract_output(acc)
    expected = WindowCounts.of_rows(reference, dicts)
    assert (got.events, got.alerts) == (expected.events, expected.alerts)
    assert got.events == 500 and got.alerts > 0
    for field in ("features", "scores", "latency"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
