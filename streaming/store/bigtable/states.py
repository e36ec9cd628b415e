"""The entity-state table of a Feast project on Bigtable: every card's and terminal's exported
state, written by ``fraudstream bootstrap --to_store`` and read, one entity at a time, by
``fraudstream run --initial_state store``.

Layout:

* table :func:`state_table_name` of the Feast project (``<project>-states``), column family
  :data:`FAMILY` (one version per cell), in the online store's instance;
* one row per entity, keyed like its features (:func:`codec.row_keys`, ``CUSTOMER_ID=42``, with
  the id the job keys it by: pseudonymised when the job pseudonymises), qualifier :data:`STATE`,
  value = the state's bytes as ``EntityStore.export`` writes them;
* one metadata row :data:`META_ROW` (qualifier :data:`INFO`, JSON: what the states were written
  for). :meth:`StateTable.replace` empties the table first and the metadata row is written
  last, so a table without it holds no complete bootstrap.

Table operations, reads and writes retry UNAVAILABLE and DEADLINE_EXCEEDED under
:func:`admin.retry_policy` within the online store's ``operation_timeout_s`` (each attempt
bounded by ``attempt_timeout_s``), then raise RetryError naming the table and the endpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from features.spec import Entity
from streaming.store.bigtable import admin

FAMILY = "s"
"""The column family of the state table."""
STATE = b"state"
"""Qualifier of an entity's state cell."""
INFO = b"info"
"""Qualifier of the metadata cell."""
META_ROW = b"#fraudstream-states"
"""Row key of the metadata row (no entity key starts with ``#``)."""
MAX_REQUEST_BYTES = 32 << 20
"""At most this many state bytes per MutateRows request (Bigtable accepts 256 MB)."""

T = TypeVar("T")


class MissingStateTable(LookupError):
    """The state table is not there: nothing was bootstrapped into this instance."""


def state_table_name(project: str) -> str:
    """The state table of a Feast project: ``<project>-states``, hashed to fit Bigtable's 50
    characters (as the online store's ``<project>-packed``)."""
    from streaming.store.bigtable.codec import TABLE_MAX

    name = f"{project}-states"
    if len(name) <= TABLE_MAX:
        return name
    digest = hashlib.sha256(project.encode()).hexdigest()[:12]
    return f"{project[: TABLE_MAX - len(digest) - 8]}-{digest}-states"


def row_keys(entity: Entity, ids: Iterable[int]) -> list[bytes]:
    """Row keys of ``entity``'s ids: those of its features (:func:`codec.row_keys`)."""
    from streaming.store.bigtable.codec import row_keys as feature_row_keys

    return feature_row_keys([entity.key], [list(ids)])


class StateTable:
    """The state table of one Feast project: write a bootstrap, read states by key.

    Build it from the job's Feast settings with :meth:`of`; one instance holds one data client
    (build it once per process).
    """

    def __init__(
        self, settings: admin.ClientSettings, table_id: str, rows_per_write: int = 10_000
    ) -> None:
        self.settings, self.table_id, self.rows_per_write = settings, table_id, rows_per_write
        self._client: Any = None
        self._table: Any = None

    @classmethod
    def of(cls, config: Any) -> StateTable:
        """The state table of a Feast ``RepoConfig`` whose online store is our Bigtable store;
        ValueError for another online store."""
        from streaming.store.bigtable.online_store import BigtableOnlineStoreConfig

        online = config.online_store
        if not isinstance(online, BigtableOnlineStoreConfig):
            raise ValueError(
                f"entity states live in the Bigtable online store, but this Feast profile's "
                f"online store is {online.type!r}: use --feature_store_profile emulator or gcp"
            )
        return cls(online, state_table_name(config.project), online.rows_per_write)

    @property
    def where(self) -> str:
        """The table and its endpoint, for messages."""
        return f"table {self.table_id!r} ({admin.endpoint(self.settings)})"

    # ------------------------------------------------------------------ bootstrap

    def replace(self) -> None:
        """Delete the table (if there) and create it empty."""
        tables = admin.TableAdmin(self.settings)
        tables.delete(self.table_id)
        tables.ensure(self.table_id, FAMILY)

    def write(
        self,
        entity: Entity,
        ids: Sequence[int],
        states: Sequence[bytes],
        progress: Callable[[int], object] | None = None,
    ) -> None:
        """Write the ``states`` of ``entity``'s ``ids``, in MutateRows requests of at most
        ``rows_per_write`` rows and :data:`MAX_REQUEST_BYTES`; ``progress(rows)`` after each."""
        from google.cloud.bigtable.data import RowMutationEntry, SetCell

        if len(ids) != len(states):
            raise ValueError(f"{len(ids)} ids but {len(states)} states")
        batch: list[Any] = []
        size = 0
        for key, state in zip(row_keys(entity, ids), states, strict=True):
            batch.append(RowMutationEntry(key, [SetCell(FAMILY, STATE, state)]))
            size += len(state)
            if len(batch) >= self.rows_per_write or size >= MAX_REQUEST_BYTES:
                self._mutate(batch)
                if progress is not None:
                    progress(len(batch))
                batch, size = [], 0
        if batch:
            self._mutate(batch)
            if progress is not None:
                progress(len(batch))

    def write_info(self, info: dict[str, Any]) -> None:
        """Write the metadata row (after every state: it marks the bootstrap complete)."""
        from google.cloud.bigtable.data import RowMutationEntry, SetCell

        cell = SetCell(FAMILY, INFO, json.dumps(info, sort_keys=True).encode())
        self._mutate([RowMutationEntry(META_ROW, [cell])])

    # ------------------------------------------------------------------ reads

    def read_info(self) -> dict[str, Any] | None:
        """The metadata row; None when the table or the row is not there."""
        try:
            cell = self._read_cell(META_ROW, INFO)
        except MissingStateTable:
            return None
        return None if cell is None else json.loads(cell)

    def read(self, entity: Entity, key: int) -> bytes | None:
        """The state of one entity (one ReadRows of one row); None when it has none.
        :class:`MissingStateTable` when the table is not there."""
        return self._read_cell(row_keys(entity, [key])[0], STATE)

    def read_many(self, entity: Entity, keys: Sequence[int]) -> dict[int, bytes]:
        """``id -> state`` of those of ``keys`` that have one, in one ReadRows."""
        from google.cloud.bigtable.data import ReadRowsQuery
        from google.cloud.bigtable.data.row_filters import CellsColumnLimitFilter

        rows = dict(zip(row_keys(entity, keys), keys, strict=True))
        if not rows:
            return {}
        query = ReadRowsQuery(row_keys=list(rows), row_filter=CellsColumnLimitFilter(1))
        found = self._call("read states from", lambda **kw: self._data().read_rows(query, **kw))
        return {
            rows[row.row_key]: cell.value
            for row in found
            for cell in row.cells
            if cell.qualifier == STATE
        }

    # ------------------------------------------------------------------ internals

    def _read_cell(self, row_key: bytes, qualifier: bytes) -> bytes | None:
        from google.cloud.bigtable.data.row_filters import CellsColumnLimitFilter

        def read_row(**kw: Any) -> Any:
            return self._data().read_row(row_key, row_filter=CellsColumnLimitFilter(1), **kw)

        row = self._call("read states from", read_row)
        if row is None:
            return None
        cells = [c.value for c in row.cells if c.qualifier == qualifier]
        return cells[0] if cells else None

    def _mutate(self, entries: list[Any]) -> None:
        """One MutateRows; an attempt that left an entry unwritten is retried whole (a cell
        set again with its timestamp is the same cell)."""
        from google.cloud.bigtable.data.exceptions import MutationsExceptionGroup

        def mutate(**kw: Any) -> None:
            try:
                self._data().bulk_mutate_rows(entries, **kw)
            except MutationsExceptionGroup as group:
                causes = [admin.final_cause(e) for e in group.exceptions]
                raise next((c for c in causes if c is not None), group) from group

        self._call("write states to", mutate)

    def _call(self, verb: str, rpc: Callable[..., T]) -> T:
        """``rpc`` as single attempts of ``attempt_timeout_s`` under our retry policy (the
        client's own retry is off, so the budget is ours alone); NotFound raises
        :class:`MissingStateTable`."""

        def attempt() -> T:
            timeout = self.settings.attempt_timeout_s
            return rpc(operation_timeout=timeout, attempt_timeout=timeout, retryable_errors=())

        what = f"Bigtable: {verb} {self.where}"
        try:
            return admin.call_with_retries(attempt, what, self.settings.operation_timeout_s)
        except gexc.NotFound as exc:
            raise MissingStateTable(
                f"Bigtable {self.where} not found: run fraudstream bootstrap --to_store"
            ) from exc

    def _data(self) -> Any:
        """The data client's table, built on first use."""
        if self._table is None:
            self._client = admin.data_client(self.settings)
            self._table = self._client.get_table(self.settings.instance, self.table_id)
        return self._table
