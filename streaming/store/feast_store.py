"""The online store through Feast: reads with ``get_online_features``, writes through our
Bigtable store's packed path (or Feast's ``write_to_online_store``), and repository helpers.

Importing this module does not import Feast (about 8 s): :meth:`FeastFeatureStore.open` does.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from features.spec import Entity, FeatureSpec
from streaming.store.base import (
    EntityBatch,
    OnlineFeatureReader,
    OnlineFeatures,
    OnlineFeatureWriter,
    check_keys,
)
from streaming.store.names import (
    EVENT_TIMESTAMP,
    REPO,
    profile_yaml,
    service_name,
    stored_entities,
    view_name,
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


@dataclass(frozen=True)
class StoreSettings:
    """Where the Feast store is: a profile of a repository, and the values that override the
    profile's (pipeline options, so Dataflow workers receive them with the job; the ``gcp``
    profile's ``${FRAUDSTREAM_*}`` variables are then not needed on a worker).

    ``repo`` is a directory on the machine that opens the store (on Dataflow: in the worker
    image); the registry may be a ``gs://`` URI."""

    profile: str = "local"
    repo: str = str(REPO)
    registry: str | None = None
    """The Feast registry (e.g. ``gs://bucket/fraudstream/registry.db``)."""
    bigtable_project: str | None = None
    bigtable_instance: str | None = None

    def repo_config(self) -> Any:
        """The ``RepoConfig`` (imports Feast): the profile's yaml with ``${VAR}`` expanded as
        Feast does, then the overrides; a profile value still naming ``${VAR}`` is refused by
        the online store's config with what to set."""
        import os

        import yaml
        from feast.repo_config import RepoConfig

        raw = yaml.safe_load(os.path.expandvars(profile_yaml(self.profile, self.repo).read_text()))
        if self.registry:
            raw["registry"] = self.registry
        online = raw.setdefault("online_store", {})
        if self.bigtable_project:
            online["project_id"] = self.bigtable_project
        if self.bigtable_instance:
            online["instance"] = self.bigtable_instance
        config = RepoConfig(**raw)
        config.repo_path = Path(self.repo)
        return config

    def feature_store(self) -> Any:
        """A Feast ``FeatureStore`` with these settings (imports Feast; costs seconds)."""
        from feast import FeatureStore

        return FeatureStore(repo_path=self.repo, config=self.repo_config())


def _settings(profile: str | StoreSettings, repo: Path | str) -> StoreSettings:
    return profile if isinstance(profile, StoreSettings) else StoreSettings(profile, str(repo))


def apply_repo(profile: str | StoreSettings, repo: Path | str = REPO) -> Any:
    """``feast apply`` of the repository's definitions with ``profile`` (or full settings);
    returns the ``FeatureStore``. The emulator profile needs ``BIGTABLE_EMULATOR_HOST``."""
    settings = _settings(profile, repo)
    store = settings.feature_store()
    store.apply(load_definitions(settings.repo).all_definitions())
    return store


class FeastFeatureStore(OnlineFeatureReader, OnlineFeatureWriter):
    """Reads through ``FeatureStore.get_online_features`` (the preset's feature service).

    Writes go straight to the online store in one request when it is our
    :class:`~streaming.store.bigtable.online_store.BigtableOnlineStore` (``write_arrays``), else
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
        self.rpc_counts = getattr(online, "rpc_counts", None)

    @classmethod
    def open(
        cls, spec: FeatureSpec, profile: str | StoreSettings = "local", repo: Path | str = REPO
    ) -> FeastFeatureStore:
        """A store on ``repo`` with ``profile``'s feature_store.yaml, or with full
        :class:`StoreSettings` (imports Feast)."""
        settings = (
            profile if isinstance(profile, StoreSettings) else StoreSettings(profile, str(repo))
        )
        return cls(settings.feature_store(), spec)

    def write(self, batches: Sequence[EntityBatch]) -> None:
        if self._packed is not None:
            from streaming.store.bigtable.codec import row_keys

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

    def read(self, keys: Mapping[str, np.ndarray]) -> OnlineFeatures:
        n = check_keys(self.spec, keys)
        entities = stored_entities(self.spec)
        rows = {e.key: np.asarray(keys[e.key], np.int64).tolist() for e in entities}
        columns = [name for e in entities for name in self.spec.entity_names(e)]
        if n == 0:
            return OnlineFeatures(
                columns, np.empty((0, len(columns))), {e.name: np.zeros(0, bool) for e in entities}
            )
        proto = self.store.get_online_features(features=self._service, entity_rows=rows).proto
        return _response_rows(proto, columns, entities, self.spec, n)


@functools.lru_cache(maxsize=8)
def shared_store(preset: str, settings: StoreSettings) -> FeastFeatureStore:
    """One :class:`FeastFeatureStore` per process and settings, shared by the pipeline's DoFns
    (opening one costs seconds; the DirectRunner sets up a new DoFn for every bundle)."""
    from features import presets

    return FeastFeatureStore.open(presets.get(preset), settings)


def _response_rows(
    proto: Any, columns: list[str], entities: list[Entity], spec: FeatureSpec, n: int
) -> OnlineFeatures:
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
    return OnlineFeatures(columns, values, found)


_PRESENT = 1  # feast.serving FieldStatus.PRESENT
