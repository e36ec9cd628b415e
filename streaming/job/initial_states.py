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
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.spec import Entity, FeatureSpec

META_KEY = b"fraudstream.initial_state"


@dataclass(frozen=True)
class StateFileInfo:
    """What a state file was written for (its parquet metadata)."""

    spec: str
    names: list[str]
    id_key: str  # fingerprint of the pseudonymisation key; "" for clear ids
    end_ns: int  # the history's last transaction time
    entities: int

    def check(self, spec: FeatureSpec, id_key: str | None = None) -> None:
        """``ValueError`` unless the file fits ``spec`` (and, when given, the id key)."""
        if self.spec != spec.name or self.names != spec.names:
            raise ValueError(
                f"initial state file was written for spec {self.spec!r} "
                f"({len(self.names)} features), not {spec.name!r}: rerun fraudstream bootstrap "
                f"--preset {spec.name}"
            )
        if id_key is not None and self.id_key != id_key:
            have = f"key {self.id_key}" if self.id_key else "clear ids"
            want = f"key {id_key}" if id_key else "clear ids"
            raise ValueError(
                f"initial state file is keyed by {have}, the job by {want}: rerun fraudstream "
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
    """A job's initial entity states: a state file (any Beam file system path) for ``spec``,
    read on the workers, one entity type per stateful step."""

    path: str
    spec: FeatureSpec

    def load(self, entity: Entity) -> dict[int, bytes]:
        """The states of ``entity`` (read once per process and version of the file, shared by
        its DoFn instances: read-only)."""
        from apache_beam.io.filesystems import FileSystems

        _open(self.path).close()  # a clear error for a missing file
        meta = FileSystems.match([self.path])[0].metadata_list[0]
        version = (meta.size_in_bytes, meta.last_updated_in_seconds)
        return _load(self.path, version, self.spec, entity)

    def info(self) -> StateFileInfo:
        with _open(self.path) as f:
            return read_info(f)


@functools.cache
def _load(path: str, version: tuple, spec: FeatureSpec, entity: Entity) -> dict[int, bytes]:
    with _open(path) as f:
        return read_states(pa.BufferReader(f.read()), spec, entity)


def _open(path: str):
    """A seekable binary file on any Beam file system (``gs://`` included)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        raise ValueError(f"--initial_state {path}: no such file (see fraudstream bootstrap)")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
