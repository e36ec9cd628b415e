"""A Feast online store on Bigtable: one row per entity, one packed cell per feature view.

Register it in ``feature_store.yaml`` by class path::

    online_store:
      type: streaming.store.bigtable.online_store.BigtableOnlineStore
      instance: my-instance

Layout (one table per Feast project, see :func:`table_name`):

* row key: :func:`row_key` of the entity key (``CUSTOMER_ID=42``), so every view of an entity
  lives in one row and a bundle's entities of all views are read with one ``ReadRows``;
* column family ``f``, qualifier = feature view name, value = a 13-byte header (format version,
  CRC32 of the view's feature names, event time in µs) then the view's features as
  little-endian float64, in schema order. Only Float64 features can be stored.
* cell timestamp = event time (ms; Bigtable's granularity): the newest event wins whatever the
  arrival order, and a read takes the latest cell only (``CellsColumnLimitFilter(1)``).

Reads honour the view's ``ttl`` (an older value reads as missing); a value written under another
schema (its CRC differs) reads as missing too. Reads and writes retry UNAVAILABLE and
DEADLINE_EXCEEDED with exponential backoff within ``operation_timeout_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from feast import Entity, FeatureView
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.types import Float64
from feast.utils import _get_table_entity_values
from google.api_core import exceptions as gexc
from pydantic import PositiveFloat, PositiveInt, StrictStr, field_validator

from streaming.store.bigtable import feast_wire as wire

logger = logging.getLogger(__name__)

FAMILY = "f"
_HEADER = struct.Struct("<BIq")  # format version, CRC32 of the feature names, event time (µs)
_FORMAT = 1
_RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
_EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
_TABLE_MAX = 50

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ReadResult = list[tuple[datetime | None, dict[str, ValueProto] | None]]


class BigtableOnlineStoreConfig(FeastConfigBaseModel):
    """``online_store:`` section of feature_store.yaml for :class:`BigtableOnlineStore`."""

    type: Literal["streaming.store.bigtable.online_store.BigtableOnlineStore"] = (
        "streaming.store.bigtable.online_store.BigtableOnlineStore"
    )
    project_id: StrictStr | None = None
    """GCP project; None: the client's default (``demo-project`` style on the emulator)."""
    instance: StrictStr
    """Bigtable instance id."""
    emulator_host: StrictStr | None = None
    """``host:port`` of a Bigtable emulator; must agree with $BIGTABLE_EMULATOR_HOST if set."""
    operation_timeout_s: PositiveFloat = 60.0
    """Budget of one read or write, retries included."""
    attempt_timeout_s: PositiveFloat = 10.0
    """Budget of one RPC attempt."""
    rows_per_write: PositiveInt = 10_000
    """Rows per MutateRows request (each row is one cell per view written)."""
    enforce_ttl: bool = True
    """Values older than their view's ttl read as missing (set false to serve a replay)."""
    recreate_missing_table: bool = False
    """Emulator only: a write recreates a vanished table, a read of one returns missing."""

    @field_validator("project_id", "instance", "emulator_host")
    @classmethod
    def _expanded(cls, value: str | None, info: Any) -> str | None:
        if value is not None and ("${" in value or not value.strip()):
            raise ValueError(
                f"online_store.{info.field_name} is {value!r}: set the environment variable "
                "it names (feature_store.yaml expands ${VAR}), see feature_repo/README.md"
            )
        return value


def row_keys(join_keys: Sequence[str], columns: Sequence[Sequence[Any]]) -> list[bytes]:
    """Bigtable row keys of entities given by column: ``b"CUSTOMER_ID=42"``; a composite key
    joins its parts sorted by name with ``|``.

    The one place ids become keys: swap it to pseudonymise (a keyed hash) or salt hot ranges.
    """
    if len(join_keys) == 1:
        prefix = f"{join_keys[0]}="
        return [f"{prefix}{value}".encode() for value in columns[0]]
    order = sorted(range(len(join_keys)), key=join_keys.__getitem__)
    return [
        "|".join(f"{join_keys[i]}={row[i]}" for i in order).encode()
        for row in zip(*columns, strict=True)
    ]


def row_key(join_keys: Sequence[str], values: Sequence[Any]) -> bytes:
    """The row key of one entity (see :func:`row_keys`)."""
    return row_keys(join_keys, [[v] for v in values])[0]


def table_name(project: str) -> str:
    """The table of a Feast project: ``<project>-packed``, hashed to fit Bigtable's 50 chars."""
    name = f"{project}-packed"
    if len(name) <= _TABLE_MAX:
        return name
    digest = hashlib.sha256(project.encode()).hexdigest()[:12]
    return f"{project[: _TABLE_MAX - len(digest) - 9]}-{digest}-packed"


def schema_tag(feature_names: Sequence[str]) -> int:
    """CRC32 of a view's feature names in order: a cell packed under another schema is stale."""
    return zlib.crc32("\x1f".join(feature_names).encode())


def _cell_dtype(width: int) -> np.dtype:
    """The packed cell as a numpy record (no padding: the header is 13 bytes)."""
    return np.dtype([("version", "u1"), ("tag", "<u4"), ("t", "<i8"), ("v", "<f8", (width,))])


def pack(tag: int, event_us: int, values: np.ndarray) -> bytes:
    """One cell value: header + float64 little-endian values."""
    return _HEADER.pack(_FORMAT, tag, event_us) + np.ascontiguousarray(values, "<f8").tobytes()


def unpack(cell: bytes) -> tuple[int, int, np.ndarray]:
    """``(schema tag, event time µs, values)`` of a cell written by :func:`pack`."""
    version, tag, event_us = _HEADER.unpack_from(cell)
    if version != _FORMAT:
        raise ValueError(f"unknown packed-cell format {version} (expected {_FORMAT})")
    return tag, event_us, np.frombuffer(cell, "<f8", offset=_HEADER.size)


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC (Feast's convention)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def feature_names(view: FeatureView) -> list[str]:
    """A view's features in schema order; ValueError names a feature that is not Float64."""
    for feature in view.features:
        if feature.dtype != Float64:
            raise ValueError(
                f"feature view {view.name!r}: feature {feature.name!r} is {feature.dtype}; "
                f"{BigtableOnlineStore.__name__} stores Float64 features only"
            )
    return [f.name for f in view.features]


class BigtableOnlineStore(OnlineStore):
    """Feast online store: packed float64 rows on Bigtable, every view of a read in one RPC."""

    def __init__(self) -> None:
        self._data_client: Any = None
        self._admin_client: Any = None
        self._tables: dict[str, Any] = {}
        self._layouts: dict[tuple[str, tuple[str, ...]], tuple[int, list[str]]] = {}
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """Processing time for ttl checks (injectable)."""
        self.read_rpcs = 0
        """ReadRows calls made (a test and benchmark probe)."""
        self.write_rpcs = 0
        """MutateRows calls made."""

    # ------------------------------------------------------------------ Feast interface

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Write rows of one view; per entity only its newest row (by event time) is kept."""
        names = feature_names(table)
        keys, times, values = [], np.empty(len(data), np.int64), np.empty((len(data), len(names)))
        for i, (entity_key, features, event_ts, _created) in enumerate(data):
            keys.append(_proto_row_key(entity_key))
            times[i] = to_micros(event_ts)
            values[i] = [_as_float(features.get(n), table.name, n) for n in names]
        self.write_arrays(config, [(table, keys, times, values)])
        if progress:
            progress(len(data))

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> ReadResult:
        """Latest live values of ``table`` for each key, ``(None, None)`` where there is none."""
        keys = [_proto_row_key(k) for k in entity_keys]
        requested = requested_features or feature_names(table)
        cells = self._fetch(config, [table], keys)
        present, event_us, values = self._decode(config, table, requested, keys, cells)
        out: ReadResult = []
        for ok, t, row in zip(present.tolist(), event_us.tolist(), values.tolist(), strict=True):
            if not ok:
                out.append((None, None))
                continue
            features = {n: ValueProto(double_val=v) for n, v in zip(requested, row, strict=True)}
            out.append((_EPOCH + timedelta(microseconds=t), features))
        return out

    def _read_features_per_fv(
        self,
        config: RepoConfig,
        grouped_refs: list,
        join_key_values: dict,
        entity_name_to_join_key_map: dict,
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        """Feast's batching hook: every view of a ``get_online_features`` in one ReadRows.

        Overrides the base class's per-view loop (documented there as the place to batch;
        Feast is pinned below 0.68, where its signature is this one). The response vectors
        are encoded straight from the packed arrays
        (:mod:`streaming.store.bigtable.feast_wire`), equal to what Feast's
        ``_populate_response_from_feature_data`` builds value by value.
        """
        plans = []
        for view, requested in grouped_refs:
            keys = _view_row_keys(view, join_key_values, entity_name_to_join_key_map)
            if keys is None or include_feature_view_version_metadata:
                return super()._read_features_per_fv(  # Feast's own path raises its errors
                    config,
                    grouped_refs,
                    join_key_values,
                    entity_name_to_join_key_map,
                    online_features_response,
                    full_feature_names,
                    include_feature_view_version_metadata,
                )
            plans.append((view, requested, keys))
        cells = self._fetch(
            config, [view for view, _, _ in plans], [k for p in plans for k in p[2]]
        )
        for view, requested, keys in plans:
            uniques = list(dict.fromkeys(keys))
            where = {key: i for i, key in enumerate(uniques)}
            inverse = np.fromiter((where[k] for k in keys), np.intp, len(keys))
            present, event_us, values = self._decode(config, view, requested, uniques, cells)
            prefix = f"{view.projection.name_to_use()}__" if full_feature_names else ""
            online_features_response.metadata.feature_names.val.extend(
                prefix + name for name in requested
            )
            online_features_response.MergeFromString(
                wire.feature_vectors(values[inverse], present[inverse], event_us[inverse])
            )

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Check every kept view is storable and create the project's table if missing.

        Cells of deleted views stay in their rows (Bigtable cannot drop a column without a
        scan); they are never read, and a view re-created with another schema ignores them.
        """
        for view in tables_to_keep:
            feature_names(view)
        if tables_to_keep:
            self._ensure_table(config)

    def teardown(
        self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]
    ) -> None:
        """Delete the project's table (all views live in it)."""
        table = self._admin(config).table(table_name(config.project))
        try:
            _retry(table.delete, config.online_store.operation_timeout_s)
        except gexc.NotFound:
            logger.info("table %s was already gone", table.table_id)
        self._tables.pop(config.project, None)

    # ------------------------------------------------------------------ batched paths

    def write_arrays(
        self,
        config: RepoConfig,
        batches: Sequence[tuple[FeatureView, Sequence[bytes], np.ndarray, np.ndarray]],
    ) -> None:
        """Write ``(view, row keys, event times µs, values (n, features))`` batches together.

        All views go in the same MutateRows requests (one per ``rows_per_write`` rows). A
        key repeated in a batch keeps its newest row (the last one among equal times).
        """
        from google.cloud.bigtable.data import RowMutationEntry, SetCell

        cells: dict[bytes, dict[bytes, tuple[int, bytes]]] = {}
        for view, keys, times, values in batches:
            tag, names = self._layout(view)
            if values.shape != (len(keys), len(names)) or len(times) != len(keys):
                raise ValueError(
                    f"feature view {view.name!r}: got {len(keys)} keys, {len(times)} times and "
                    f"values of shape {values.shape}; expected ({len(keys)}, {len(names)})"
                )
            qualifier = view.name.encode()
            for key, t, row in zip(keys, times.tolist(), values, strict=True):
                row_cells = cells.setdefault(key, {})
                previous = row_cells.get(qualifier)
                if previous is None or previous[0] <= t:
                    row_cells[qualifier] = (t, pack(tag, t, row))
        entries = [
            RowMutationEntry(
                key,
                [
                    SetCell(FAMILY, q, value, timestamp_micros=t - t % 1000)
                    for q, (t, value) in c.items()
                ],
            )
            for key, c in cells.items()
        ]
        step = config.online_store.rows_per_write
        for start in range(0, len(entries), step):
            self._mutate(config, entries[start : start + step])

    # ------------------------------------------------------------------ internals

    def _fetch(
        self, config: RepoConfig, views: Sequence[FeatureView], keys: Sequence[bytes]
    ) -> dict[tuple[bytes, bytes], bytes]:
        """The latest cell of each of ``views`` in each row of ``keys``: one ReadRows."""
        from google.cloud.bigtable.data import ReadRowsQuery
        from google.cloud.bigtable.data.row_filters import (
            CellsColumnLimitFilter,
            ColumnQualifierRegexFilter,
            RowFilterChain,
        )

        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        names = sorted({view.name for view in views})
        pattern = "^(" + "|".join(re.escape(name) for name in names) + ")$"
        row_filter = RowFilterChain(
            [ColumnQualifierRegexFilter(pattern.encode()), CellsColumnLimitFilter(1)]
        )
        rows = self._read(config, ReadRowsQuery(row_keys=unique, row_filter=row_filter))
        return {(row.row_key, cell.qualifier): cell.value for row in rows for cell in row.cells}

    def _decode(
        self,
        config: RepoConfig,
        view: FeatureView,
        requested: Sequence[str],
        keys: Sequence[bytes],
        cells: dict[tuple[bytes, bytes], bytes],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(present (n,), event µs (n,), values (n, requested))`` of ``view`` for ``keys``.

        Not present: no cell, a cell of another schema, or one older than the view's ttl.
        """
        tag, names = self._layout(view)
        ttl = view.ttl if view.ttl and config.online_store.enforce_ttl else None
        oldest = to_micros(self.clock() - ttl) if ttl else np.iinfo(np.int64).min
        qualifier, size = view.name.encode(), _HEADER.size + 8 * len(names)
        n = len(keys)
        present, event_us = np.zeros(n, bool), np.zeros(n, np.int64)
        values = np.full((n, len(names)), np.nan)
        hits = [(i, cell) for i, key in enumerate(keys) if (cell := cells.get((key, qualifier)))]
        sized = [(i, cell) for i, cell in hits if len(cell) == size]
        if len(sized) < len(hits):
            logger.warning("%s: %d cells of another size read as missing", view.name,
                           len(hits) - len(sized))  # fmt: skip
        if sized:
            rows = np.array([i for i, _ in sized])
            packed = np.frombuffer(b"".join(c for _, c in sized), _cell_dtype(len(names)))
            fresh = packed["t"] >= oldest
            same = (packed["version"] == _FORMAT) & (packed["tag"] == tag)
            if not same.all():
                logger.warning("%s: %d cells of another schema read as missing", view.name,
                               int((~same).sum()))  # fmt: skip
            ok = fresh & same
            present[rows[ok]], event_us[rows[ok]] = True, packed["t"][ok]
            values[rows[ok]] = packed["v"][ok]
        return present, event_us, values[:, [names.index(n) for n in requested]]

    def _layout(self, view: FeatureView) -> tuple[int, list[str]]:
        """``(schema tag, feature names)`` of a view, cached."""
        key = (view.name, tuple(f.name for f in view.features))
        layout = self._layouts.get(key)
        if layout is None:
            names = feature_names(view)
            layout = self._layouts[key] = (schema_tag(names), names)
        return layout

    def _read(self, config: RepoConfig, query: Any) -> list[Any]:
        settings = config.online_store
        self.read_rpcs += 1
        try:
            return self._table(config).read_rows(
                query,
                operation_timeout=settings.operation_timeout_s,
                attempt_timeout=settings.attempt_timeout_s,
                retryable_errors=_RETRYABLE,
            )
        except gexc.NotFound:
            if not settings.recreate_missing_table:
                raise _missing_table(config) from None
            return []

    def _mutate(self, config: RepoConfig, entries: list[Any]) -> None:
        from google.cloud.bigtable.data.exceptions import MutationsExceptionGroup

        settings = config.online_store
        for attempt in (1, 2):
            self.write_rpcs += 1
            try:
                self._table(config).bulk_mutate_rows(
                    entries,
                    operation_timeout=settings.operation_timeout_s,
                    attempt_timeout=settings.attempt_timeout_s,
                    retryable_errors=_RETRYABLE,
                )
                return
            except MutationsExceptionGroup as group:
                causes = [_final_cause(e) for e in group.exceptions]
                table_gone = all(isinstance(c, gexc.NotFound) for c in causes)
                if not table_gone:
                    raise
                if attempt == 2 or not settings.recreate_missing_table:
                    raise _missing_table(config) from group
                logger.warning("table %s vanished: recreating it", table_name(config.project))
                self._ensure_table(config)

    def _ensure_table(self, config: RepoConfig) -> None:
        from google.cloud.bigtable import column_family

        table = self._admin(config).table(table_name(config.project))
        budget = config.online_store.operation_timeout_s
        if not _retry(table.exists, budget):
            logger.info("creating Bigtable table %s", table.table_id)
            try:
                gc_rule = column_family.MaxVersionsGCRule(1)
                _retry(lambda: table.create(column_families={FAMILY: gc_rule}), budget)
            except gexc.AlreadyExists:
                pass  # created concurrently
        elif FAMILY not in _retry(table.list_column_families, budget):
            _retry(table.column_family(FAMILY, column_family.MaxVersionsGCRule(1)).create, budget)

    def _table(self, config: RepoConfig) -> Any:
        table = self._tables.get(config.project)
        if table is None:
            settings = config.online_store
            if self._data_client is None:
                from google.cloud.bigtable.data import BigtableDataClient

                with _emulator(settings):
                    self._data_client = BigtableDataClient(project=settings.project_id)
            table = self._data_client.get_table(settings.instance, table_name(config.project))
            self._tables[config.project] = table
        return table

    def _admin(self, config: RepoConfig) -> Any:
        if self._admin_client is None:
            from google.cloud import bigtable

            with _emulator(config.online_store):
                self._admin_client = bigtable.Client(
                    project=config.online_store.project_id, admin=True
                )
        return self._admin_client.instance(config.online_store.instance)


def _retry(call: Callable[[], Any], budget_s: float) -> Any:
    """``call()``, retried on UNAVAILABLE / DEADLINE_EXCEEDED with backoff for ``budget_s``."""
    deadline, delay = time.monotonic() + budget_s, 0.1
    while True:
        try:
            return call()
        except _RETRYABLE:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextlib.contextmanager
def _emulator(settings: BigtableOnlineStoreConfig) -> Iterator[None]:
    """Point a client built inside at ``emulator_host`` (the library reads the environment
    only) and silence its "Connecting to Bigtable emulator" warning, expected here."""
    host = settings.emulator_host
    current = os.environ.get(_EMULATOR_ENV)
    if host is not None and current is None:
        os.environ[_EMULATOR_ENV] = host  # kept: later clients of this process agree
    elif host is not None and current != host:
        raise ValueError(
            f"online_store.emulator_host is {host!r} but ${_EMULATOR_ENV} is {current!r}; "
            "they must agree"
        )
    with warnings.catch_warnings():
        if os.environ.get(_EMULATOR_ENV):
            warnings.filterwarnings("ignore", "Connecting to Bigtable emulator", RuntimeWarning)
        yield


def _final_cause(failed: BaseException) -> BaseException | None:
    """What finally failed a mutation entry: its cause, or the last of its retried attempts."""
    from google.cloud.bigtable.data.exceptions import RetryExceptionGroup

    cause = failed.__cause__
    while isinstance(cause, RetryExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[-1]
    return cause


def _missing_table(config: RepoConfig) -> LookupError:
    return LookupError(
        f"Bigtable table {table_name(config.project)!r} not found in instance "
        f"{config.online_store.instance!r}: run `feast apply` for project {config.project!r}"
    )


def _native(value: ValueProto) -> Any:
    kind = value.WhichOneof("val")
    return getattr(value, kind) if kind else None


def _proto_row_key(entity_key: EntityKeyProto) -> bytes:
    return row_key(list(entity_key.join_keys), [_native(v) for v in entity_key.entity_values])


def _view_row_keys(
    view: FeatureView, join_key_values: dict[str, list[ValueProto]], entity_to_join_key: dict
) -> list[bytes] | None:
    """Row keys of a request's rows for ``view``; None if a join key is missing."""
    columns = _get_table_entity_values(view, entity_to_join_key, join_key_values)
    expected = {entity_to_join_key[e] for e in view.entities}
    if set(columns) != expected or not all(columns.values()):
        return None
    names = list(columns)
    return row_keys(names, [[_native(v) for v in columns[k]] for k in names])


def _as_float(value: ValueProto | None, view: str, name: str) -> float:
    kind = value.WhichOneof("val") if value is not None else None
    if kind in (None, "null_val"):
        return float("nan")
    if kind in ("double_val", "float_val", "int64_val", "int32_val", "bool_val"):
        return float(getattr(value, kind))
    raise ValueError(f"feature view {view!r}: feature {name!r} has a {kind} value, not a number")
