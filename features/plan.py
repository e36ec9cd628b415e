"""A spec compiled to the arrays the kernels take, and the vectorised parts (calendar, ratios)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import numpy as np

from features import kernels
from features.spec import Calendar, Entity, FeatureSpec, Op, to_ns

_OP_CODES = {
    Op.COUNT: kernels.OP_COUNT,
    Op.SUM: kernels.OP_SUM,
    Op.MEAN: kernels.OP_MEAN,
    Op.STD: kernels.OP_STD,
    Op.MIN: kernels.OP_MIN,
    Op.MAX: kernels.OP_MAX,
}


@dataclass(frozen=True, eq=False)
class EntityPlan:
    """One entity's aggregates as kernel arrays (slots = distinct (window, delay) pairs)."""

    entity: Entity
    names: list[str]
    columns: list[str]  # source columns buffered in the state, in ``vals`` order
    label_cols: np.ndarray  # indices into ``columns`` that are labels
    win: np.ndarray
    dly: np.ndarray
    fslot: np.ndarray
    fcol: np.ndarray
    fop: np.ndarray
    since_prev: bool
    horizon_ns: int
    offset: int  # column of this entity's first feature in ``spec.names``

    @classmethod
    def build(cls, spec: FeatureSpec, entity: Entity) -> EntityPlan:
        aggs = spec.entity_aggregates(entity)
        cols = spec.entity_columns(entity)
        slots: list[tuple[int, int]] = []
        fslot, fcol, fop = [], [], []
        for agg in aggs:
            key = (to_ns(agg.window), to_ns(agg.delay))
            if key not in slots:
                slots.append(key)
            fslot.append(slots.index(key))
            fcol.append(cols.index(agg.column))
            fop.append(_OP_CODES[agg.op])
        return cls(
            entity=entity,
            names=spec.entity_names(entity),
            columns=[c.name for c in cols],
            label_cols=np.array([i for i, c in enumerate(cols) if c.is_label], np.int64),
            win=np.array([w for w, _ in slots], np.int64),
            dly=np.array([d for _, d in slots], np.int64),
            fslot=np.array(fslot, np.int64),
            fcol=np.array(fcol, np.int64),
            fop=np.array(fop, np.int64),
            since_prev=spec.entity_since_previous(entity),
            horizon_ns=to_ns(spec.horizon(entity)),
            offset=spec.names.index(spec.entity_names(entity)[0])
            if spec.entity_names(entity)
            else 0,
        )

    @property
    def n_out(self) -> int:
        return len(self.names)

    @property
    def n_cols(self) -> int:
        """Value columns of the entity's state (one even without any to aggregate)."""
        return max(len(self.columns), 1)

    @cached_property
    def walks(self) -> np.ndarray:
        """The features grouped as the kernels compute them (:func:`kernels.feature_walks`)."""
        return kernels.feature_walks(len(self.win), self.n_cols, self.fslot, self.fcol, self.fop)

    @cached_property
    def summed(self) -> np.ndarray:
        """Which (slot, column) running sums the features read (:func:`kernels.summed_columns`)."""
        return kernels.summed_columns(self.walks, len(self.win), self.n_cols)

    @cached_property
    def extras_at(self) -> np.ndarray:
        """Where each (slot, column)'s extras are in a state row (:func:`kernels.extras_at`)."""
        return kernels.extras_at(self.walks, len(self.win), self.n_cols)

    @cached_property
    def n_extras(self) -> int:
        """How many (slot, column)s keep extras (those with std, min or max features)."""
        return int((self.extras_at >= 0).sum())

    @cached_property
    def state_shape(self) -> tuple[int, int]:
        """Words of an exported state before its buffered events (:func:`kernels.row_width`),
        and words per buffered event."""
        return kernels.row_width(len(self.win), self.n_cols, self.n_extras, 0), 2 + self.n_cols


_CALENDAR_CODES = {Calendar.WEEKEND: 0, Calendar.NIGHT: 1, Calendar.HOUR: 2}
_PARALLEL_ROWS = 1 << 16  # below this, starting threads costs more than it saves


def calendar(kind: Calendar, times_ns: np.ndarray) -> np.ndarray:
    """Calendar feature of naive event times in int64 ns since the epoch (a Thursday)."""
    times_ns = np.ascontiguousarray(times_ns, np.int64)
    out = np.empty((len(times_ns), 1), np.float64)
    kernels.calendar(np.array([_CALENDAR_CODES[kind]]), times_ns, out, 0)
    return out[:, 0]


@dataclass(frozen=True, eq=False)
class DerivedPlan:
    """A spec's raw, calendar and ratio columns as positions in its feature matrix."""

    raw: tuple[tuple[int, str], ...]  # (output column, source column)
    calendar_kinds: np.ndarray  # kernel codes, output columns from len(raw)
    ratio_columns: np.ndarray  # output column of each ratio
    denominator_columns: np.ndarray  # the output column each ratio divides by
    numerators: tuple[str, ...]  # the source column each ratio divides

    @classmethod
    def of(cls, spec: FeatureSpec) -> DerivedPlan:
        """The plan of ``spec``, built once per spec object (the stream asks per micro-batch)."""
        hit = _DERIVED.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        position = {name: i for i, name in enumerate(spec.names)}
        first = len(spec.stream_names) - len(spec.ratios)
        plan = cls(
            raw=tuple((j, col.name) for j, col in enumerate(spec.raw)),
            calendar_kinds=np.array([_CALENDAR_CODES[c] for c in spec.calendar], np.int64),
            ratio_columns=np.arange(first, first + len(spec.ratios), dtype=np.int64),
            denominator_columns=np.array(
                [position[r.aggregate.name(spec.label_delay)] for r in spec.ratios], np.int64
            ),
            numerators=tuple(r.column.name for r in spec.ratios),
        )
        _DERIVED[id(spec)] = (spec, plan)  # the spec is kept alive: its id is not reused
        return plan


_DERIVED: dict[int, tuple[FeatureSpec, DerivedPlan]] = {}


def fill_derived(
    spec: FeatureSpec, out: np.ndarray, times_ns: np.ndarray, raw: dict[str, np.ndarray]
) -> None:
    """Fill the raw, calendar and ratio columns of ``out`` (rows = events, columns = spec.names).

    The entity columns must already hold the kernels' output (see ``EntityPlan.offset``): ratios
    read them. Backfill and streaming both call this, so derived features are identical.
    """
    fill_raw_and_calendar(spec, out, times_ns, raw)
    fill_ratios(spec, out, raw)


def fill_raw_and_calendar(
    spec: FeatureSpec,
    out: np.ndarray,
    times_ns: np.ndarray,
    raw: dict[str, np.ndarray],
    parallel: bool = True,
) -> None:
    """The raw and calendar columns of :func:`fill_derived` (they read no other column);
    ``parallel=False`` keeps the calendar on the calling thread."""
    plan = DerivedPlan.of(spec)
    for j, name in plan.raw:
        out[:, j] = raw[name]
    many = parallel and len(times_ns) >= _PARALLEL_ROWS
    fill = kernels.calendar_parallel if many else kernels.calendar
    fill(plan.calendar_kinds, np.ascontiguousarray(times_ns, np.int64), out, len(plan.raw))


def fill_ratios(spec: FeatureSpec, out: np.ndarray, raw: dict[str, np.ndarray]) -> None:
    """The ratio columns of :func:`fill_derived`, from the entity columns already in ``out``."""
    plan = DerivedPlan.of(spec)
    if plan.numerators:
        numerators = value_rows(raw, plan.numerators, len(out))
        kernels.ratios(out, numerators, plan.ratio_columns, plan.denominator_columns)


def value_rows(values: dict[str, np.ndarray], names: Sequence[str], m: int) -> np.ndarray:
    """The columns ``names`` of ``values`` (``m`` values each) as the rows of one float64
    array, ``len(names)`` by ``m``."""
    return np.array([values[name] for name in names], np.float64).reshape(len(names), m)


def lateness_ns(max_lateness: timedelta) -> int:
    """Allowed lateness in ns; validated to be non-negative."""
    ns = to_ns(max_lateness)
    if ns < 0:
        raise ValueError(f"max_lateness must be >= 0, got {max_lateness}")
    return ns
