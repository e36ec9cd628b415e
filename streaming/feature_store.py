"""The pipeline's online feature store: a narrow reader/writer, Feast-backed or in memory.

Names of the Feast objects are derived from the spec here (``feature_repo/definitions.py``
builds the objects from them): per preset and entity one feature view (``customer_features``
for the default preset, ``customer_features_baseline`` for the others), its push source
``<view>_push`` and parquet batch source ``data/offline/<view>.parquet``, and one feature
service per preset (``model_inputs``, ``model_inputs_baseline``) with the model's entity inputs.

Both implementations batch: one online-store round trip per :meth:`read` or :meth:`write` call,
whatever the number of events or entities. Event times are naive UTC (Feast's convention).
Importing this module does not import Feast (about 8 s): :meth:`FeastFeatureStore.open` does.
"""

from __future__ import annotations

import functools
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from features.spec import Entity, FeatureSpec

REPO = Path(__file__).resolve().parent.parent / "feature_repo"
PROFILES = ("local", "emulator", "gcp")
EVENT_TIMESTAMP = "event_timestamp"
DEFAULT_PRESET = "default"


# --------------------------------------------------------------------------- names


def _suffix(spec: FeatureSpec) -> str:
    return "" if spec.name == DEFAULT_PRESET else f"_{spec.name}"


def view_name(spec: FeatureSpec, entity: Entity) -> str:
    """``customer_features`` (default preset) or ``customer_features_<preset>``."""
    return f"{entity.name}_features{_suffix(spec)}"


def push_source_name(spec: FeatureSpec, entity: Entity) -> str:
    return f"{view_name(spec, entity)}_push"


def service_name(spec: FeatureSpec) -> str:
    """The feature service of the model's per-entity inputs."""
    return f"model_inputs{_suffix(spec)}"


def offline_path(spec: FeatureSpec, entity: Entity) -> str:
    """The view's parquet batch source, relative to the feature repository."""
    return f"data/offline/{view_name(spec, entity)}.parquet"


def feature_ttl(spec: FeatureSpec, entity: Entity) -> timedelta:
    """How long a stored value is served: the entity's horizon (longest window + delay).

    Past it every window of the entity has moved beyond the value's events.
    """
    return spec.horizon(entity)


def stored_entities(spec: FeatureSpec) -> list[Entity]:
    """The spec's entities that have features to store, in model order."""
    return [e for e in spec.entities if spec.entity_names(e)]


def profile_yaml(profile: str, repo: Path | str = REPO) -> Path:
    """The feature_store.yaml of ``profile``: ``local`` is the repo's own, others in profiles/."""
    if profile not in PROFILES:
        raise ValueError(f"unknown feature store profile {profile!r}; choose from {PROFILES}")
    repo = Path(repo)
    return (
        repo / "feature_store.yaml" if profile == "local" else repo / "profiles" / f"{profile}.yaml"
    )


def load_definitions(repo: Path | str = REPO) -> ModuleType:
    """Import ``<repo>/definitions.py`` (not a package) to build Feast objects in code."""
    path = Path(repo) / "definitions.py"
    module_spec = importlib.util.spec_from_file_location("fraudstream_feast_definitions", path)
    if module_spec is None or module_spec.loader is None:
        raise FileNotFoundError(f"no Feast definitions at {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def scratch_repo(target: Path | str, project: str, repo: Path | str = REPO) -> Path:
    """A copy of the Feast repository without its data, with ``project`` as the Feast project
    name (tests, benchmarks and demos apply their own, so their registries never collide)."""
    import shutil

    target = Path(target)
    shutil.copytree(repo, target, ignore=shutil.ignore_patterns("data", "__pycache__"))
    for yaml in [target / "feature_store.yaml", *target.glob("profiles/*.yaml")]:
        yaml.write_text(yaml.read_text().replace("project: fraudstream", f"project: {project}"))
    return target


def apply(profile: str, repo: Path | str = REPO) -> Any:
    """``feast apply`` of the repository's definitions with ``profile``; returns the
    ``FeatureStore`` (imports Feast). The emulator profile needs ``BIGTABLE_EMULATOR_HOST``."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml(profile, repo))
    store.apply(load_definitions(repo).all_definitions())
    return store


# --------------------------------------------------------------------------- tables


def entity_tables(
    events: pd.DataFrame, features: pd.DataFrame, spec: FeatureSpec, latest_only: bool = False
) -> dict[str, pd.DataFrame]:
    """Per entity name, its feature rows: ``<key>, event_timestamp, *spec.entity_names(entity)``.

    ``events`` has ``TRANSACTION_ID``, ``TX_DATETIME`` and the entity keys; ``features`` has
    ``TRANSACTION_ID`` and the entity features (a backfill or stream output). A row is the
    entity's state just after the event; of events of one entity at the same time only the
    last to arrive (highest ``TRANSACTION_ID``) is kept. ``latest_only``: one row per entity,
    its newest. Rows are ordered by key, then time.
    """
    cols = ["TRANSACTION_ID", "TX_DATETIME", *(e.key for e in spec.entities)]
    same_rows = len(events) == len(features) and np.array_equal(
        events["TRANSACTION_ID"].to_numpy(), features["TRANSACTION_ID"].to_numpy()
    )
    if same_rows:
        merged = pd.concat([events[cols].reset_index(drop=True),
                            features.drop(columns="TRANSACTION_ID").reset_index(drop=True)],
                           axis=1)  # fmt: skip
    else:
        merged = events[cols].merge(features, on="TRANSACTION_ID", how="inner", validate="1:1")
    out = {}
    for entity in stored_entities(spec):
        names = spec.entity_names(entity)
        part = merged[[entity.key, "TX_DATETIME", "TRANSACTION_ID", *names]]
        part = part.sort_values([entity.key, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")
        subset = [entity.key] if latest_only else [entity.key, "TX_DATETIME"]
        part = part.drop_duplicates(subset=subset, keep="last")
        part = part.drop(columns="TRANSACTION_ID").rename(columns={"TX_DATETIME": EVENT_TIMESTAMP})
        out[entity.name] = part.reset_index(drop=True)
    return out


@dataclass(frozen=True)
class EntityFeatures:
    """Values of one entity's features for a batch of ids (columns ``spec.entity_names``)."""

    entity: Entity
    ids: np.ndarray
    """int64, shape (n,)."""
    event_times: np.ndarray
    """datetime64[ns] naive UTC, shape (n,): the event each row's values are as of."""
    values: np.ndarray
    """float64, shape (n, features); NaN is a value (e.g. the min of an empty window)."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.event_times) != n or self.values.ndim != 2 or self.values.shape[0] != n:
            raise ValueError(
                f"EntityFeatures({self.entity.name}): {n} ids, {len(self.event_times)} times, "
                f"values of shape {self.values.shape}"
            )


def entity_batches(frame: pd.DataFrame, spec: FeatureSpec) -> list[EntityFeatures]:
    """The newest row per entity of a frame of events with their features (what to write).

    ``frame`` has ``TRANSACTION_ID``, ``TX_DATETIME``, the entity keys and the entity features.
    """
    names = [n for e in stored_entities(spec) for n in spec.entity_names(e)]
    tables = entity_tables(frame, frame[["TRANSACTION_ID", *names]], spec, latest_only=True)
    return [
        EntityFeatures(
            entity=e,
            ids=tables[e.name][e.key].to_numpy(np.int64),
            event_times=tables[e.name][EVENT_TIMESTAMP].to_numpy("datetime64[ns]"),
            values=tables[e.name][spec.entity_names(e)].to_numpy(np.float64),
        )
        for e in stored_entities(spec)
    ]


@dataclass(frozen=True)
class FeatureRows:
    """What a read returns, one row per requested entity row."""

    columns: list[str]
    """Every entity feature of the spec, in model order."""
    values: np.ndarray
    """float64 (n, len(columns)); NaN where the entity has no live value."""
    found: dict[str, np.ndarray]
    """Entity name -> bool (n,): False where the store has no live (unexpired) row."""


# --------------------------------------------------------------------------- interfaces


class OnlineFeatureWriter(ABC):
    """Stores each entity's newest feature values."""

    @abstractmethod
    def write(self, batches: Sequence[EntityFeatures]) -> None:
        """Store every row in one round trip; a row older than the stored one does not win."""


class OnlineFeatureReader(ABC):
    """Serves entity features for rows of entity keys."""

    @abstractmethod
    def read(self, keys: Mapping[str, np.ndarray]) -> FeatureRows:
        """Features of each row of ``keys`` (entity key column -> ids, equal lengths).

        One round trip for all rows and entities. An unknown or expired entity reads as NaN
        with ``found`` False; it never raises.
        """


def _check_keys(spec: FeatureSpec, keys: Mapping[str, np.ndarray]) -> int:
    entities = stored_entities(spec)
    missing = [e.key for e in entities if e.key not in keys]
    if missing:
        raise ValueError(f"read: missing entity key columns {missing} (got {sorted(keys)})")
    lengths = {e.key: len(keys[e.key]) for e in entities}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"read: entity key columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


class InMemoryFeatureStore(OnlineFeatureReader, OnlineFeatureWriter):
    """A dict-backed fake with the Bigtable store's semantics, for unit tests.

    Newest event time wins (ties: the later write); values expire after :func:`feature_ttl`
    by ``clock`` (UTC now by default). ``round_trips`` counts read and write calls.
    """

    def __init__(self, spec: FeatureSpec, clock: Callable[[], datetime] | None = None) -> None:
        self.spec = spec
        self._clock = clock or (lambda: datetime.now(UTC).replace(tzinfo=None))
        self._rows: dict[tuple[str, int], tuple[np.datetime64, np.ndarray]] = {}
        self.round_trips = 0

    def write(self, batches: Sequence[EntityFeatures]) -> None:
        self.round_trips += 1
        for batch in batches:
            for i, t, row in zip(batch.ids.tolist(), batch.event_times, batch.values, strict=True):
                key = (batch.entity.name, i)
                current = self._rows.get(key)
                if current is None or current[0] <= t:
                    self._rows[key] = (t, row.copy())

    def read(self, keys: Mapping[str, np.ndarray]) -> FeatureRows:
        self.round_trips += 1
        n = _check_keys(self.spec, keys)
        now = np.datetime64(self._clock(), "ns")
        blocks, found = [], {}
        for entity in stored_entities(self.spec):
            width = len(self.spec.entity_names(entity))
            oldest = now - np.timedelta64(feature_ttl(self.spec, entity))
            block, hit = np.full((n, width), np.nan), np.zeros(n, bool)
            for j, i in enumerate(np.asarray(keys[entity.key]).tolist()):
                stored = self._rows.get((entity.name, int(i)))
                if stored is not None and stored[0] >= oldest:
                    block[j], hit[j] = stored[1], True
            blocks.append(block)
            found[entity.name] = hit
        columns = [n for e in stored_entities(self.spec) for n in self.spec.entity_names(e)]
        values = np.hstack(blocks) if blocks else np.empty((n, 0))
        return FeatureRows(columns, values, found)


class FeastFeatureStore(OnlineFeatureReader, OnlineFeatureWriter):
    """Reads through ``FeatureStore.get_online_features`` (the preset's feature service).

    Writes go straight to the online store in one request when it is our
    :class:`~streaming.bigtable_online_store.BigtableOnlineStore` (``write_arrays``), else
    through ``FeatureStore.write_to_online_store``, one call per entity view. Build it once per
    process (``DoFn.setup``): constructing a FeatureStore costs seconds.
    """

    def __init__(self, store: Any, spec: FeatureSpec) -> None:
        self.store, self.spec = store, spec
        self._service = store.get_feature_service(service_name(spec))
        self._views = {
            e.name: store.get_feature_view(view_name(spec, e)) for e in stored_entities(spec)
        }
        for entity in stored_entities(spec):
            view, expected = self._views[entity.name], spec.entity_names(entity)
            got = [f.name for f in view.features]
            if got != expected:
                raise ValueError(
                    f"feature view {view.name!r} in the registry has features {got}, but preset "
                    f"{spec.name!r} has {expected}: run `feast apply` with this code"
                )
        online = getattr(store._get_provider(), "online_store", None)  # no public accessor
        self._packed = online if hasattr(online, "write_arrays") else None

    @classmethod
    def open(
        cls, spec: FeatureSpec, profile: str = "local", repo: Path | str = REPO
    ) -> FeastFeatureStore:
        """A store on ``repo`` with ``profile``'s feature_store.yaml (imports Feast)."""
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml(profile, repo))
        return cls(store, spec)

    def write(self, batches: Sequence[EntityFeatures]) -> None:
        if self._packed is not None:
            from streaming.bigtable_online_store import row_keys

            arrays = [
                (
                    self._views[b.entity.name],
                    row_keys([b.entity.key], [b.ids.tolist()]),
                    b.event_times.astype("datetime64[us]").astype(np.int64),
                    np.asarray(b.values, np.float64),
                )
                for b in batches
                if len(b.ids)
            ]
            if arrays:
                self._packed.write_arrays(self.store.config, arrays)
            return
        for b in batches:
            frame = pd.DataFrame(b.values, columns=self.spec.entity_names(b.entity))
            frame.insert(0, b.entity.key, b.ids)
            frame.insert(1, EVENT_TIMESTAMP, pd.to_datetime(b.event_times))
            self.store.write_to_online_store(view_name(self.spec, b.entity), frame)

    def read(self, keys: Mapping[str, np.ndarray]) -> FeatureRows:
        n = _check_keys(self.spec, keys)
        entities = stored_entities(self.spec)
        rows = {e.key: np.asarray(keys[e.key], np.int64).tolist() for e in entities}
        columns = [name for e in entities for name in self.spec.entity_names(e)]
        if n == 0:
            return FeatureRows(
                columns, np.empty((0, len(columns))), {e.name: np.zeros(0, bool) for e in entities}
            )
        proto = self.store.get_online_features(features=self._service, entity_rows=rows).proto
        return _response_rows(proto, columns, entities, self.spec, n)


@functools.lru_cache(maxsize=8)
def shared_store(preset: str, profile: str, repo: str = str(REPO)) -> FeastFeatureStore:
    """One :class:`FeastFeatureStore` per process and settings, shared by the pipeline's DoFns
    (opening one costs seconds; the DirectRunner sets up a new DoFn for every bundle)."""
    from features import presets

    return FeastFeatureStore.open(presets.get(preset), profile, repo)


def _response_rows(
    proto: Any, columns: list[str], entities: list[Entity], spec: FeatureSpec, n: int
) -> FeatureRows:
    """A GetOnlineFeaturesResponse as a float64 matrix in ``columns`` order (Float64 views)."""
    position = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
    values = np.empty((n, len(columns)))
    present = np.empty((n, len(columns)), bool)
    for j, name in enumerate(columns):
        vector = proto.results[position[name]]
        column = [v.double_val for v in vector.values]
        for i in (i for i, x in enumerate(column) if x == 0.0):  # 0.0 or a null Value
            if not vector.values[i].HasField("double_val"):  # Feast writes NaN as null
                column[i] = np.nan
        values[:, j] = column
        present[:, j] = [s == _PRESENT for s in vector.statuses]
    values[~present] = np.nan
    found, start = {}, 0
    for e in entities:
        found[e.name] = present[:, start]
        start += len(spec.entity_names(e))
    return FeatureRows(columns, values, found)


_PRESENT = 1  # feast.serving FieldStatus.PRESENT
