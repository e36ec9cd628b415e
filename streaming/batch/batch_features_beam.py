"""The daily batch job as a Beam batch pipeline (Dataflow): the rows of
:func:`features.batch.snapshots`, computed per card and per entity key on workers.

::

    'ReadTransactions'   parquet files (paths, globs or gs:// URIs) -> one Event per row
    'NextFraud'          per card: the time of its next fraud (only for a CompromiseScore)
    '<Entity>Snapshots'  per key of each entity with lookups: features.batch.entity_rows
    'Write<Entity>'      per view: parquet under --output_dir, or BigQuery (--bq_dataset)

Parquet output: ``<output_dir>/<batch view>/as_of=<first>[_<last>].parquet`` (with
``num_shards`` > 1: ``...-SSSSS-of-NNNNN.parquet``), the columns the batch view's source has
(``event_timestamp`` UTC): for ``--days 1`` the same file the local command writes, so
``output_dir`` may be the Feast repository's ``data/offline``; running the same days again
replaces their file(s) when ``num_shards`` is the same. BigQuery output appends to
``<bq_dataset>.<batch view>`` (created if missing): it needs a GCP project and is not exercised
by the tests here.

The input must be a validated history (``features.table.validate``: each row group is checked
again, and a bad one fails the job with the reason): a snapshot computed without some rows would
be wrong, so there is no dead-letter output. Workers import this module and ``features/``
(install the project in the worker image, ``--sdk_container_image``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquet
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from features import presets
from features.batch import (
    EVENT_TIMESTAMP,
    NO_FRAUD,
    entity_rows,
    lookup_entities,
    next_fraud,
)
from features.spec import (
    AMOUNT,
    CUSTOMER,
    FRAUD,
    AmountProfile,
    CompromiseScore,
    Entity,
    FeatureSpec,
)
from features.table import event_times_ns, validate
from streaming.batch.batch_features import as_of_days, require_lookups
from streaming.job.options import is_local
from streaming.pseudonymise import ENV_KEY_SECRET, Pseudonymiser
from streaming.store.names import batch_view_name

log = logging.getLogger(__name__)


class Event(NamedTuple):
    """One transaction as the batch job needs it."""

    txid: int
    time: int  # ns since the epoch, naive
    amount: float
    fraud: bool
    keys: tuple[int, ...]  # the spec's entity keys, in spec order
    next_fraud: int = NO_FRAUD  # the card's first fraud at or after it (NextFraud)


@dataclass(frozen=True)
class BatchFeaturesJob:
    """What the job computes and where it writes, validated on construction (a bad value
    raises ValueError naming the option)."""

    inputs: tuple[str, ...]
    as_of: str
    preset: str = "enriched"
    days: int = 1
    output_dir: str | None = None
    bq_dataset: str | None = None
    num_shards: int = 1
    id_key_secret: str | None = None
    """Secret Manager version of the job's id key; without it, ``$FRAUDSTREAM_ID_KEY`` (a local
    run) or, with neither, clear ids."""
    first: int = field(init=False)
    last: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("--input: give at least one transactions parquet (path or gs://)")
        require_lookups(presets.get(self.preset))
        if not self.as_of:
            raise ValueError("--as_of: give the last as-of day (YYYY-MM-DD)")
        if (self.output_dir is None) == (self.bq_dataset is None):
            raise ValueError("give one of --output_dir (parquet) and --bq_dataset (BigQuery)")
        if self.num_shards < 1:
            raise ValueError(f"--num_shards must be at least 1, got {self.num_shards}")
        first, last = as_of_days(0, self.as_of, self.days)
        object.__setattr__(self, "first", first)
        object.__setattr__(self, "last", last)

    @property
    def spec(self) -> FeatureSpec:
        return presets.get(self.preset)

    def file_prefix(self, entity: Entity) -> str:
        """``<output_dir>/<view>/as_of=<first>[_<last>]``: the view's output, before the shard
        name and ``.parquet``."""
        days = f"{pd.Timestamp(self.first):%Y-%m-%d}"
        if self.last != self.first:
            days += f"_{pd.Timestamp(self.last):%Y-%m-%d}"
        view = batch_view_name(self.spec, entity)
        return f"{str(self.output_dir).rstrip('/')}/{view}/as_of={days}"


# --------------------------------------------------------------------------- the stages


class ReadTransactions(beam.PTransform):
    """Parquet files (paths, globs, ``gs://``) -> :class:`Event` per transaction, entity keys
    pseudonymised with the job's id key when one is configured (``id_key_secret``, else
    ``$FRAUDSTREAM_ID_KEY``), so the snapshots are keyed as the streaming job reads them."""

    def __init__(
        self, inputs: Sequence[str], spec: FeatureSpec, id_key_secret: str | None = None
    ) -> None:
        super().__init__()
        self.inputs, self.spec, self.id_key_secret = list(inputs), spec, id_key_secret

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Event]:
        return (
            pbegin
            | "Inputs" >> beam.Create(self.inputs)
            | "ReadParquet" >> ReadAllFromParquetBatched(columns=self.spec.input_columns)
            | "ToEvents" >> beam.ParDo(_ToEvents(self.spec, self.id_key_secret))
        )


class _ToEvents(beam.DoFn):
    """:func:`to_events` with the id key read on the worker (Secret Manager or environment)."""

    def __init__(self, spec: FeatureSpec, id_key_secret: str | None) -> None:
        self.spec, self.id_key_secret = spec, id_key_secret

    def setup(self) -> None:
        self.ids = id_key(self.id_key_secret)

    def process(self, table: pa.Table) -> Iterator[Event]:
        yield from to_events(table, self.spec, self.ids)


def id_key(secret: str | None) -> Pseudonymiser | None:
    """The job's id key: the Secret Manager version ``secret`` (required to be readable), else
    ``$FRAUDSTREAM_ID_KEY`` when set, else None (clear ids)."""
    if secret:
        return Pseudonymiser.from_env(required=True, environ={ENV_KEY_SECRET: secret})
    return Pseudonymiser.from_env()


def to_events(
    table: pa.Table, spec: FeatureSpec, ids: Pseudonymiser | None = None
) -> Iterator[Event]:
    """The events of one parquet row group (validated: InputError names the problem), keys
    pseudonymised with ``ids`` when given."""
    frame = validate(table.to_pandas(), spec, source="a parquet row group", sort=False)
    if ids is not None:
        for entity in spec.entities:
            frame[entity.key] = ids.pseudonymise_array(entity.name, frame[entity.key].to_numpy())
    columns = (
        frame["TRANSACTION_ID"].to_numpy(np.int64).tolist(),
        event_times_ns(frame).tolist(),
        frame[AMOUNT.name].to_numpy(np.float64).tolist(),
        (frame[FRAUD.name].to_numpy(np.float64) > 0.5).tolist(),
        zip(*(frame[e.key].to_numpy(np.int64).tolist() for e in spec.entities), strict=True),
    )
    for txid, time, amount, fraud, keys in zip(*columns, strict=True):
        yield Event(txid, time, amount, fraud, keys)


class NextFraud(beam.PTransform):
    """Each event with :attr:`Event.next_fraud` set, computed over its card's whole history."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.card = spec.entities.index(CUSTOMER)

    def expand(self, events: beam.PCollection[Event]) -> beam.PCollection[Event]:
        return (
            events
            | "KeyByCard" >> beam.Map(lambda e, i: (e.keys[i], e), self.card)
            | "GroupByCard" >> beam.GroupByKey()
            | "WithNextFraud" >> beam.FlatMapTuple(with_next_fraud)
        )


def with_next_fraud(card: int, events: Iterable[Event]) -> Iterator[Event]:
    """One card's events with the time of its first fraud at or after each."""
    events = sorted(events, key=lambda e: (e.time, e.txid))
    times = np.array([e.time for e in events], np.int64)
    fraud = np.array([e.fraud for e in events], bool)
    upcoming = next_fraud(np.full(len(events), card, np.int64), times, fraud)
    for event, nxt in zip(events, upcoming.tolist(), strict=True):
        yield event._replace(next_fraud=nxt)


class EntitySnapshots(beam.PTransform):
    """Per key of ``entity``: its snapshot rows for the as-of midnights ``[first, last]``, as
    dicts ``{<key>, event_timestamp (ns), <stored values>}``, the rows
    :func:`features.batch.snapshots` gives."""

    def __init__(self, spec: FeatureSpec, entity: Entity, first: int, last: int) -> None:
        super().__init__()
        self.spec, self.entity, self.first, self.last = spec, entity, first, last

    def expand(self, events: beam.PCollection[Event]) -> beam.PCollection[dict]:
        name = self.entity.name.capitalize()
        index = self.spec.entities.index(self.entity)
        return (
            events
            | f"KeyBy{name}" >> beam.Map(lambda e, i: (e.keys[i], e), index)
            | f"GroupBy{name}" >> beam.GroupByKey()
            | "Rows" >> beam.FlatMap(key_rows, self.spec, self.entity, self.first, self.last)
        )


def key_rows(
    grouped: tuple[int, Iterable[Event]], spec: FeatureSpec, entity: Entity, first: int, last: int
) -> Iterator[dict[str, Any]]:
    """The snapshot rows of one key and its events: each lookup's
    :func:`features.batch.entity_rows`, joined on the as-of day; a day one lookup has no row for
    gets its defaults."""
    key, unordered = grouped
    events = sorted(unordered, key=lambda e: (e.time, e.txid))
    keys = np.full(len(events), key, np.int64)
    times = np.array([e.time for e in events], np.int64)
    parts = []
    for lookup in spec.entity_lookups(entity):
        if isinstance(lookup, AmountProfile):
            columns = [np.array([e.amount for e in events], np.float64)]
        else:
            card = spec.entities.index(CUSTOMER)
            columns = [
                np.array([e.keys[card] for e in events], np.int64),
                np.array([e.next_fraud for e in events], np.int64),
            ]
        _, at, values = entity_rows(lookup, keys, times, columns, spec.label_delay, first, last)
        parts.append((lookup, at, values))
    days = np.unique(np.concatenate([at for _, at, _ in parts]))
    table = np.empty((len(days), len(spec.lookup_stored_names(entity))))
    start = 0
    for lookup, at, values in parts:
        width = len(lookup.defaults)
        table[:, start : start + width] = lookup.defaults
        table[np.searchsorted(days, at), start : start + width] = values
        start += width
    names = spec.lookup_stored_names(entity)
    for day, row in zip(days.tolist(), table.tolist(), strict=True):
        yield {entity.key: key, EVENT_TIMESTAMP: day, **dict(zip(names, row, strict=True))}


def parquet_schema(spec: FeatureSpec, entity: Entity) -> pa.Schema:
    """The batch view source's columns: key, ``event_timestamp`` (UTC), stored values."""
    return pa.schema(
        [
            (entity.key, pa.int64()),
            (EVENT_TIMESTAMP, pa.timestamp("ns", tz="UTC")),
            *((n, pa.float64()) for n in spec.lookup_stored_names(entity)),
        ]
    )


class WriteSnapshots(beam.PTransform):
    """One view's rows to parquet (``job.file_prefix``), or appended to BigQuery table
    ``<bq_dataset>.<view>`` of the pipeline's ``--project`` (created if missing)."""

    def __init__(self, job: BatchFeaturesJob, entity: Entity) -> None:
        super().__init__()
        self.job, self.entity = job, entity

    def expand(self, rows: beam.PCollection[dict]) -> Any:
        spec, entity = self.job.spec, self.entity
        if self.job.bq_dataset is None:
            return rows | "WriteParquet" >> WriteToParquet(
                self.job.file_prefix(entity),
                parquet_schema(spec, entity),
                file_name_suffix=".parquet",
                num_shards=self.job.num_shards,
                shard_name_template="" if self.job.num_shards == 1 else None,
            )
        names = spec.lookup_stored_names(entity)
        columns = [f"{entity.key}:INTEGER", f"{EVENT_TIMESTAMP}:TIMESTAMP"]
        return (
            rows
            | "ToTableRows" >> beam.Map(table_row)
            | "AppendBigQuery"
            >> beam.io.WriteToBigQuery(
                f"{self.job.bq_dataset}.{batch_view_name(spec, entity)}",
                schema=",".join([*columns, *(f"{n}:FLOAT" for n in names)]),
                create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
            )
        )


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A snapshot row as BigQuery takes it: NaN as NULL, the as-of time as RFC 3339 UTC."""
    out = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
    out[EVENT_TIMESTAMP] = pd.Timestamp(row[EVENT_TIMESTAMP], tz="UTC").isoformat()
    return out


# --------------------------------------------------------------------------- wiring


def build(p: beam.Pipeline, job: BatchFeaturesJob) -> None:
    """The job's graph on ``p``: read, next fraud (when a lookup needs it), per entity
    snapshots and a write."""
    spec = job.spec
    events = p | "ReadTransactions" >> ReadTransactions(job.inputs, spec, job.id_key_secret)
    if any(isinstance(k, CompromiseScore) for k in spec.lookups):
        events = events | "NextFraud" >> NextFraud(spec)
    for entity in lookup_entities(spec):
        name = entity.name.capitalize()
        rows = events | f"{name}Snapshots" >> EntitySnapshots(spec, entity, job.first, job.last)
        rows | f"Write{name}" >> WriteSnapshots(job, entity)


def pipeline_options(argv: Sequence[str] = ()) -> PipelineOptions:
    """Beam's options from ``argv``: batch; without ``--runner``, the BundleBasedDirectRunner."""
    options = PipelineOptions(list(argv))
    standard = options.view_as(StandardOptions)
    standard.streaming = False
    if standard.runner is None:
        standard.runner = "BundleBasedDirectRunner"
    return options


def run(job: BatchFeaturesJob, pipeline_args: Sequence[str] = (), wait: bool = True) -> Any:
    """Build and run the job with Beam's ``pipeline_args`` (``--runner DataflowRunner
    --project ... --region ...``); waits for it to finish with ``wait``. Returns the result."""
    options = pipeline_options(pipeline_args)
    local = is_local(options.view_as(StandardOptions).runner)
    if local:
        ids = id_key(job.id_key_secret)  # fail now if the secret cannot be read
        log.info("entity keys: %s", ids.fingerprint if ids else "clear (no id key configured)")
    elif not job.id_key_secret:
        log.warning("no --id_key_secret: the workers keep clear ids (the job's are pseudonyms?)")
    p = beam.Pipeline(options=options)
    build(p, job)
    where = job.output_dir or f"BigQuery dataset {job.bq_dataset}"
    log.info("batch features of %s for %d day(s) to %s", job.preset, job.days, where)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result
