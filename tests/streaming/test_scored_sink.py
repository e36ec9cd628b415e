"""The scored sink: Beam file IO, deterministic names, every row once after a re-run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import GlobalWindow, IntervalWindow, TimestampedValue

from features.incremental import Status
from streaming.job.sinks import WriteScored, part_name
from streaming.schema import Transaction, count_scored, read_scored, scored_files, time_ns

FEATURES = ["f0", "f1"]
HOUR_S = 3600


def scored_row(i: int) -> SimpleNamespace:
    """A scored transaction ``i``, ``i`` minutes after 2018-08-15T00:00 (three event hours)."""
    from datetime import datetime, timedelta

    when = datetime(2018, 8, 15) + timedelta(minutes=i)
    tx = Transaction(i, time_ns(when), 10 + i % 3, 20 + i % 5, 1.5 * i, received_at=0.0)
    return SimpleNamespace(tx=tx, score=i / 200, threshold=0.5, model_version="v0001",
                           status=int(Status.OK), accepted=True,
                           features=np.array([float(i), np.nan]))  # fmt: skip


def _write(rows: list, directory: Path) -> None:
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create(rows)
            | beam.Map(lambda s: TimestampedValue([s], s.tx.time_ns / 1e9))
            | WriteScored(FEATURES, directory=str(directory), clock=lambda: 0.0)
        )


def test_rows_are_written_once_by_event_hour_and_a_rerun_replaces_rather_than_duplicates(
    tmp_path: Path,
) -> None:
    rows = [scored_row(i) for i in range(150)]
    _write(rows, tmp_path)
    first = scored_files(str(tmp_path))
    assert len(first) == 3 * 4  # per event hour (00, 01, 02), one file per shard
    assert all(Path(f).name.startswith("part-20180815T0") for f in first)
    scored = read_scored(str(tmp_path))
    assert sorted(scored["transaction_id"]) == list(range(150))
    assert np.isnan(scored["f1"]).all() and (scored["f0"] == scored["transaction_id"]).all()

    _write(rows, tmp_path)  # the same bundle again, as a retry would write it
    assert scored_files(str(tmp_path)) == first
    assert count_scored(str(tmp_path)) == 150


def test_part_names_depend_on_window_pane_and_shard_only() -> None:
    window = IntervalWindow(0, HOUR_S)
    first = part_name(window, SimpleNamespace(index=3), 1)
    assert first == "part-19700101T000000-p00003-s001.parquet"
    assert part_name(window, SimpleNamespace(index=3), 1) == first
    assert part_name(window, SimpleNamespace(index=4), 1) != first
    assert part_name(window, SimpleNamespace(index=3), 2) != first
    assert part_name(GlobalWindow(), None, 0) == "part-global-p00000-s000.parquet"


def test_read_scored_of_an_empty_directory_is_empty(tmp_path: Path) -> None:
    assert read_scored(str(tmp_path)).empty and count_scored(str(tmp_path)) == 0


@pytest.mark.parametrize("kwargs", [{}, {"directory": "d", "table": "p:d.t"}])
def test_write_scored_needs_exactly_one_destination(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WriteScored(FEATURES, **kwargs)


def test_successive_firings_of_one_window_write_files_of_their_own(tmp_path: Path) -> None:
    """Streaming: a window fires early, then again for rows that come later; the second
    firing's files must not replace the first's."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class

    rows = [scored_row(i) for i in range(40)]  # all in the 00:00 hour
    stream = _TestStream().advance_watermark_to(0)
    stream.add_elements([TimestampedValue([r], r.tx.time_ns / 1e9) for r in rows[:20]])
    stream.advance_processing_time(10)
    stream.add_elements([TimestampedValue([r], r.tx.time_ns / 1e9) for r in rows[20:]])
    stream.advance_processing_time(10)
    stream.advance_watermark_to_infinity()
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = p | stream | WriteScored(FEATURES, directory=str(tmp_path), clock=lambda: 0.0)
    names = [Path(f).name for f in scored_files(str(tmp_path))]
    panes = {name.split("-p")[1][:5] for name in names}
    assert len(panes) >= 2, names  # at least two firings, each with its own files
    assert sorted(read_scored(str(tmp_path))["transaction_id"]) == list(range(40))


@pytest.mark.parametrize(("flush_s", "firings"), [(5, 3), (30, 1)])
def test_the_flush_period_sets_how_often_a_window_fires(tmp_path: Path, flush_s, firings) -> None:
    """The same stream (rows, 10 s, rows, 10 s, the watermark's end): every 5 s, a firing after
    each pause and one at the window's end; every 30 s, the end's only."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class

    rows = [scored_row(i) for i in range(40)]
    stream = _TestStream().advance_watermark_to(0)
    stream.add_elements([TimestampedValue([r], r.tx.time_ns / 1e9) for r in rows[:20]])
    stream.advance_processing_time(10)
    stream.add_elements([TimestampedValue([r], r.tx.time_ns / 1e9) for r in rows[20:30]])
    stream.advance_processing_time(10)
    stream.add_elements([TimestampedValue([r], r.tx.time_ns / 1e9) for r in rows[30:]])
    stream.advance_watermark_to_infinity()
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        _ = p | stream | WriteScored(FEATURES, directory=str(tmp_path), flush_s=flush_s)
    names = [Path(f).name for f in scored_files(str(tmp_path))]
    assert len({name.split("-p")[1][:5] for name in names}) == firings, names
    assert sorted(read_scored(str(tmp_path))["transaction_id"]) == list(range(40))


def test_a_flush_period_under_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="scored_flush_s must be at least 1 second, got 0"):
        WriteScored(FEATURES, directory="d", flush_s=0)


def test_rows_stamped_at_the_end_of_the_global_window_land_in_their_event_hour(tmp_path: Path):
    """Lists of rows stamped with another time (here the global window's end, where a batch
    runner's RunInference emits them): the sink stamps each row with its event time again, so
    files still follow the event hours."""
    rows = [scored_row(i) for i in range(90)]
    end = GlobalWindow().max_timestamp()
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create([rows[:45], rows[45:]])
            | beam.Map(lambda b: TimestampedValue(b, end))
            | WriteScored(FEATURES, directory=str(tmp_path), clock=lambda: 0.0)
        )
    hours = {Path(f).name.split("-")[1] for f in scored_files(str(tmp_path))}
    assert hours == {"20180815T000000", "20180815T010000"}


def test_a_bundles_rows_of_one_hour_and_shard_go_on_as_one_element() -> None:
    """The grouping's trigger costs the runner per element: ``_ToParts`` hands on one part per
    (hour, shard) at the bundle's end, stamped with the earliest of its rows' times."""
    from streaming.job.sinks import SCORED_SHARDS, _ToParts

    step = _ToParts(clock=lambda: 0.0)
    step.start_bundle()
    rows = [scored_row(i) for i in range(100)]  # 00:00 to 01:39: two event hours
    assert step.process(rows[::-1], window=GlobalWindow()) is None
    out = step.finish_bundle()
    assert len(out) == 2 * SCORED_SHARDS
    got = {}
    for element in out:
        shard, part = element.value
        assert element.windows == (GlobalWindow(),)
        ids = sorted(part.ids[:, 0].tolist())
        assert {i % SCORED_SHARDS for i in ids} == {shard}
        assert len({rows[i].tx.time_ns // (HOUR_S * 10**9) for i in ids}) == 1  # one hour
        assert element.timestamp.micros == rows[ids[0]].tx.time_ns // 1_000  # the earliest
        got.update(dict.fromkeys(ids))
    assert sorted(got) == list(range(100))
    step.start_bundle()
    assert step.finish_bundle() == []  # nothing carried over between bundles


def _varied(i: int) -> SimpleNamespace:
    """``scored_row(i)`` with each status, rejected rows, scores on and about the threshold,
    another model version and NaN features in turn."""
    row = scored_row(i)
    row.status = int(list(Status)[i % len(Status)])
    row.accepted = row.status <= Status.LATE
    row.score = (0.5, 0.2, 0.9, float("nan"))[i % 4]
    row.model_version = f"v000{i % 2}"
    row.tx = Transaction(i, row.tx.time_ns + 123_456_789, 7, 8, 1.0, received_at=99.876543)
    row.features = np.array([np.nan, i * 0.1]) if i % 3 else row.features
    return row


def test_a_part_is_written_as_the_rows_of_scored_record() -> None:
    """The columnar part gives the table ``scored_record``'s dicts give: the same columns in
    the same order, the same types, the same values (NaN kept, a rejected row never alerts,
    the event time to the microsecond, the latency rounded to the microsecond)."""
    import pyarrow as pa

    from streaming.job.sinks import scored_table
    from streaming.schema import ScoredPart, scored_record

    scored = [_varied(i) for i in range(24)]
    now = 100.0
    expected = pa.Table.from_pylist([scored_record(s, FEATURES, lambda: now) for s in scored])
    parts = [ScoredPart.of(scored[:5], now), ScoredPart.of(scored[5:], now)]
    got = scored_table(parts, FEATURES)
    assert got.schema == expected.schema
    pd.testing.assert_frame_equal(got.to_pandas(), expected.to_pandas(), check_exact=True)
    assert got["alert"].to_pylist() != [s.score >= s.threshold for s in scored]  # rejections


def test_rows_left_in_the_grouping_by_a_job_before_an_update_are_written_too() -> None:
    """A job updated in place finds rows (dicts, alone or in lists) in the grouping beside the
    new parts: one table holds them all, with the parts' types."""
    from streaming.job.sinks import scored_table
    from streaming.schema import ScoredPart, scored_record

    scored = [_varied(i) for i in range(6)]
    rows = [scored_record(s, FEATURES, lambda: 100.0) for s in scored]
    table = scored_table([rows[:2], ScoredPart.of(scored[2:5], 100.0), rows[5]], FEATURES)
    assert sorted(table["transaction_id"].to_pylist()) == list(range(6))
    assert table.schema == ScoredPart.of(scored, 100.0).table(FEATURES).schema
    only_rows = scored_table([rows], FEATURES)
    assert only_rows["transaction_id"].to_pylist() == list(range(6))


def test_a_counter_polled_while_files_come_counts_each_row_once(tmp_path: Path) -> None:
    """``ScoredCounter`` reads each file once and adds the files new since its last poll; a
    file written again under its name (a retried bundle) is not counted twice."""
    from streaming.schema import ScoredCounter

    counter = ScoredCounter(str(tmp_path))
    assert counter() == 0
    _write([scored_row(i) for i in range(60)], tmp_path)  # the 00:00 hour
    assert counter() == 60
    _write([scored_row(i) for i in range(60, 150)], tmp_path)  # 01:00 and 02:00
    _write([scored_row(i) for i in range(60)], tmp_path)  # the first hour again
    assert counter() == count_scored(str(tmp_path)) == 150
    assert len(counter.rows) == len(scored_files(str(tmp_path)))
