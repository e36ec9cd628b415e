"""Where the job's results go besides Pub/Sub: the scored-events sink and the online store.

Scored files are windowed, grouped per firing and written through ``FileSystems`` under
deterministic names; the online store is
written once per bundle (buffer in ``process``, flush in ``finish_bundle``), one round trip per
bundle. A failed write raises, so the runner retries the bundle (Dataflow) or the job stops
loudly (DirectRunner); nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from features.spec import FeatureSpec
from streaming.job.common import (
    NAMESPACE,
    TOTALS,
    Clock,
    StageCpu,
    StampedGroups,
    event_micros,
    event_timestamp,
)
from streaming.schema import ScoredPart, scored_record
from streaming.store.base import EntityBatch, OnlineFeatureWriter
from streaming.store.names import stored_entities

SCORED_WINDOW_S = 3600
"""Scored files are grouped by the hour of their transactions' event time."""
SCORED_ALLOWED_LATENESS_S = 3650 * 86_400
"""Rows of any age are written: a local replay of old data is all late (the DirectRunner's
watermark is the wall clock); a window's later rows go to further panes, never dropped."""


SCORED_SHARDS = 4
"""Files per window and firing (rows are spread by transaction id)."""
SCORED_FLUSH_S = 5
"""Seconds of processing time between the firings of an event hour's scored files."""


def part_name(window: Any, pane: Any, shard: int) -> str:
    """``part-<window start>-p<pane>-s<shard>.parquet``: a function of the window, the firing
    and the shard only, so a retried bundle writes the same name (replacing, never
    duplicating) while each firing of a window gets names of its own."""
    start = getattr(window, "start", None)
    try:
        stamp = start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
    except (AttributeError, OverflowError):  # the global window (unbounded start)
        stamp = "global"
    index = pane.index if pane is not None else 0
    return f"part-{stamp}-p{index:05d}-s{shard:03d}.parquet"


def scored_table(
    parts: Iterable[ScoredPart | list[dict] | dict], features: Sequence[str]
) -> pa.Table | None:
    """The rows of ``parts`` as one table (None: no rows). Parts that are rows
    (:func:`scored_record` dicts, alone or in lists) are what a job version that grouped rows
    instead of parts has left in the grouping when it is updated in place: they are read too."""
    columnar, rows = [], []
    for part in parts:
        if isinstance(part, ScoredPart):
            columnar.append(part)
        else:
            rows += part if isinstance(part, list) else [part]
    tables = [ScoredPart.concat(columnar).table(features)] if columnar else []
    if rows:
        table = pa.Table.from_pylist(rows)
        tables.append(table.cast(tables[0].schema) if tables else table)
    return pa.concat_tables(tables) if tables else None


_DICTIONARY_COLUMNS = ["model_version", "status"]
"""The scored files' dictionary-encoded columns: a few values each. The features' floats are
not (parquet's default tries a dictionary for every column and gives up on most: 4 times the
CPU of the whole write)."""


class _WriteParquetPart(beam.DoFn):
    """One firing's parts of one shard -> one parquet file named by :func:`part_name`, through
    ``FileSystems`` (a local path or ``gs://``). Locally it is written to a hidden temporary
    name and renamed; an object store replaces an object whole."""

    def __init__(self, directory: str, features: Sequence[str]) -> None:
        self.directory, self.features = directory, list(features)
        self.files = Metrics.counter(NAMESPACE, "scored_files")
        self.cpu = StageCpu("write_scored")

    def process(
        self,
        element: tuple[int, Iterable[ScoredPart]],
        window=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        started = self.cpu.start()
        shard, parts = element
        table = scored_table(parts, self.features)
        if table is None:  # a firing with no new rows (an on-time pane may be empty)
            self.cpu.stop(started)
            return ()
        name = part_name(window, pane, shard)
        local = FileSystems.get_scheme(self.directory) in (None, "file")
        target = FileSystems.join(self.directory, name)
        written = FileSystems.join(self.directory, f".{name}.tmp") if local else target
        with FileSystems.create(written, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pq.write_table(table, f, use_dictionary=_DICTIONARY_COLUMNS)
        if local:
            FileSystems.rename([written], [target])
        self.files.inc()
        self.cpu.stop(started)
        return (target,)

    def finish_bundle(self) -> None:
        self.cpu.report()


class WriteScored(beam.PTransform):
    """Lists of scored transactions -> parquet files under ``directory`` (a local path or a
    ``gs://`` URI) or a BigQuery table ``project:dataset.table`` (Storage Write API).

    Rows are windowed by the hour of their event time and grouped every ``flush_s`` seconds of
    processing time (a pane per firing); each firing's shard is one file with the
    deterministic name of :func:`part_name`, so a reader never sees half a file and a retried
    bundle replaces its file instead of adding one. ``fraudstream monitor`` and the demo read
    them with :func:`streaming.schema.read_scored`.

    Not ``fileio.WriteToFiles``: its file names carry the pane of the rows as written, not of
    the firing that groups them (Beam leaves pane indices out of its default naming), so two
    firings of one window can get the same names and the second would replace the first.
    """

    def __init__(
        self,
        features: list[str],
        directory: str | None = None,
        table: str | None = None,
        clock: Clock = time.time,
        flush_s: int = SCORED_FLUSH_S,
    ) -> None:
        super().__init__()
        if (directory is None) == (table is None):
            raise ValueError("WriteScored: give exactly one of directory and table")
        if flush_s < 1:
            raise ValueError(f"scored_flush_s must be at least 1 second, got {flush_s}")
        self.features, self.directory, self.table, self.clock = features, directory, table, clock
        self.flush_s = flush_s

    def expand(self, scored):
        # One step per row before the windows (stamp, row, shard key), and a bundle's rows of
        # one hour and shard go on as one element: each step, and the trigger of the grouping
        # most, costs the runner per element.
        if self.directory is not None:
            streaming = scored.pipeline.options.view_as(StandardOptions).streaming
            flush = trigger.AfterProcessingTime(self.flush_s)
            fire = trigger.AfterWatermark(early=flush, late=flush) if streaming else None
            return (
                scored
                | "ToRow" >> beam.ParDo(_ToParts(self.clock)).with_output_types(KV[int, Any])
                | "HourWindows"
                >> beam.WindowInto(
                    window.FixedWindows(SCORED_WINDOW_S),
                    trigger=fire,  # batch: each window once, at the end
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                    allowed_lateness=SCORED_ALLOWED_LATENESS_S,
                )
                | "GroupFiring" >> beam.GroupByKey()
                | "WriteParquet" >> beam.ParDo(_WriteParquetPart(self.directory, self.features))
            )
        return (
            scored
            | "ToRow" >> beam.ParDo(_ToRow(self.features, self.clock))
            | "ToBigQueryRow" >> beam.Map(_bigquery_row)
            | "WriteBigQuery"
            >> beam.io.WriteToBigQuery(
                self.table,
                schema=bigquery_schema(self.features),
                create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
                method=beam.io.WriteToBigQuery.Method.STORAGE_WRITE_API,
            )
        )


class _ToParts(beam.DoFn):
    """Lists of scored transactions -> ``(shard, ScoredPart)``: a bundle's transactions of one
    event hour and shard (spread over :data:`SCORED_SHARDS` by transaction id) as one part,
    emitted at the bundle's end, stamped with the earliest of their times."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.cpu = StageCpu("scored_rows")

    def start_bundle(self) -> None:
        self.parts = StampedGroups()  # by (input window, hour, shard), stamped in µs

    def process(self, batch: list[Any], window=beam.DoFn.WindowParam) -> None:
        started = self.cpu.start()
        for scored in batch:  # plain ints: a Beam Timestamp a row costs more than the rest
            micros = event_micros(scored)
            hour = micros // (SCORED_WINDOW_S * 1_000_000)
            key = (window, hour, scored.tx.transaction_id % SCORED_SHARDS)
            self.parts.add(key, micros, scored)
        self.cpu.stop(started)

    def finish_bundle(self) -> list[WindowedValue]:
        started = self.cpu.start()
        now = self.clock()
        out = [
            WindowedValue((shard, ScoredPart.of(scored, now)), Timestamp(micros=micros), (window,))
            for (window, _, shard), micros, scored in self.parts.take()
        ]
        self.cpu.stop(started)
        self.cpu.report()
        return out


class _ToRow(beam.DoFn):
    """Lists of scored transactions -> one :func:`scored_record` row each, at its
    transaction's event time."""

    def __init__(self, features: list[str], clock: Clock) -> None:
        self.features, self.clock = features, clock
        self.cpu = StageCpu("scored_rows")

    def process(self, batch: list[Any]) -> list[TimestampedValue]:
        started = self.cpu.start()
        out = [
            TimestampedValue(scored_record(s, self.features, self.clock), event_timestamp(s))
            for s in batch
        ]
        self.cpu.stop(started)
        return out

    def finish_bundle(self) -> None:
        self.cpu.report()


def bigquery_schema(features: list[str]) -> str:
    """The BigQuery schema string of :func:`scored_record` rows."""
    fixed = (
        "transaction_id:INTEGER,customer_id:INTEGER,terminal_id:INTEGER,event_time:TIMESTAMP,"
        "score:FLOAT,threshold:FLOAT,alert:BOOLEAN,model_version:STRING,status:STRING,"
        "latency_ms:FLOAT"
    )
    return ",".join([fixed, *(f"{name}:FLOAT" for name in features)])


def _bigquery_row(row: dict) -> dict:
    out = dict(row)
    out["event_time"] = row["event_time"].isoformat()
    for key, value in row.items():
        if isinstance(value, float) and value != value:
            out[key] = None  # BigQuery JSON rows have no NaN
    return out


class _WriteFeatures(beam.DoFn):
    """Buffer a bundle's feature rows; write each entity's newest values in one round trip."""

    def __init__(self, spec: FeatureSpec, open_writer: Callable[[], OnlineFeatureWriter]) -> None:
        self.spec, self.open_writer = spec, open_writer
        self.columns = {
            e.name: np.array([spec.names.index(n) for n in spec.entity_names(e)], np.intp)
            for e in stored_entities(spec)
        }
        self.written = Metrics.counter(NAMESPACE, "features_written")
        self.write_ms = Metrics.distribution(NAMESPACE, "feature_write_ms")
        self.cpu = StageCpu("write_features")

    def setup(self) -> None:
        self.writer = self.open_writer()
        if self.writer.rpc_counts is not None:
            TOTALS.watch(self.writer.rpc_counts)  # its RPCs in this process's totals line

    def start_bundle(self) -> None:
        self.rows: list[Any] = []

    def process(self, rows: list[Any]) -> None:
        self.rows += [row for row in rows if row.accepted]

    def finish_bundle(self) -> None:
        if self.rows:
            started = self.cpu.start()
            self._write()
            self.cpu.stop(started)
        self.cpu.report()

    def _write(self) -> None:
        rows, self.rows = self.rows, []
        X = np.stack([r.features for r in rows])
        micros = np.array([r.tx.time_ns for r in rows], np.int64) // 1_000  # as from_ns
        times = micros.astype("datetime64[us]").astype("datetime64[ns]")
        batches = [
            EntityBatch(
                entity=e,
                ids=np.array([getattr(r.tx, e.key.lower()) for r in rows], np.int64),
                event_times=times,
                values=X[:, self.columns[e.name]],
            )
            for e in stored_entities(self.spec)
        ]
        start = time.perf_counter()
        self.writer.write(batches)  # the newest event time wins, whatever the order here
        self.write_ms.update(int((time.perf_counter() - start) * 1000))
        self.written.inc(len(rows))


class WriteFeatures(beam.PTransform):
    """Lists of feature rows -> each accepted row's entities' fresh values in the online store,
    batched per bundle. ``open_writer`` builds the writer on the worker (e.g. a
    ``functools.partial`` of :meth:`~streaming.store.feast_store.FeastFeatureStore.open`):
    stores are not picklable."""

    def __init__(self, spec: FeatureSpec, open_writer: Callable[[], OnlineFeatureWriter]) -> None:
        super().__init__()
        self.spec, self.open_writer = spec, open_writer

    def expand(self, rows):
        return rows | "Write" >> beam.ParDo(_WriteFeatures(self.spec, self.open_writer))
