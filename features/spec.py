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
import math
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


@dataclass(frozen=True)
class AmountProfile:
    """A batch feature: the customer's habits over a long window, served from the feature store.

    Computed once a day by the batch job for each customer (``features.batch``), as of
    midnight ``D`` from the customer's transactions in ``[D - window, D)``: their number, the
    amount's median and median absolute deviation, the usual hour of day (circular mean) and
    how spread the hours are (``1 -`` the mean resultant length: 0 = always the same hour, 1 =
    uniform). The stream looks the row up and computes the transaction's deviation from it:
    ``(amount - median) / (MAD + 1)`` and the circular distance in hours from the usual hour.
    """

    window: timedelta = timedelta(days=90)
    entity: Entity = CUSTOMER

    def stored_names(self) -> list[str]:
        w = duration_label(self.window)
        key = f"{self.entity.key}_PROFILE"
        return [
            f"{key}_NB_TX_{w}",
            f"{key}_MEDIAN_AMOUNT_{w}",
            f"{key}_MAD_AMOUNT_{w}",
            f"{key}_USUAL_HOUR_{w}",
            f"{key}_HOUR_SPREAD_{w}",
        ]

    def derived_names(self) -> list[str]:
        w = duration_label(self.window)
        return [f"TX_AMOUNT_PROFILE_DEVIATION_{w}", f"TX_HOUR_PROFILE_DEVIATION_{w}"]

    @property
    def columns(self) -> tuple[Column, ...]:
        """Source columns the batch job reads."""
        return (AMOUNT,)

    def periodic_names(self) -> list[str]:
        """Derived names that follow the time of day (like ``TX_HOUR``): the hour deviation."""
        return self.derived_names()[1:]

    @property
    def defaults(self) -> tuple[float, ...]:
        """Values of a customer with no transaction in the window (or none stored)."""
        return (0.0, math.nan, math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class CompromiseScore:
    """A batch feature: the terminal's common-point-of-compromise score, from the store.

    Computed once a day for each terminal as of midnight ``D``: among the cards that used the
    terminal in ``[D - window, D)``, the share with a fraud at or after their first use there
    that is known at ``D`` (its transaction is at least the spec's label delay old), and their
    number. A population feature: it needs every card's labels, which no entity state holds.
    """

    window: timedelta = timedelta(days=28)
    entity: Entity = TERMINAL

    def stored_names(self) -> list[str]:
        w = duration_label(self.window)
        return [f"{self.entity.key}_CPC_NB_CARDS_{w}", f"{self.entity.key}_CPC_SCORE_{w}"]

    def derived_names(self) -> list[str]:
        return []

    @property
    def columns(self) -> tuple[Column, ...]:
        """Source columns the batch job reads (and the card id: ``CUSTOMER``'s key)."""
        return (FRAUD,)

    def periodic_names(self) -> list[str]:
        return []

    @property
    def defaults(self) -> tuple[float, ...]:
        """Values of a terminal no card used in the window (or none stored)."""
        return (0.0, 0.0)


Lookup = AmountProfile | CompromiseScore
"""A batch feature: computed daily from the history, materialized into the online store and
looked up by the stream (``EnrichFromFeatureStore``); joined point-in-time for training."""

BATCH_CADENCE = DAY
"""Batch features are computed as of each midnight; a transaction at ``t`` uses the values as
of ``t``'s midnight (the materialization before it)."""


class Calendar(StrEnum):
    """Calendar features of the event time (naive, one time zone)."""

    WEEKEND = "TX_DURING_WEEKEND"  # Saturday or Sunday
    NIGHT = "TX_DURING_NIGHT"  # hour <= 6
    HOUR = "TX_HOUR"


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs, in order: raw columns, calendar, per-entity features, ratios, then
    the looked-up batch features (stored values, then the deviations the stream derives)."""

    name: str
    raw: tuple[Column, ...] = (AMOUNT,)
    calendar: tuple[Calendar, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    since_previous: tuple[SincePrevious, ...] = ()
    ratios: tuple[Ratio, ...] = ()
    label_delay: timedelta = timedelta(days=7)
    entities: tuple[Entity, ...] = field(default=(CUSTOMER, TERMINAL))
    lookups: tuple[Lookup, ...] = field(default=(), repr=False)
    """Batch features looked up from the feature store; their columns come last."""

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
        for lookup in self.lookups:
            if lookup.entity not in self.entities:
                raise ValueError(f"{lookup}: entity {lookup.entity.name!r} is not in the spec")
            if lookup.window <= timedelta(0) or to_ns(lookup.window) % to_ns(BATCH_CADENCE):
                raise ValueError(f"{lookup}: window must be a positive number of days")
            if isinstance(lookup, CompromiseScore) and CUSTOMER not in self.entities:
                raise ValueError(f"{lookup}: needs the card entity {CUSTOMER.name!r}")
        if len({(type(k), k.entity) for k in self.lookups}) < len(self.lookups):
            raise ValueError("one lookup of a kind per entity (their views would collide)")
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
        return self.stream_names + self.lookup_names

    @cached_property
    def stream_names(self) -> list[str]:
        """The features the kernels compute (all but the lookups), first in model order."""
        return (
            [c.name for c in self.raw]
            + [c.value for c in self.calendar]
            + [n for e in self.entities for n in self.entity_names(e)]
            + [r.name(self.label_delay) for r in self.ratios]
        )

    @cached_property
    def label_names(self) -> list[str]:
        """The stream features aggregated over a label column (and ratios to them). Whether a
        label reaches the stream before or after a transaction can change these; it cannot
        change any other feature."""
        aggs = [a for a in self.aggregates if a.column.is_label]
        return [a.name(self.label_delay) for a in aggs] + [
            r.name(self.label_delay) for r in self.ratios if r.aggregate in aggs
        ]

    @cached_property
    def lookup_names(self) -> list[str]:
        """The looked-up features, after the stream's: each lookup's stored values, then every
        lookup's derived deviations."""
        stored = [n for k in self.lookups for n in k.stored_names()]
        return stored + [n for k in self.lookups for n in k.derived_names()]

    def entity_lookups(self, entity: Entity) -> tuple[Lookup, ...]:
        return tuple(k for k in self.lookups if k.entity == entity)

    def lookup_stored_names(self, entity: Entity) -> list[str]:
        """The values of ``entity``'s batch view (its lookups' stored names), in model order."""
        return [n for k in self.entity_lookups(entity) for n in k.stored_names()]

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
        cols |= {c.name for k in self.lookups for c in k.columns}
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
        fields = {"names": self.names, "spec": repr(self)}
        if self.lookups:  # not in repr: the fingerprints of specs without lookups stay as they were
            fields["lookups"] = repr(self.lookups)
        doc = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]
