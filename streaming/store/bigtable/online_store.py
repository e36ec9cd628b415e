"""A Feast online store on Bigtable: one row per entity, one packed cell per feature view.

Register it in ``feature_store.yaml`` by class path::

    online_store:
      type: streaming.store.bigtable.online_store.BigtableOnlineStore
      instance: my-instance

Contract (the Feast ``OnlineStore`` interface plus :meth:`BigtableOnlineStore.write_arrays`):

* one table per Feast project; rows, cells and their encoding are
  :mod:`streaming.store.bigtable.codec`'s: every view of an entity lives in one row, so a
  bundle's entities of all views are read with one ``ReadRows`` and written with one
  ``MutateRows`` per ``rows_per_write`` rows;
* cell timestamp = event time (ms; Bigtable's granularity): the newest event wins whatever the
  arrival order, and a read takes the latest cell only (``CellsColumnLimitFilter(1)``);
* reads honour the view's ``ttl`` (an older value reads as missing, unless ``enforce_ttl`` is
  false); a value written under another schema reads as missing too;
* reads and writes retry UNAVAILABLE and DEADLINE_EXCEEDED with exponential backoff within
  ``operation_timeout_s``; so do table creation and deletion
  (:mod:`streaming.store.bigtable.admin`);
* a missing table raises LookupError (run ``feast apply``), except with
  ``recreate_missing_table`` (emulator), where a read returns missing and a write recreates it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from feast import Entity, FeatureView
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.utils import _get_table_entity_values
from google.api_core import exceptions as gexc
from pydantic import PositiveFloat, PositiveInt, StrictStr, field_validator

from streaming.store.bigtable import admin, codec, mutate
from streaming.store.bigtable import feast_wire as wire

logger = logging.getLogger(__name__)

ReadResult = list[tuple[datetime | None, dict[str, ValueProto] | None]]

_RPCS = {"bigtable_read_rows": 0, "bigtable_rows_read": 0, "bigtable_mutate_rows": 0,
         "bigtable_rows_mutated": 0}  # fmt: skip
_RPCS_LOCK = threading.Lock()


def rpc_counts() -> dict[str, int]:
    """What every :class:`BigtableOnlineStore` of this process sent: ReadRows calls and rows
    read, MutateRows calls (attempts) and rows mutated (a job's cost per transaction)."""
    with _RPCS_LOCK:
        return dict(_RPCS)


def _count(name: str, n: int = 1) -> None:
    with _RPCS_LOCK:
        _RPCS[name] += n


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
    """Budget of one read, write or table operation, retries included."""
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


class BigtableOnlineStore(OnlineStore):
    """Feast online store: packed float64 rows on Bigtable, every view of a read in one RPC.

    Its clients are built on first use from that call's ``online_store`` settings and kept.
    """

    rpc_counts = staticmethod(rpc_counts)  # every instance's RPCs, for the job's totals line

    def __init__(self) -> None:
        self._data_client: Any = None
        self._admin: admin.TableAdmin | None = None
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
        names = codec.feature_names(table)
        keys, times, values = [], np.empty(len(data), np.int64), np.empty((len(data), len(names)))
        for i, (entity_key, features, event_ts, _created) in enumerate(data):
            keys.append(codec.proto_row_key(entity_key))
            times[i] = codec.to_micros(event_ts)
            values[i] = [codec.as_float(features.get(n), table.name, n) for n in names]
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
        keys = [codec.proto_row_key(k) for k in entity_keys]
        requested = requested_features or codec.feature_names(table)
        cells = self._fetch(config, [table], keys)
        present, event_us, values = self._decode(config, table, requested, keys, cells)
        out: ReadResult = []
        for ok, t, row in zip(present.tolist(), event_us.tolist(), values.tolist(), strict=True):
            if not ok:
                out.append((None, None))
                continue
            features = {n: ValueProto(double_val=v) for n, v in zip(requested, row, strict=True)}
            out.append((codec.from_micros(t), features))
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
            codec.feature_names(view)
        if tables_to_keep:
            self._table_admin(config).ensure(codec.table_name(config.project), codec.FAMILY)

    def teardown(
        self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]
    ) -> None:
        """Delete the project's table (all views live in it)."""
        table_id = codec.table_name(config.project)
        if not self._table_admin(config).delete(table_id):
            logger.info("table %s was already gone", table_id)
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
                    row_cells[qualifier] = (t, codec.pack(tag, t, row))
        entries = [
            mutate.set_cells(key, codec.FAMILY, [(q, t - t % 1000, v) for q, (t, v) in c.items()])
            for key, c in cells.items()
        ]
        step = config.online_store.rows_per_write
        for start in range(0, len(entries), step):
            self._mutate(config, entries[start : start + step])

    def read_arrays(
        self, config: RepoConfig, requests: Sequence[tuple[FeatureView, Sequence[bytes]]]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(present, event µs, values)`` of each ``(view, row keys)`` request, all in one
        ReadRows: every feature of the view, the latest cell, no ttl applied (the caller
        decides what is fresh, e.g. by event time)."""
        cells = self._fetch(
            config, [view for view, _ in requests], [k for _, ks in requests for k in ks]
        )
        return [
            self._decode(config, view, codec.feature_names(view), keys, cells, enforce_ttl=False)
            for view, keys in requests
        ]

    def scan_arrays(
        self, config: RepoConfig, view: FeatureView, join_key: str, limit: int
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, bool]:
        """Every row of a single-int-key view, up to ``limit`` rows, in one streaming
        ``ReadRows`` over the key's range (``<join_key>=``): ``(ids, present, event µs, values,
        truncated)``; no ttl applied. ``truncated``: the limit was reached."""
        from google.cloud.bigtable.data import ReadRowsQuery, RowRange
        from google.cloud.bigtable.data.row_filters import (
            CellsColumnLimitFilter,
            ColumnQualifierRegexFilter,
            RowFilterChain,
        )

        prefix = f"{join_key}=".encode()
        row_filter = RowFilterChain(
            [
                ColumnQualifierRegexFilter(f"^{re.escape(view.name)}$".encode()),
                CellsColumnLimitFilter(1),
            ]
        )
        span = RowRange(start_key=prefix, end_key=prefix[:-1] + b">")  # "=" + 1
        query = ReadRowsQuery(row_ranges=[span], row_filter=row_filter, limit=limit + 1)
        rows = self._read(config, query)
        truncated = len(rows) > limit
        rows = rows[:limit]
        keys = [row.row_key for row in rows]
        cells = {(row.row_key, cell.qualifier): cell.value for row in rows for cell in row.cells}
        present, event_us, values = self._decode(
            config, view, codec.feature_names(view), keys, cells, enforce_ttl=False
        )
        ids = [int(key[len(prefix) :]) for key in keys]
        return ids, present, event_us, values, truncated

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

        unique: list[str | bytes] = list(dict.fromkeys(keys))
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
        enforce_ttl: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(present (n,), event µs (n,), values (n, requested))`` of ``view`` for ``keys``.

        Not present: no cell, a cell of another schema, or (with ``enforce_ttl`` and the
        config's) one older than the view's ttl.
        """
        tag, names = self._layout(view)
        enforce = enforce_ttl and config.online_store.enforce_ttl
        ttl = view.ttl if view.ttl and enforce else None
        oldest = codec.to_micros(self.clock() - ttl) if ttl else int(np.iinfo(np.int64).min)
        qualifier = view.name.encode()
        found = [cells.get((key, qualifier)) for key in keys]
        present, event_us, values = codec.decode(found, tag, len(names), oldest, view.name)
        return present, event_us, values[:, [names.index(n) for n in requested]]

    def _layout(self, view: FeatureView) -> tuple[int, list[str]]:
        """``(schema tag, feature names)`` of a view, cached."""
        key = (view.name, tuple(f.name for f in view.features))
        layout = self._layouts.get(key)
        if layout is None:
            names = codec.feature_names(view)
            layout = self._layouts[key] = (codec.schema_tag(names), names)
        return layout

    def _read(self, config: RepoConfig, query: Any) -> list[Any]:
        settings = config.online_store
        self.read_rpcs += 1
        _count("bigtable_read_rows")
        try:
            rows = self._table(config).read_rows(
                query,
                operation_timeout=settings.operation_timeout_s,
                attempt_timeout=settings.attempt_timeout_s,
                retryable_errors=admin.RETRYABLE,
            )
            _count("bigtable_rows_read", len(rows))
            return rows
        except gexc.NotFound:
            if not settings.recreate_missing_table:
                raise _missing_table(config) from None
            return []

    def _mutate(self, config: RepoConfig, entries: list[Any]) -> None:
        """MutateRows of plain entries (:mod:`.mutate`), retried within the budget; a table
        that vanished is recreated once when ``recreate_missing_table`` says so."""
        settings = config.online_store
        table_id = codec.table_name(config.project)
        what = f"Bigtable: write to table {table_id!r} ({admin.endpoint(settings)})"
        for attempt in (1, 2):
            send = mutate.gapic_send(self._table(config), settings.attempt_timeout_s)
            try:
                calls = mutate.mutate_rows(send, entries, settings.operation_timeout_s, what)
            except gexc.NotFound as gone:
                if attempt == 2 or not settings.recreate_missing_table:
                    raise _missing_table(config) from gone
                logger.warning("table %s vanished: recreating it", table_id)
                self._table_admin(config).ensure(table_id, codec.FAMILY)
            else:
                self.write_rpcs += calls
                _count("bigtable_mutate_rows", calls)
                _count("bigtable_rows_mutated", len(entries))
                return

    def _table(self, config: RepoConfig) -> Any:
        """The data client's table of the project (a test and benchmark probe too)."""
        table = self._tables.get(config.project)
        if table is None:
            settings = config.online_store
            if self._data_client is None:
                self._data_client = admin.data_client(settings)
            table = self._data_client.get_table(settings.instance, codec.table_name(config.project))
            self._tables[config.project] = table
        return table

    def _table_admin(self, config: RepoConfig) -> admin.TableAdmin:
        if self._admin is None:
            self._admin = admin.TableAdmin(config.online_store)
        return self._admin


def _missing_table(config: RepoConfig) -> LookupError:
    table_id = codec.table_name(config.project)
    return admin.missing_table(table_id, config.online_store.instance, config.project)


def _view_row_keys(
    view: FeatureView, join_key_values: dict[str, list[ValueProto]], entity_to_join_key: dict
) -> list[bytes] | None:
    """Row keys of a request's rows for ``view``; None if a join key is missing."""
    columns = _get_table_entity_values(view, entity_to_join_key, join_key_values)
    expected = {entity_to_join_key[e] for e in view.entities}
    if set(columns) != expected or not all(columns.values()):
        return None
    names = list(columns)
    return codec.row_keys(names, [[codec.native(v) for v in columns[k]] for k in names])
