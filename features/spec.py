"""One declarative feature spec: entity-keyed, event-time windowed aggregates and derived features.

Everything downstream (backfill, incremental state, the model's input order, the Feast views)
is derived from a :class:`FeatureSpec`; feature names are generated here and nowhere else.

Window semantics, for an event at time ``t`` of entity ``e``:

* an aggregate with window ``w`` and no delay covers ``e``'s events with time in ``(t - w, t]``
  that arrived no later than the event itself (the event is included; a later-arriving event
  with the same timestamp is not);
* with a delay ``d`` it covers events with time in ``(t - d - w, t - d]``. Label columns may only
  be aggregated with a delay: a label is used once it is ``d`` old, as in production where fraud
  labels arrive late.

Empty windows give ``0`` for count, sum, mean and std and ``NaN`` for min and max. ``std`` is the
population standard deviation (``ddof=0``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from functools import cached_property


class Op(StrEnum):
    """A windowed aggregation."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    STD = "std"
    MIN = "min"
    MAX = "max"


@dataclass(frozen=True)
class Entity:
    """An entity the features are keyed by: ``key`` is the id column, ``name`` its Feast name."""

    name: str
    key: str


@dataclass(frozen=True)
class Column:
    """A numeric source column. A label column (the fraud flag) is only known later."""

    name: str
    alias: str
    is_label: bool = False


CUSTOMER = Entity("customer", "CUSTOMER_ID")
TERMINAL = Entity("terminal", "TERMINAL_ID")
AMOUNT = Column("TX_AMOUNT", "AMOUNT")
FRAUD = Column("TX_FRAUD", "FRAUD", is_label=True)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEFAULT_MAX_LATENESS = DAY
"""How much older than its entity's newest event a transaction may be and still be applied
(``LATE``); older ones are refused (``TOO_LATE``). The default of the job, bootstrap and engine."""

_NS = {"DAY": 86_400 * 10**9, "HOUR": 3_600 * 10**9, "MIN": 60 * 10**9, "SEC": 10**9}


def duration_label(d: timedelta) -> str:
    """``timedelta(days=7)`` -> ``"7DAY"``, ``timedelta(hours=1)`` -> ``"1HOUR"``."""
    ns = to_ns(d)
    for unit, size in _NS.items():
        if ns % size == 0:
            return f"{ns // size}{unit}"
    raise ValueError(f"duration {d} is not a whole number of seconds")


def to_ns(d: timedelta) -> int:
    """A duration in integer nanoseconds (the engine's time unit)."""
    return (d.days * 86_400 + d.seconds) * 10**9 + d.microseconds * 1_000


@dataclass(frozen=True)
class Aggregate:
    """``op`` over ``column`` of ``entity``'s events in a window, optionally delayed."""

    entity: Entity
    op: Op
    window: timedelta
    column: Column = AMOUNT
    delay: timedelta = timedelta(0)
    # Count a label as soon as it arrives (investigator feedback) instead of after ``delay``:
    # only the stream knows when labels arrive, so the backfill refuses such aggregates.
    known_only: bool = False

    def stat(self) -> str:
        """The statistic part of the name, in the handbook's style (``NB_TX``, ``AVG_AMOUNT``)."""
        if self.op is Op.COUNT:
            return "NB_TX"
        if self.op is Op.MEAN and self.column.is_label:
            return "RISK"  # the handbook's name for the delayed fraud rate
        prefix = {Op.SUM: "SUM", Op.MEAN: "AVG", Op.STD: "STD", Op.MIN: "MIN", Op.MAX: "MAX"}
        return f"{prefix[self.op]}_{self.column.alias}"

    def name(self, label_delay: timedelta) -> str:
        """Generated name; the delay shows only when it differs from the spec's label delay."""
        known = "KNOWN_" if self.known_only else ""
        base = f"{self.entity.key}_{known}{self.stat()}_{duration_label(self.window)}_WINDOW"
        if self.delay and self.delay != label_delay:
            base += f"_DELAY_{duration_label(self.delay)}"
        return base


@dataclass(frozen=True)
class SincePrevious:
    """Seconds since the entity's previous event (``NaN`` for its first)."""

    entity: Entity

    def name(self) -> str:
        return f"{self.entity.key}_SECONDS_SINCE_PREV_TX"


@dataclass(frozen=True)
class Ratio:
    """``column`` of the event divided by an aggregate of the spec (``NaN`` when that is 0)."""

    aggregate: Aggregate
    column: Column = AMOUNT

    def name(self, label_delay: timedelta) -> str:
        return f"{self.column.name}_TO_{self.aggregate.name(label_delay)}"


class Calendar(StrEnum):
    """Calendar features of the event time (naive, one time zone)."""

    WEEKEND = "TX_DURING_WEEKEND"  # Saturday or Sunday
    NIGHT = "TX_DURING_NIGHT"  # hour <= 6
    HOUR = "TX_HOUR"


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs, in order: raw columns, calendar, per-entity features, ratios."""

    name: str
    raw: tuple[Column, ...] = (AMOUNT,)
    calendar: tuple[Calendar, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    since_previous: tuple[SincePrevious, ...] = ()
    ratios: tuple[Ratio, ...] = ()
    label_delay: timedelta = timedelta(days=7)
    entities: tuple[Entity, ...] = field(default=(CUSTOMER, TERMINAL))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending feature if the spec is inconsistent."""
        for agg in self.aggregates:
            name = agg.name(self.label_delay)
            if agg.entity not in self.entities:
                raise ValueError(f"{name}: entity {agg.entity.name!r} is not in the spec")
            if agg.window <= timedelta(0):
                raise ValueError(f"{name}: window must be positive, got {agg.window}")
            if agg.delay < timedelta(0):
                raise ValueError(f"{name}: delay must be >= 0, got {agg.delay}")
            if agg.column.is_label and not agg.delay and not agg.known_only:
                raise ValueError(f"{name}: label column {agg.column.name} needs a delay (leakage)")
            if agg.known_only and not agg.column.is_label:
                raise ValueError(f"{name}: known_only applies to label columns only")
        for ratio in self.ratios:
            if ratio.aggregate not in self.aggregates:
                raise ValueError(
                    f"{ratio.name(self.label_delay)}: its aggregate is not in the spec"
                )
            if ratio.column.is_label:
                raise ValueError(f"{ratio.name(self.label_delay)}: a label cannot be a ratio input")
        for raw in self.raw:
            if raw.is_label:
                raise ValueError(f"raw column {raw.name} is a label (leakage)")
        names = self.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names are not unique: {dupes}")

    @cached_property
    def names(self) -> list[str]:
        """Every feature name, in model-input order (do not mutate the list)."""
        return (
            [c.name for c in self.raw]
            + [c.value for c in self.calendar]
            + [n for e in self.entities for n in self.entity_names(e)]
            + [r.name(self.label_delay) for r in self.ratios]
        )

    def entity_aggregates(self, entity: Entity) -> tuple[Aggregate, ...]:
        return tuple(a for a in self.aggregates if a.entity == entity)

    def entity_since_previous(self, entity: Entity) -> bool:
        return any(s.entity == entity for s in self.since_previous)

    def entity_names(self, entity: Entity) -> list[str]:
        """Names of the features computed in ``entity``'s state, in kernel output order."""
        names = [a.name(self.label_delay) for a in self.entity_aggregates(entity)]
        if self.entity_since_previous(entity):
            names.append(SincePrevious(entity).name())
        return names

    def entity_columns(self, entity: Entity) -> tuple[Column, ...]:
        """Source columns ``entity``'s state must buffer (amount first, then labels)."""
        cols = {a.column for a in self.entity_aggregates(entity)}
        return tuple(sorted(cols, key=lambda c: (c.is_label, c.name)))

    def horizon(self, entity: Entity) -> timedelta:
        """How far back ``entity``'s state must reach: the longest window plus its delay."""
        aggs = self.entity_aggregates(entity)
        return max((a.window + a.delay for a in aggs), default=timedelta(0))

    @property
    def value_columns(self) -> list[str]:
        """Numeric event columns the features read (raw, ratio numerators, aggregate sources)."""
        cols = {c.name for c in self.raw} | {r.column.name for r in self.ratios}
        return sorted(cols | {a.column.name for a in self.aggregates})

    @property
    def input_columns(self) -> list[str]:
        """Columns an input table must have to compute this spec."""
        cols = {"TRANSACTION_ID", "TX_DATETIME"} | {e.key for e in self.entities}
        return sorted(cols | set(self.value_columns))

    @property
    def needs_label_arrivals(self) -> bool:
        """True when some feature counts labels as they arrive (computable by the stream only)."""
        return any(a.known_only for a in self.aggregates)

    def fingerprint(self) -> str:
        """A stable hash of the spec: a model trained on one spec refuses another."""
        doc = json.dumps({"names": self.names, "spec": repr(self)}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]
