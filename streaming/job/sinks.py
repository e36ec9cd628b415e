"""Where the job's results go besides Pub/Sub: the scored-events sink and the online store.

Both write once per bundle (buffer in ``process``, flush in ``finish_bundle``), the usual Beam
pattern for batched writes: one parquet file, or one online-store round trip, per bundle.
A failed write raises, so the runner retries the bundle (Dataflow) or the job stops loudly
(DirectRunner); nothing is dropped silently.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from features.spec import FeatureSpec
from streaming.job.common import NAMESPACE, Clock
from streaming.schema import from_ns, scored_record
from streaming.store.base import EntityBatch, OnlineFeatureWriter
from streaming.store.names import stored_entities


class _WriteParquetParts(beam.DoFn):
    """Each bundle's rows -> ``<directory>/part-<uuid>.parquet`` (written to a temporary name,
    then renamed, so a reader never sees half a file)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files = Metrics.counter(NAMESPACE, "scored_files")

    def setup(self) -> None:
        Path(self.directory).mkdir(parents=True, exist_ok=True)

    def start_bundle(self) -> None:
        self.rows: list[dict] = []

    def process(self, row: dict):
        self.rows.append(row)

    def finish_bundle(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = Path(self.directory) / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(self.rows), tmp)
        tmp.rename(Path(self.directory) / name)
        self.files.inc()
        self.rows = []


class WriteScored(beam.PTransform):
    """Every scored transaction -> parquet files under ``directory`` (local runs) or a BigQuery
    table ``project:dataset.table`` (on GCP; not exercised by the tests here).

    ``fraudstream monitor`` and the demo's summary read the parquet files
    (``pandas.read_parquet(directory)``).
    """

    def __init__(
        self,
        features: list[str],
        directory: str | None = None,
        table: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        if (directory is None) == (table is None):
            raise ValueError("WriteScored: give exactly one of directory and table")
        self.features, self.directory, self.table, self.clock = features, directory, table, clock

    def expand(self, scored):
        rows = scored | "ToRow" >> beam.Map(scored_record, self.features, self.clock)
        if self.directory is not None:
            return rows | "WriteParquet" >> beam.ParDo(_WriteParquetParts(self.directory))
        return (
            rows
            | "ToBigQueryRow" >> beam.Map(_bigquery_row)
            | "WriteBigQuery"
            >> beam.io.WriteToBigQuery(
                self.table,
                schema=bigquery_schema(self.features),
                create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
                method=beam.io.WriteToBigQuery.Method.STREAMING_INSERTS,
            )
        )


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

    def setup(self) -> None:
        self.writer = self.open_writer()

    def start_bundle(self) -> None:
        self.rows: list[Any] = []

    def process(self, row: Any):
        if row.accepted:
            self.rows.append(row)

    def finish_bundle(self) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        X = np.stack([r.features for r in rows])
        times = np.array([from_ns(r.tx.time_ns) for r in rows], "datetime64[ns]")
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
    """Accepted feature rows -> each entity's fresh values in the online store, batched per
    bundle. ``open_writer`` builds the writer on the worker (e.g. a ``functools.partial`` of
    :meth:`~streaming.store.feast_store.FeastFeatureStore.open`): stores are not picklable."""

    def __init__(self, spec: FeatureSpec, open_writer: Callable[[], OnlineFeatureWriter]) -> None:
        super().__init__()
        self.spec, self.open_writer = spec, open_writer

    def expand(self, rows):
        return rows | "Write" >> beam.ParDo(_WriteFeatures(self.spec, self.open_writer))
