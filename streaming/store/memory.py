"""An in-memory online store with the Bigtable store's semantics, for unit tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from features.spec import FeatureSpec
from streaming.store.base import (
    EntityBatch,
    OnlineFeatureReader,
    OnlineFeatures,
    OnlineFeatureWriter,
    check_keys,
)
from streaming.store.names import feature_ttl, stored_entities


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

    def write(self, batches: Sequence[EntityBatch]) -> None:
        self.round_trips += 1
        for batch in batches:
            for i, t, row in zip(batch.ids.tolist(), batch.event_times, batch.values, strict=True):
                key = (batch.entity.name, i)
                current = self._rows.get(key)
                if current is None or current[0] <= t:
                    self._rows[key] = (t, row.copy())

    def read(self, keys: Mapping[str, np.ndarray]) -> OnlineFeatures:
        self.round_trips += 1
        n = check_keys(self.spec, keys)
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
        return OnlineFeatures(columns, values, found)
