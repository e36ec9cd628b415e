"""The online store's contract: a narrow reader and writer, and the batches they exchange.

Implementations batch: one online-store round trip per :meth:`read` or :meth:`write` call,
whatever the number of events or entities. Event times are naive UTC (Feast's convention).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from features.spec import Entity, FeatureSpec
from streaming.store.names import stored_entities


@dataclass(frozen=True)
class EntityBatch:
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
                f"EntityBatch({self.entity.name}): {n} ids, {len(self.event_times)} times, "
                f"values of shape {self.values.shape}"
            )


@dataclass(frozen=True)
class OnlineFeatures:
    """What a read returns, one row per requested entity row."""

    columns: list[str]
    """Every entity feature of the spec, in model order."""
    values: np.ndarray
    """float64 (n, len(columns)); NaN where the entity has no live value."""
    found: dict[str, np.ndarray]
    """Entity name -> bool (n,): False where the store has no live (unexpired) row."""


class OnlineFeatureWriter(ABC):
    """Stores each entity's newest feature values."""

    rpc_counts: Callable[[], Mapping[str, int]] | None = None
    """What the store's client sent in this process (e.g. Bigtable calls and rows), read for
    the job's totals line; None when the store counts nothing. One function per process."""

    @abstractmethod
    def write(self, batches: Sequence[EntityBatch]) -> None:
        """Store every row in one round trip; a row older than the stored one does not win."""


class OnlineFeatureReader(ABC):
    """Serves entity features for rows of entity keys."""

    @abstractmethod
    def read(self, keys: Mapping[str, np.ndarray]) -> OnlineFeatures:
        """Features of each row of ``keys`` (entity key column -> ids, equal lengths).

        One round trip for all rows and entities. An unknown or expired entity reads as NaN
        with ``found`` False; it never raises.
        """


def check_keys(spec: FeatureSpec, keys: Mapping[str, np.ndarray]) -> int:
    entities = stored_entities(spec)
    missing = [e.key for e in entities if e.key not in keys]
    if missing:
        raise ValueError(f"read: missing entity key columns {missing} (got {sorted(keys)})")
    lengths = {e.key: len(keys[e.key]) for e in entities}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"read: entity key columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)
