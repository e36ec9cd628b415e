"""Reading a spec's batch features (its lookups) from the online store, a bundle at a time.

:class:`LookupReader` is the contract the stream's ``EnrichFromFeatureStore`` stage uses: one
round trip for any number of cards and terminals, each answered with its stored values and the
as-of time of the snapshot they come from (what a worker's cache keys on). Freshness is the
caller's business: a reader returns the newest stored row whatever its age.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.batch import EVENT_TIMESTAMP, lookup_entities
from features.spec import FeatureSpec
from streaming.store.feast_store import StoreSettings
from streaming.store.names import batch_view_name


@dataclass(frozen=True)
class LookedUp:
    """One entity's answer for ``n`` ids."""

    found: np.ndarray
    """bool (n,): the store has a row for the id."""
    as_of_ns: np.ndarray
    """int64 (n,): the row's event time (its snapshot's as-of midnight), ns; 0 where not found."""
    values: np.ndarray
    """float64 (n, ``spec.lookup_stored_names(entity)``); NaN where not found."""


@dataclass(frozen=True)
class Scanned:
    """Every stored row of one entity's batch view (up to a limit)."""

    ids: np.ndarray
    """int64 (n,)."""
    as_of_ns: np.ndarray
    """int64 (n,): each row's event time (its snapshot's as-of midnight)."""
    values: np.ndarray
    """float64 (n, stored)."""
    truncated: bool
    """The store holds more rows than the limit: ``ids`` are not all of them."""


class LookupReader(ABC):
    """Reads the newest batch-feature rows of entity ids; counts its round trips."""

    requests: int = 0
    """Round trips to the store so far (one per :meth:`read` with ids, one per view scanned)."""

    @abstractmethod
    def read(self, ids: Mapping[str, np.ndarray]) -> dict[str, LookedUp]:
        """Entity name -> int64 ids (each spec entity with lookups, any lengths) -> answers, in
        one round trip. Unknown ids are not found; it never raises for them."""

    def scan(self, limit: int) -> dict[str, Scanned] | None:
        """Every stored row of each batch view, up to ``limit`` rows a view, one streaming read
        a view; None where the store cannot be scanned (then only :meth:`read` serves)."""
        return None


class MemoryLookupReader(LookupReader):
    """Serves snapshot tables held in memory (tests): the newest row of each id."""

    def __init__(self, spec: FeatureSpec, tables: Mapping[str, pd.DataFrame]) -> None:
        self.spec, self.requests = spec, 0
        self.rows: dict[str, dict[int, tuple[int, np.ndarray]]] = {}
        for entity in lookup_entities(spec):
            table = tables[entity.name].sort_values(EVENT_TIMESTAMP, kind="stable")
            names = spec.lookup_stored_names(entity)
            times = table[EVENT_TIMESTAMP].to_numpy("datetime64[ns]").view(np.int64)
            values = table[names].to_numpy(np.float64)
            ids = table[entity.key].to_numpy(np.int64)
            self.rows[entity.name] = {
                int(k): (int(t), v) for k, t, v in zip(ids, times, values, strict=True)
            }

    def scan(self, limit: int) -> dict[str, Scanned]:
        out = {}
        for entity in lookup_entities(self.spec):
            self.requests += 1
            rows = list(self.rows[entity.name].items())
            width = len(self.spec.lookup_stored_names(entity))
            kept = rows[:limit]
            out[entity.name] = Scanned(
                np.array([k for k, _ in kept], np.int64),
                np.array([t for _, (t, _) in kept], np.int64),
                np.array([v for _, (_, v) in kept], np.float64).reshape(len(kept), width),
                len(rows) > limit,
            )
        return out

    def read(self, ids: Mapping[str, np.ndarray]) -> dict[str, LookedUp]:
        self.requests += 1
        out = {}
        for entity in lookup_entities(self.spec):
            width = len(self.spec.lookup_stored_names(entity))
            keys = np.asarray(ids[entity.name], np.int64)
            found = np.zeros(len(keys), bool)
            as_of = np.zeros(len(keys), np.int64)
            values = np.full((len(keys), width), np.nan)
            for i, key in enumerate(keys.tolist()):
                row = self.rows[entity.name].get(key)
                if row is not None:
                    found[i], (as_of[i], values[i]) = True, row
            out[entity.name] = LookedUp(found, as_of, values)
        return out


class FeastLookupReader(LookupReader):
    """Reads the batch views of a Feast store: with our Bigtable online store every view of
    every id in one ``ReadRows`` (:meth:`BigtableOnlineStore.read_arrays`), with any other
    online store through its ``online_read``, one call per view."""

    def __init__(self, store: Any, spec: FeatureSpec) -> None:
        self.store, self.spec, self.requests = store, spec, 0
        self.views = {}
        for entity in lookup_entities(spec):
            name = batch_view_name(spec, entity)
            try:
                view = store.get_feature_view(name)
            except Exception as exc:  # Feast raises FeatureViewNotFoundException
                raise ValueError(
                    f"batch feature view {name!r} is not in the registry of project "
                    f"{store.config.project!r}: run `feast apply` with this code ({exc})"
                ) from exc
            got, expected = [f.name for f in view.features], spec.lookup_stored_names(entity)
            if got != expected:
                raise ValueError(
                    f"batch feature view {name!r} has features {got}, but preset "
                    f"{spec.name!r} has {expected}: run `feast apply` with this code"
                )
            self.views[entity.name] = view
        online = getattr(store._get_provider(), "online_store", None)  # no public accessor
        self._packed = online if hasattr(online, "read_arrays") else None

    def read(self, ids: Mapping[str, np.ndarray]) -> dict[str, LookedUp]:
        from streaming.store.bigtable.codec import row_keys

        entities = lookup_entities(self.spec)
        keys = {e.name: np.asarray(ids[e.name], np.int64) for e in entities}
        self.requests += 1
        if self._packed is None:
            return self._read_feast(keys)
        requests = [
            (self.views[e.name], row_keys([e.key], [keys[e.name].tolist()])) for e in entities
        ]
        answers = self._packed.read_arrays(self.store.config, requests)
        out = {}
        for entity, (present, event_us, values) in zip(entities, answers, strict=True):
            as_of = np.where(present, event_us * 1_000, 0).astype(np.int64)
            out[entity.name] = LookedUp(present.astype(bool), as_of, values)
        return out

    def scan(self, limit: int) -> dict[str, Scanned] | None:
        if self._packed is None:
            return None
        out = {}
        for entity in lookup_entities(self.spec):
            self.requests += 1
            ids, present, event_us, values, truncated = self._packed.scan_arrays(
                self.store.config, self.views[entity.name], entity.key, limit
            )
            keep = present.astype(bool)
            out[entity.name] = Scanned(
                np.array(ids, np.int64)[keep], event_us[keep] * 1_000, values[keep], truncated
            )
        return out

    def _read_feast(self, keys: dict[str, np.ndarray]) -> dict[str, LookedUp]:
        """Any online store, through its ``online_read`` (the Feast ``OnlineStore`` contract:
        the newest row whatever its age), once per entity's batch view."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        online = self.store._get_provider().online_store  # no public accessor
        out = {}
        for entity in lookup_entities(self.spec):
            view, names = self.views[entity.name], self.spec.lookup_stored_names(entity)
            protos = [
                EntityKey(join_keys=[entity.key], entity_values=[Value(int64_val=k)])
                for k in keys[entity.name].tolist()
            ]
            rows = online.online_read(self.store.config, view, protos, names)
            n = len(protos)
            found = np.zeros(n, bool)
            as_of = np.zeros(n, np.int64)
            values = np.full((n, len(names)), np.nan)
            for i, (event_ts, features) in enumerate(rows):
                if features is None:
                    continue
                found[i] = True
                stamp = pd.Timestamp(event_ts)
                if stamp.tzinfo is not None:  # Feast's naive convention is UTC
                    stamp = stamp.tz_convert("UTC").tz_localize(None)
                as_of[i] = stamp.value
                for j, name in enumerate(names):
                    value = features.get(name)
                    if value is not None and value.HasField("double_val"):
                        values[i, j] = value.double_val
            out[entity.name] = LookedUp(found, as_of, values)
        return out


@functools.lru_cache(maxsize=8)
def shared_lookup_reader(preset: str, settings: StoreSettings) -> FeastLookupReader:
    """One reader per process and settings, shared by the stage's DoFns (opening a Feast store
    costs seconds; the DirectRunner sets up a new DoFn for every bundle)."""
    from features import presets

    return FeastLookupReader(settings.feature_store(), presets.get(preset))
