"""Backfill: a whole history in, every feature of every event out, as seen at its own time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

import numba
import numpy as np
import pandas as pd

from features import kernels, sweep
from features.batch import lookup_columns
from features.plan import EntityPlan, fill_ratios, fill_raw_and_calendar
from features.spec import FeatureSpec
from features.table import event_times_ns

_PARALLEL_EVENTS = 1 << 16  # below this, starting threads costs more than the sweeps


def group_keys(ids: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(keys, lo, n_groups)``: each row's group is ``keys - lo``, in ``range(n_groups)``.

    Ids spanning a range not much wider than their count are their own keys (a group per
    value in the range, empty ones cost nothing); others are factorized.
    """
    ids = np.ascontiguousarray(ids, np.int64)
    if len(ids) == 0:
        return ids, 0, 0
    lo, hi = (int(x) for x in kernels.value_range(ids))
    if hi - lo < len(ids) + 65_536:
        return ids, lo, hi - lo + 1
    codes, uniques = pd.factorize(ids)
    return codes.astype(np.int64), 0, len(uniques)


def compute(
    spec: FeatureSpec,
    times: np.ndarray,
    txids: np.ndarray,
    ids: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
    beside: Sequence[tuple[float, Task]] = (),
) -> np.ndarray:
    """Feature matrix (rows = events, columns = ``spec.names``, column-major) from column arrays.

    ``ids`` maps entity key columns to ids, ``values`` numeric columns to float64 values;
    ``beside``: more work for the sweeps' threads (:meth:`Sweeps.add_task`). Each
    entity's events are taken in (time, transaction id) order: the id is the arrival order.
    Windows :mod:`features.sweep` can do are swept over the history in time order; the others
    (scans, delayed sums that are not exact) walk each entity's events, grouped by a sort.
    """
    if spec.needs_label_arrivals:
        raise ValueError(
            f"spec {spec.name} has features that count labels when they arrive (known_only): "
            "a history without label arrival times cannot give them; use features.stream"
        )
    n = len(times)
    out = np.empty((n, len(spec.names)), np.float64, order="F")  # column writes stay sequential
    plans = [p for p in (EntityPlan.build(spec, e) for e in spec.entities) if p.n_out]
    in_order = kernels.in_order(times, txids)
    order = np.empty(0, np.int64) if in_order else np.lexsort((txids, times))
    sweeps = Sweeps(times, order, values)
    grouped = []
    for plan in plans:
        keys, lo, n_groups = group_keys(ids[plan.entity.key])
        walks = sweeps.add(plan, keys, lo, n_groups)
        if len(walks):
            grouped.append((plan, walks, keys, lo, n_groups))
    if grouped:
        walk_grouped(grouped, times, order, values, out)
    # the raw and calendar columns read no other: they run beside the sweeps, on one thread
    sweeps.add_task(0.3, lambda out, _: fill_raw_and_calendar(spec, out, times, values, False))
    for cost, task in beside:
        sweeps.add_task(cost, task)
    sweeps.run(out)
    fill_ratios(spec, out, values)
    return out


def walk_grouped(
    grouped: list[tuple[EntityPlan, np.ndarray, np.ndarray, int, int]],
    times: np.ndarray,
    order: np.ndarray,
    values: dict[str, np.ndarray],
    out: np.ndarray,
) -> None:
    """The walks :mod:`features.sweep` cannot do: each entity's events grouped, then walked."""
    n = len(times)
    compact = [_scratch_columns(walks) for _, walks, *_ in grouped]
    # scratch shared by the entities (fresh memory is costly: see kernels.backfill_entity)
    tv, rows = np.empty(n, np.int64), np.empty(n, np.int64)
    blk = np.empty(n * max(len(features) for _, features in compact))
    vv_all = np.empty(n * max(p.n_cols for p, *_ in grouped))
    for (plan, _, keys, lo, n_groups), (walks, features) in zip(grouped, compact, strict=True):
        cols = [values[c] for c in plan.columns] or [np.zeros(n)]
        vals = np.ascontiguousarray(np.column_stack(cols), np.float64)
        vv = vv_all[: vals.size].reshape(vals.shape)
        starts = kernels.group_rows(
            keys, lo, n_groups, order, times, vals, tv, vv, rows, numba.get_num_threads()
        )
        scratch = blk[: n * len(features)].reshape(n, len(features))
        columns = plan.offset + features
        kernels.backfill_entity(
            starts, tv, vv, rows, plan.win, plan.dly, walks, scratch, out, columns
        )


def _scratch_columns(walks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``walks`` with their features renumbered 0, 1, ... (the scratch's columns, only those
    the walks write), and the feature each scratch column holds."""
    features = np.unique(walks[:, 3:])
    features = features[features >= 0]
    renumbered = walks.copy()
    written = walks[:, 3:] >= 0
    renumbered[:, 3:][written] = np.searchsorted(features, walks[:, 3:][written])
    return renumbered, features


Task = Callable[[np.ndarray, np.ndarray | None], None]  # task(out, rows)


def _into_columns(kernel: Callable[..., None], cols: Sequence[int]) -> Task:
    """The task of a sweep ``kernel(*columns, rows)``: each column of ``out`` it writes (an
    index, or -1: None, not asked for)."""

    def task(out: np.ndarray, rows: np.ndarray | None) -> None:
        kernel(*(out[:, c] if c >= 0 else None for c in cols), rows)

    return task


@dataclass(frozen=True)
class _Sweep:
    """A task of :class:`Sweeps`: ``run(out, rows)``, then its follow-ups (which may run at
    once, on any thread). ``cost``: its time in plain sweeps (a compensated one is 1.1)."""

    cost: float
    run: Task
    then: tuple[_Sweep, ...] = ()

    @property
    def priority(self) -> float:
        """Its cost and that of its costliest chain of follow-ups: the longest go first."""
        return self.cost + max((t.priority for t in self.then), default=0.0)

    @property
    def size(self) -> int:
        """How many tasks: this one and its follow-ups."""
        return 1 + sum(t.size for t in self.then)


class Sweeps:
    """The sweeps of one backfill (:mod:`features.sweep`), collected per entity, then run on
    the kernels' threads (each sweep is one pass; they release the GIL)."""

    def __init__(self, times: np.ndarray, order: np.ndarray, values: dict[str, np.ndarray]):
        self._rows = order if len(order) else None  # event p's output row (None: p)
        self._times = self._in_time_order(times)
        self._values = values
        self._sorted: dict[str, np.ndarray] = {}
        self._exact: dict[str, bool] = {}
        self._tasks: list[_Sweep] = []

    def _in_time_order(self, array: np.ndarray) -> np.ndarray:
        """``array`` (one value per input row) in the sweeps' (time, id) order."""
        return array if self._rows is None else array[self._rows]

    def _column(self, name: str) -> np.ndarray:
        if name not in self._sorted:
            column = np.ascontiguousarray(self._values[name], np.float64)
            self._sorted[name] = self._in_time_order(column)
        return self._sorted[name]

    def _is_exact(self, name: str) -> bool:
        if name not in self._exact:
            self._exact[name] = bool(sweep.exact_sums(self._column(name)))
        return self._exact[name]

    def add(self, plan: EntityPlan, keys: np.ndarray, lo: int, n_groups: int) -> np.ndarray:
        """Take the walks of ``plan`` a sweep can do; returns the others (rows of its walks)."""
        keys = self._in_time_order(keys)
        group = (self._times, keys, lo, n_groups)
        rest, delayed = [], {}
        for walk in plan.walks:
            s, c, scans = int(walk[0]), int(walk[1]), bool(walk[2])
            f = [int(x) for x in walk[3:]]
            summing = not scans and (f[1] >= 0 or f[2] >= 0)
            column = plan.columns[c] if summing else ""
            exact = summing and self._is_exact(column)
            window, delay = int(plan.win[s]), int(plan.dly[s])
            if scans or (delay and summing and not exact):
                rest.append(walk)
                continue
            cols = [plan.offset + x if x >= 0 else -1 for x in f]
            if delay:  # windows of one delay and column share what entered them
                delayed.setdefault((delay, column), []).append((window, cols))
                continue
            vals = self._column(column) if summing else None
            task = _into_columns(partial(sweep.recent, *group, vals, window, exact), cols)
            self._tasks.append(_Sweep(1.1 if summing and not exact else 1.0, task))
        for (delay, column), windows in delayed.items():
            vals = self._column(column) if column else None
            self._tasks.append(self._delayed(group, vals, delay, windows))
        if plan.since_prev:
            col = plan.offset + len(plan.fslot)
            task = _into_columns(partial(sweep.since_previous, *group), [col])
            self._tasks.append(_Sweep(0.5, task))
        return np.array(rest, np.int64).reshape(-1, plan.walks.shape[1])

    @staticmethod
    def _delayed(
        group: tuple[np.ndarray, np.ndarray, int, int],
        vals: np.ndarray | None,
        delay: int,
        windows: list[tuple[int, list[int]]],
    ) -> _Sweep:
        """Windows of one delay (``(window, output columns)``): what entered, then the windows
        two by two (:func:`features.sweep.delayed_pair`; a follow-up task per pair)."""
        n = len(group[0])
        counts, sums = np.empty(n), np.empty(n if vals is not None else 0)
        common = (*group, vals)
        then = []
        for i in range(0, len(windows), 2):
            pair = windows[i : i + 2]
            if len(pair) == 2:
                (window_a, cols_a), (window_b, cols_b) = pair
                kernel = partial(
                    sweep.delayed_pair, *common, delay, counts, sums, window_a, window_b
                )
                then.append(_Sweep(1.5, _into_columns(kernel, [*cols_a, *cols_b])))
            else:
                ((window, cols),) = pair
                kernel = partial(sweep.delayed, *common, window, delay, counts, sums)
                then.append(_Sweep(1.0, _into_columns(kernel, cols)))
        entered = partial(sweep.entered, *common, delay, counts, sums)
        return _Sweep(1.0, lambda out, rows: entered(), tuple(then))

    def add_task(self, cost: float, task: Task) -> None:
        """Run ``task(out, rows)`` beside the sweeps (it must write only columns they do not);
        ``cost``: its time in plain sweeps (the costliest tasks start first)."""
        self._tasks.append(_Sweep(cost, task))

    def run(self, out: np.ndarray) -> None:
        """Run every sweep into ``out``, the longest chains first."""
        ready = sorted(self._tasks, key=lambda t: -t.priority)
        threads = min(numba.get_num_threads(), sum(t.size for t in ready))
        if threads <= 1 or len(self._times) < _PARALLEL_EVENTS:
            while ready:
                task = ready.pop(0)
                task.run(out, self._rows)
                ready[:0] = task.then
            return
        with ThreadPoolExecutor(threads) as pool:
            running: dict[Future, _Sweep] = {}
            while ready or running:
                while ready and len(running) < threads:  # submitted only once a thread is free
                    task = ready.pop(0)
                    running[pool.submit(task.run, out, self._rows)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    ready.extend(running.pop(future).then)
                ready.sort(key=lambda t: -t.priority)


def backfill(
    df: pd.DataFrame, spec: FeatureSpec, lookups: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """Features of every row of ``df`` (validated by :func:`features.table.validate`).

    Returns a frame with ``TRANSACTION_ID`` and one float64 column per ``spec.names``, in the
    row order of ``df``. Labels are taken as known: delayed aggregates use them once they are
    ``delay`` old, exactly what the stream sees when each label arrives within its delay.
    The spec's batch features are joined point in time from ``lookups`` (snapshot tables,
    :func:`features.batch.snapshots`; default: those of ``df`` itself).
    """
    times = event_times_ns(df)
    txids = df["TRANSACTION_ID"].to_numpy(np.int64)
    ids = {e.key: df[e.key].to_numpy(np.int64) for e in spec.entities}
    values = {c: df[c].to_numpy(np.float64) for c in spec.value_columns}
    txid_column = np.empty_like(txids)  # the frame's own copy, written beside the sweeps
    copy_ids = (0.1, lambda out, rows: np.copyto(txid_column, txids))
    matrix = compute(spec, times, txids, ids, values, beside=[copy_ids])
    if spec.lookups:
        matrix[:, len(spec.stream_names) :] = lookup_columns(df, spec, lookups)
    return as_frame(df.index, txid_column, matrix, spec.names)


def as_frame(
    index: pd.Index, txids: np.ndarray, matrix: np.ndarray, names: Sequence[str]
) -> pd.DataFrame:
    """``TRANSACTION_ID`` then the feature columns, in two blocks that are ``txids`` and
    ``matrix`` themselves (no copy of either)."""
    ids_frame = pd.DataFrame({"TRANSACTION_ID": txids}, index=index, copy=False)
    features = pd.DataFrame(matrix, columns=list(names), index=index, copy=False)
    return pd.concat([ids_frame, features], axis=1, copy=False)
