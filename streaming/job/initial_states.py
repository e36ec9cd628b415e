"""Entity states for a streaming job's start, replayed from the history it takes over from.

A job started on a live feed otherwise begins with empty states: its features match the
backfill's only after the longest window (plus delay) of traffic. ``fraudstream bootstrap``
replays a history through the job's own incremental engine (transactions, and each label
once its delay has passed by the history's last transaction) and writes every card's and
terminal's state to a parquet file; ``fraudstream run --initial_state FILE`` loads an entity's
state from it the first time the job sees that entity (Beam state, once written, wins).

The file has one row per entity: ``entity`` (``customer``, ``terminal``), ``id`` (int64, as the
job keys it: pseudonymised when the job pseudonymises) and ``state`` (the bytes of
:meth:`features.incremental.EntityStore.export`). Its metadata names the spec and its feature
names, the id key's fingerprint (empty for clear ids) and the history's last transaction time:
the job refuses a file written for another spec or another key. The live feed should start
after that time; older transactions are treated as late (or too late) events.

``fraudstream bootstrap --to_store`` writes the same states and facts to the Bigtable state
table of the job's Feast settings (:mod:`streaming.store.bigtable.states`), and
``--initial_state store`` (:data:`STORE`) reads an entity's state from it the first time a
worker sees the entity: one keyed read per entity, so a worker's memory does not grow with the
number of entities bootstrapped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.spec import Entity, FeatureSpec
from streaming.store.feast_store import StoreSettings

if TYPE_CHECKING:
    from streaming.store.bigtable.states import StateTable

META_KEY = b"fraudstream.initial_state"
STORE = "store"
"""``--initial_state store``: the states are in the Bigtable state table of the job's Feast
settings, not in a file."""
StateLookup = Callable[[int], bytes | None]
"""An entity's initial state by id; None when it has none."""


@dataclass(frozen=True)
class StateFileInfo:
    """What states were written for: a state file's parquet metadata, the state table's
    metadata row."""

    spec: str
    names: list[str]
    id_key: str  # fingerprint of the pseudonymisation key; "" for clear ids
    end_ns: int  # the history's last transaction time
    entities: int

    def check(
        self, spec: FeatureSpec, id_key: str | None = None, what: str = "initial state file"
    ) -> None:
        """``ValueError`` unless the states fit ``spec`` (and, when given, the id key);
        ``what`` names their source in the message."""
        if self.spec != spec.name or self.names != spec.names:
            raise ValueError(
                f"{what} was written for spec {self.spec!r} "
                f"({len(self.names)} features), not {spec.name!r}: rerun fraudstream bootstrap "
                f"--preset {spec.name}"
            )
        if id_key is not None and self.id_key != id_key:
            have = f"key {self.id_key}" if self.id_key else "clear ids"
            want = f"key {id_key}" if id_key else "clear ids"
            raise ValueError(
                f"{what} is keyed by {have}, the job by {want}: rerun fraudstream "
                "bootstrap with the job's --pseudonymise_ids setting and key"
            )


def read_info(source) -> StateFileInfo:
    """The metadata of a state file (a path or an open binary file)."""
    meta = pq.read_schema(source).metadata or {}
    if META_KEY not in meta:
        raise ValueError(f"{source}: not a fraudstream initial state file (no metadata)")
    return StateFileInfo(**json.loads(meta[META_KEY]))


def read_states(source, spec: FeatureSpec, entity: Entity) -> dict[int, bytes]:
    """``id -> state`` of one entity type from a state file written for ``spec``."""
    read_info(source).check(spec)
    table = pq.read_table(source)
    table = table.filter(pc.equal(table["entity"], entity.name))
    return dict(zip(table["id"].to_pylist(), table["state"].to_pylist(), strict=True))


@dataclass(frozen=True)
class InitialStates:
    """A job's initial entity states for ``spec``, read on the workers, one entity type per
    stateful step: a state file (any Beam file system path), or with ``path`` :data:`STORE` the
    Bigtable state table of the Feast settings ``store``."""

    path: str
    spec: FeatureSpec
    store: StoreSettings | None = None

    def __post_init__(self) -> None:
        if self.in_store and self.store is None:
            raise ValueError("--initial_state store needs the job's Feast store settings")

    @property
    def in_store(self) -> bool:
        return self.path == STORE

    def describe(self) -> str:
        """Where the states are, for messages."""
        if self.store is not None and self.in_store:
            return f"initial state store ({_state_table(self.store).where})"
        return f"initial state file {self.path}"

    def lookup(self, entity: Entity) -> StateLookup:
        """On a worker (``DoFn.setup``): the state of an ``entity`` id. From a file: the
        file's states in memory (:meth:`load`). From the store: one Bigtable read per call,
        the table's metadata checked against the spec once per process."""
        if self.store is not None and self.in_store:
            table = _checked_state_table(self.store, self.spec)
            return functools.partial(table.read, entity)
        return self.load(entity).get

    def load(self, entity: Entity) -> dict[int, bytes]:
        """The states of ``entity`` from the file (read once per process and version of the
        file, shared by its DoFn instances: read-only)."""
        from apache_beam.io.filesystems import FileSystems

        if self.in_store:
            raise ValueError("the initial state store is read by key (lookup), not whole")
        _open(self.path).close()  # a clear error for a missing file
        meta = FileSystems.match([self.path])[0].metadata_list[0]
        version = (meta.size_in_bytes, meta.last_updated_in_seconds)
        return _load(self.path, version, self.spec, entity)

    def info(self) -> StateFileInfo:
        """What the states were written for; ValueError when there are none."""
        if self.store is not None and self.in_store:
            return _store_info(_state_table(self.store))
        with _open(self.path) as f:
            return read_info(f)

    def check(self, id_key: str | None = None) -> StateFileInfo:
        """:meth:`info`, refused (ValueError) unless written for the spec and, when given,
        the id key's fingerprint (``""``: clear ids)."""
        info = self.info()
        info.check(self.spec, id_key, self.describe() if self.in_store else "initial state file")
        return info


@functools.lru_cache(maxsize=8)
def _state_table(settings: StoreSettings) -> StateTable:
    """One state table (one data client) per process and settings."""
    from streaming.store.bigtable.states import StateTable

    return StateTable.of(settings.repo_config())


@functools.lru_cache(maxsize=8)
def _checked_state_table(settings: StoreSettings, spec: FeatureSpec) -> StateTable:
    """:func:`_state_table`, its metadata checked against ``spec`` (once per process)."""
    table = _state_table(settings)
    _store_info(table).check(spec, what=f"initial state store ({table.where})")
    return table


def _store_info(table: StateTable) -> StateFileInfo:
    meta = table.read_info()
    if meta is None:
        raise ValueError(
            f"--initial_state store: no complete bootstrap in Bigtable {table.where}: run "
            "fraudstream bootstrap --to_store with the job's Feast settings"
        )
    return StateFileInfo(**meta)


@functools.cache
def _load(path: str, version: tuple, spec: FeatureSpec, entity: Entity) -> dict[int, bytes]:
    with _open(path) as f:
        return read_states(pa.BufferReader(f.read()), spec, entity)


def _open(path: str):
    """A seekable binary file on any Beam file system (``gs://`` included)."""
    from features.table import InputError
    from training.files import open_file

    try:
        return open_file(path)
    except InputError:
        raise ValueError(
            f"--initial_state {path}: no such file (see fraudstream bootstrap)"
        ) from None
