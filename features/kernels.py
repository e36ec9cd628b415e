"""Numba kernels shared by the backfill and the incremental (streaming) path.

One entity's history is a buffer of events sorted by (time, arrival): ``times`` (int64 ns),
``vals`` (float64, one column per source column). Each *slot* is one distinct (window, delay)
pair and keeps a half-open index range ``[start, end)`` of the events inside
``(t - delay - window, t - delay]`` plus compensated running sums of every column over it.
:func:`_step` moves one range and one column's sum forward for a new time ``t`` (two pointers,
O(1) amortised). The incremental path applies it to every slot and column of a bounded buffer
kept per entity (:func:`advance`, then :func:`emit`); the backfill applies it to a whole sorted
history, one (slot, column) at a time. Each sum sees the same floating-point operations in the
same order either way, hence bit-identical results. (The backfill sweeps the windows where a
time-ordered pass gives the same values, see :mod:`features.sweep`; these walks do the rest.)

Count, sum and mean come from the running sums. A (slot, column) with std, min or max features
also keeps running *extras* (:func:`_extend`): a compensated sum of squares, from which std
comes with the running sum (:func:`_std`), and the range's cached extremes, exact: a value
entering updates them, and one leaving that equals an extreme marks it unknown (NaN), to be
found again by a scan of the range (:func:`_extremes`) when a feature next reads it; about once
a window's length of events for the range's largest value. So an event reads the few buffered
events its ranges move over, not the whole window. A running sum only a count uses is not kept.

A state *row* (one entity, int64 words; float parts are viewed as float64) is laid out as::

    [n, cap, newest_time, format, start_0, end_0, ..., start_{S-1}, end_{S-1}]   header, 4 + 2S
    [sum, compensation] per (slot, column)                                   2 * S * C (float64)
    [squares, compensation, min, max] per (slot, column) with extras         4 * E (float64)
    [time, txid, vals[C] (float64)] per buffered event                       cap * (2 + C)

``format`` is :data:`STATE_FORMAT` (exported states carry it; :func:`migrate_row` converts a
state of format 0, which had no extras).

An event's fields share a cache line: the stream touches entities at random, and each of its
reads (a window's oldest event, the append, a label's transaction) is then one line, not three.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import as_strided

from features.borrow import borrowed
from features.prefetch import prefetch

# Ops up to OP_MEAN come from a range's count and running sum; the others from its extras.
OP_COUNT, OP_SUM, OP_MEAN, OP_STD, OP_MIN, OP_MAX = 0, 1, 2, 3, 4, 5
KIND_TX, KIND_LABEL, KIND_SKIP = 0, 1, 2  # SKIP: leave the event to other entities / callers

# Per-event status codes returned by the incremental kernel.
ST_OK = 0  # transaction scored in order
ST_LATE = 1  # transaction older than the entity's newest: inserted, values exact up to rounding
ST_TOO_LATE = 2  # transaction older than the allowed lateness: rejected, state unchanged
ST_LABEL_APPLIED = 3  # label matched a buffered transaction
ST_LABEL_EXPIRED = 4  # label's transaction is older than the buffer: ignored
ST_LABEL_UNMATCHED = 5  # label for a transaction this state has not seen (yet)
ST_LABEL_UNKNOWN_ENTITY = 6  # label for an entity without state (slot -1)
ST_LABEL_NOT_USED = 7  # no label-based feature in this entity's plan
ST_DUPLICATE = 8  # a transaction id this state already holds (at the same time): ignored

NO_TIME = np.iinfo(np.int64).min
HEADER = 4
STATE_FORMAT = 1  # header word 3; 0: the rows before extras (std, min, max scanned per event)
NS_PER_S = 1e9
# Unsigned positions for hot loops: Numba adds a negative-index fix-up to every signed index.
_U1, _U2, _U3, _U4 = (np.uint64(k) for k in range(1, 5))


def row_width(n_slots: int, n_cols: int, n_ext: int, cap: int) -> int:
    """Words (int64) in one state row with ``n_ext`` (slot, column) extras."""
    return _head.py_func(n_slots, n_cols, n_ext) + cap * (2 + n_cols)  # no dispatch from Python


@njit(cache=True, inline="always")
def _head(n_slots, n_cols, n_ext):
    """Words of a state row before its buffered events: header, sums and extras."""
    return HEADER + 2 * n_slots + 2 * n_slots * n_cols + 4 * n_ext


@njit(cache=True, inline="always")
def _kahan(total, comp, v):
    """Neumaier-compensated ``total + v``: returns the new (total, compensation)."""
    t = total + v
    if abs(total) >= abs(v):
        comp += (total - t) + v
    else:
        comp += (v - t) + total
    return t, comp


@njit(cache=True, inline="always")
def _kahan_add(acc, i, v):
    """``acc[i] += v`` compensated in ``acc[i + 1]`` (see :func:`_kahan`)."""
    t, comp = _kahan(acc[i], acc[i + 1], v)
    acc[i] = t
    acc[i + 1] = comp


@njit(cache=True, inline="always")
def _step(times, vals, c, n, hi, window_ns, b, e, total, comp):
    """Move one range ``[b, e)`` to the window ``(hi - window_ns, hi]`` over ``times[:n]``.

    ``total, comp`` is the compensated sum of column c over the range; returns the new
    ``(b, e, total, comp)``. Every caller (backfill, stream, one column or many) goes through
    here, so all of them do the same floating-point operations in the same order.
    """
    lo = hi - window_ns
    while b < e and times[b] <= lo:  # leave first, so an emptied window restarts at 0
        total, comp = _kahan(total, comp, -vals[b, c])
        b += 1
    if b == e:  # empty window: drop accumulated rounding
        total = 0.0
        comp = 0.0
    while e < n and times[e] <= hi:
        if times[e] <= lo:  # entered and already left (a gap longer than the window)
            b = e + 1
        else:
            total, comp = _kahan(total, comp, vals[e, c])
        e += 1
    return b, e, total, comp


@njit(cache=True, inline="always")
def _move(times, n, hi, window_ns, b, e):
    """:func:`_step` without a sum: the range ``[b, e)`` moved to ``(hi - window_ns, hi]``."""
    lo = hi - window_ns
    while b < e and times[b] <= lo:
        b += 1
    while e < n and times[e] <= hi:
        if times[e] <= lo:
            b = e + 1
        e += 1
    return b, e


@njit(cache=True, inline="always")
def _extend(vals, c, b0, e0, b, e, squares, comp, lo, hi):
    """The extras of column c (sum of squares compensated in ``comp``, cached extremes ``lo``
    and ``hi``) for a range :func:`_step` moved from ``[b0, e0)`` to ``[b, e)``: the same
    events leave, in the same order, and an emptied range restarts, so the stream and the
    backfill, both moving ranges with :func:`_step`, get the same sums bit for bit.

    An empty range's extremes are +inf and -inf; NaN is unknown (:func:`_extremes` finds it),
    and stays unknown as values enter. Returns the new ``(squares, comp, lo, hi)``."""
    for i in range(b0, min(b, e0)):  # left, oldest first
        v = vals[i, c]
        squares, comp = _kahan(squares, comp, -(v * v))
        lo = np.nan if v <= lo else lo
        hi = np.nan if v >= hi else hi
    if b >= e0:  # every event left (or none was in): restart, as _step does
        squares, comp = 0.0, 0.0
        lo, hi = np.inf, -np.inf
    for i in range(max(b, e0), e):  # entered and still in the window
        v = vals[i, c]
        squares, comp = _kahan(squares, comp, v * v)
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return squares, comp, lo, hi


@njit(cache=True, inline="always")
def advance(times, vals, n, ranges, acc, ext, windows_ns, delays_ns, summed, ext_at, t):
    """Move every slot's range to the window ending at ``t`` over ``times[:n]``.

    ``ranges[2s], ranges[2s + 1]`` is slot s's ``[start, end)``; ``acc`` holds the
    (sum, compensation) pair of every (slot, column), updated with the ranges where
    ``summed[s * C + c]`` (a sum no feature reads is left as it is); ``ext`` the extras
    (:func:`_extend`) of each (slot, column) with ``ext_at[s * C + c]`` >= 0, at that index.
    """
    n_cols = vals.shape[1]
    for s in range(windows_ns.shape[0]):
        hi = t - delays_ns[s]
        b0 = ranges[2 * s]
        e0 = ranges[2 * s + 1]
        b, e = b0, e0
        moved = False
        for c in range(n_cols):  # the range moves the same way for every column
            if summed[s * n_cols + c]:
                i = 2 * (s * n_cols + c)
                b, e, total, comp = _step(
                    times, vals, c, n, hi, windows_ns[s], b0, e0, acc[i], acc[i + 1]
                )
                acc[i] = total
                acc[i + 1] = comp
                moved = True
        if not moved:
            b, e = _move(times, n, hi, windows_ns[s], b0, e0)
        ranges[2 * s] = b
        ranges[2 * s + 1] = e
        for c in range(n_cols):
            x = ext_at[s * n_cols + c]
            if x >= 0:
                ext[x], ext[x + 1], ext[x + 2], ext[x + 3] = _extend(
                    vals, c, b0, e0, b, e, ext[x], ext[x + 1], ext[x + 2], ext[x + 3]
                )


@njit(cache=True, inline="always")
def _simple_value(cnt, total, op):
    """Count, sum or mean of a range of ``cnt`` events whose sum is ``total``."""
    if op == OP_COUNT:
        return float(cnt)
    if cnt == 0:
        return 0.0
    return total if op == OP_SUM else total / cnt


_VARIANCE_NOISE = 16 * np.finfo(np.float64).eps  # the mean square's rounding, relative


@njit(cache=True, inline="always")
def _std(cnt, total, squares):
    """Standard deviation (population) of ``cnt`` values whose sum is ``total`` and sum of
    squares ``squares``: 0 for none, and where the variance is within the rounding of the
    mean square (so equal values give 0, as a scan would)."""
    if cnt == 0:
        return 0.0
    mean_square = squares / np.float64(cnt)
    mean = total / np.float64(cnt)
    var = mean_square - mean * mean
    return np.sqrt(var) if var > _VARIANCE_NOISE * mean_square else 0.0


@njit(cache=True)
def _extremes(vals, b, e, c):
    """``(min, max)`` of column c over ``vals[b:e]`` (non-empty), in one pass.

    Values are finite (checked on input), so the comparisons need no NaN test and compile to
    branch-free instructions; four interleaved pairs of accumulators run side by side. Not
    inlined: the scan's code would crowd the registers of the loops that call it.
    """
    b, e, c = np.uint64(b), np.uint64(e), np.uint64(c)  # unsigned: no negative-index fix-ups
    lo0 = hi0 = lo1 = hi1 = lo2 = hi2 = lo3 = hi3 = vals[b, c]
    i = b
    while i + _U3 < e:
        v0 = vals[i, c]
        v1 = vals[i + _U1, c]
        v2 = vals[i + _U2, c]
        v3 = vals[i + _U3, c]
        lo0 = min(lo0, v0)
        lo1 = min(lo1, v1)
        lo2 = min(lo2, v2)
        lo3 = min(lo3, v3)
        hi0 = max(hi0, v0)
        hi1 = max(hi1, v1)
        hi2 = max(hi2, v2)
        hi3 = max(hi3, v3)
        i += _U4
    while i < e:
        v0 = vals[i, c]
        lo0 = min(lo0, v0)
        hi0 = max(hi0, v0)
        i += _U1
    return min(min(lo0, lo1), min(lo2, lo3)), max(max(hi0, hi1), max(hi2, hi3))


@njit(cache=True, inline="always")
def _scanned(vals, b, e, c, total, ext, x, f_std, f_min, f_max, out, at):
    """Features ``f_std``, ``f_min`` and ``f_max`` (-1: none) of column c over ``vals[b:e]``
    into ``out[at]``, from its running sum ``total`` and its extras ``ext[x:x + 4]``; unknown
    extremes wanted are found by a scan and kept there. Min and max of an empty range are NaN.
    """
    cnt = e - b
    if f_std >= 0:
        out[at, f_std] = _std(cnt, total, ext[x] + ext[x + 1])
    if f_min >= 0 or f_max >= 0:
        lo, hi = ext[x + 2], ext[x + 3]
        if cnt == 0:
            lo = hi = np.nan
        elif np.isnan(lo) or np.isnan(hi):
            lo, hi = _extremes(vals, b, e, c)
            ext[x + 2], ext[x + 3] = lo, hi
        if f_min >= 0:
            out[at, f_min] = lo
        if f_max >= 0:
            out[at, f_max] = hi


@njit(cache=True, inline="always")
def emit(vals, ranges, sums, ext, ext_at, walks, out, at):
    """Write every feature of ``walks`` (see :func:`feature_walks`) into ``out[at]``.

    ``ranges[2s], ranges[2s + 1]`` is slot s's ``[start, end)`` in ``vals``;
    ``sums[s * C + c]`` is column c's sum over it, ``ext[ext_at[s * C + c]:][:4]`` its extras.
    """
    n_cols = vals.shape[1]
    for k in range(walks.shape[0]):
        s, c = walks[k, 0], walks[k, 1]
        b = ranges[2 * s]
        e = ranges[2 * s + 1]
        total = sums[s * n_cols + c]
        if walks[k, 2]:
            x = ext_at[s * n_cols + c]
            _scanned(vals, b, e, c, total, ext, x, walks[k, 3], walks[k, 4], walks[k, 5], out, at)
            continue
        for op in range(OP_MEAN + 1):
            f = walks[k, 3 + op]
            if f >= 0:
                out[at, f] = _simple_value(e - b, total, op)


@njit(cache=True, inline="always")
def _acc_sums(acc, sums):
    """``sums[i]`` = compensated sum i of ``acc`` (its (sum, compensation) pair, added)."""
    for i in range(sums.shape[0]):
        sums[i] = acc[2 * i] + acc[2 * i + 1]


NS_PER_DAY = 86_400 * 10**9
NS_PER_HOUR = 3_600 * 10**9


@njit(cache=True, inline="always")
def calendar_values(kinds, t, values):
    """``values[k]`` = weekend (kind 0), night (1: hour <= 6) or hour (2) of naive ns time t,
    for each ``kinds[k]``; returns the start of t's hour (every time of that hour has the same
    values). Integer floor division is exact; 1970-01-01 was a Thursday (Monday = 0)."""
    days = t // NS_PER_DAY
    hour = (t - days * NS_PER_DAY) // NS_PER_HOUR
    for k in range(kinds.shape[0]):
        kind = kinds[k]
        if kind == 0:
            values[k] = 1.0 if (days + 3) % 7 >= 5 else 0.0
        elif kind == 2:
            values[k] = float(hour)
        else:
            values[k] = 1.0 if hour <= 6 else 0.0
    return days * NS_PER_DAY + hour * NS_PER_HOUR


@njit(cache=True, inline="always")
def _calendar_rows(kinds, times, out, col0, lo, hi):
    """Rows ``lo:hi`` of :func:`calendar`. The values of the last hour seen are kept: a
    history in time order computes them once an hour, not once a row."""
    values = np.empty(kinds.shape[0])
    start, end = np.int64(1), np.int64(0)  # an empty hour: the first row computes its own
    for i in range(lo, hi):
        t = times[i]
        if t < start or t >= end:
            start = calendar_values(kinds, t, values)
            end = start + NS_PER_HOUR
        for k in range(kinds.shape[0]):
            out[i, col0 + k] = values[k]


@njit(cache=True, nogil=True)
def calendar(kinds, times, out, col0):
    """``out[i, col0 + k]`` = calendar feature ``kinds[k]`` of ``times[i]``: weekend (kind 0),
    night (1: hour <= 6) or hour (2) of the naive ns time (serial: the stream calls this per
    transaction, where starting a parallel region costs milliseconds)."""
    _calendar_rows(kinds, times, out, col0, 0, times.shape[0])


@njit(cache=True, parallel=True)
def calendar_parallel(kinds, times, out, col0):
    """:func:`calendar` for whole histories, in chunks of 65,536 rows."""
    n = times.shape[0]
    chunk = 1 << 16
    for c in prange((n + chunk - 1) // chunk):
        _calendar_rows(kinds, times, out, col0, c * chunk, min(n, (c + 1) * chunk))


@njit(cache=True)
def ratios(out, numerators, ratio_columns, denominator_columns):
    """``out[i, ratio_columns[k]]`` = ``numerators[k, i] / out[i, denominator_columns[k]]``,
    NaN where the denominator is 0 (IEEE division otherwise, as numpy's)."""
    for i in range(out.shape[0]):
        for k in range(ratio_columns.shape[0]):
            out[i, ratio_columns[k]] = ratio(numerators[k, i], out[i, denominator_columns[k]])


@njit(cache=True, inline="always")
def ratio(numerator, denominator):
    """A ratio feature's value: NaN where the denominator is 0, IEEE division otherwise."""
    return numerator / denominator if denominator != 0 else np.nan


@njit(cache=True)
def in_order(times, txids):
    """Whether rows are already sorted by (time, transaction id), ids unique within a time.

    One branch-free pass (it vectorises): histories have many equal times, on which a
    short-circuit test would mispredict."""
    unordered = False
    for r in range(1, times.shape[0]):
        t0, t1 = times[r - 1], times[r]
        unordered |= (t1 < t0) | ((t1 == t0) & (txids[r] <= txids[r - 1]))
    return not unordered


@njit(cache=True, nogil=True)
def value_range(values):
    """``(min, max)`` of a non-empty array, in one pass."""
    lo = hi = values[0]
    for v in values:
        lo, hi = min(lo, v), max(hi, v)
    return lo, hi


@njit(cache=True, parallel=True)
def group_rows(
    keys, lo, n_groups, order, times, vals, grouped_times, grouped_vals, rows, n_threads
):
    """Make each entity's events contiguous, taken in ``order`` (a stable counting sort).

    Row r belongs to group ``keys[r] - lo`` (in ``range(n_groups)``).

    ``order`` lists row indices, or is empty for rows already in order. Fills
    ``grouped_times``/``grouped_vals`` (times, values in entity order) and ``rows[p]`` (the
    input row now at p); returns ``starts`` (each group's first position, then n). Each of up
    to ``n_threads`` threads sorts one contiguous chunk of the order into its own sub-range of
    every group, after the chunks before it: the result is the serial stable sort's.
    """
    n = keys.shape[0]
    n_cols = vals.shape[1]
    n_chunks = max(min(n_threads, n // 65_536), 1)
    size = (n + n_chunks - 1) // n_chunks
    fill = np.zeros((n_chunks, n_groups), np.int64)
    for k in prange(n_chunks):
        for i in range(k * size, min(n, (k + 1) * size)):
            fill[k, keys[order[i] if order.shape[0] else i] - lo] += 1
    starts = np.empty(n_groups + 1, np.int64)
    p = 0
    for g in range(n_groups):
        starts[g] = p
        for k in range(n_chunks):
            count = fill[k, g]
            fill[k, g] = p
            p += count
    starts[n_groups] = p
    for k in prange(n_chunks):
        for i in range(k * size, min(n, (k + 1) * size)):
            r = order[i] if order.shape[0] else i
            g = keys[r] - lo
            p = fill[k, g]
            fill[k, g] = p + 1
            grouped_times[p] = times[r]
            for c in range(n_cols):
                grouped_vals[p, c] = vals[r, c]
            rows[p] = r
    return starts


@njit(cache=True)
def feature_walks(n_slots, n_cols, feature_slot, feature_column, feature_op):
    """The features grouped into walks: one per (slot, column) with count/sum/mean features,
    one per (slot, column) with scanned (std, min, max) features.

    Returns rows ``(slot, column, scans, f_0, f_1, f_2)``: without scans f_0..f_2 are the
    count, sum and mean features, with scans the std, min and max ones (-1: no such feature;
    names are unique, so a (slot, column) has at most one feature of each op).
    """
    walks = np.full((2 * n_slots * n_cols, 6), -1, np.int64)
    k = 0
    for s in range(n_slots):
        for c in range(n_cols):
            for scans in range(2):
                found = False
                for f in range(feature_slot.shape[0]):
                    op = feature_op[f]
                    if feature_slot[f] == s and feature_column[f] == c and (op > OP_MEAN) == scans:
                        walks[k, 3 + op - (OP_STD if scans else 0)] = f
                        found = True
                if found:
                    walks[k, 0] = s
                    walks[k, 1] = c
                    walks[k, 2] = scans
                    k += 1
    return walks[:k]


@njit(cache=True)
def extras_at(walks, n_slots, n_cols):
    """Where each (slot, column)'s extras start in a row's extras (float64 words), -1 for
    none: the (slot, column) of each walk with std, min or max features, in walk order."""
    at = np.full(n_slots * n_cols, -1, np.int64)
    n_ext = 0
    for k in range(walks.shape[0]):
        if walks[k, 2]:
            at[walks[k, 0] * n_cols + walks[k, 1]] = 4 * n_ext
            n_ext += 1
    return at


@njit(cache=True)
def summed_columns(walks, n_slots, n_cols):
    """Which (slot, column) running sums a feature of ``walks`` reads: a sum, a mean or a
    std (about the mean); a count needs only the range."""
    summed = np.zeros(n_slots * n_cols, np.bool_)
    for k in range(walks.shape[0]):
        scans = walks[k, 2]
        if (walks[k, 3] >= 0) if scans else (walks[k, 4] >= 0 or walks[k, 5] >= 0):
            summed[walks[k, 0] * n_cols + walks[k, 1]] = True
    return summed


@njit(cache=True, parallel=True)
def backfill_entity(
    starts,
    grouped_times,
    grouped_vals,
    rows,
    windows_ns,
    delays_ns,
    walks,
    scratch,
    out,
    columns,
):
    """Features of every event, each as seen at its own time.

    ``grouped_times``/``grouped_vals`` hold each entity's events contiguously in (time, arrival)
    order, entity g at ``starts[g]:starts[g + 1]``; ``rows[p]`` is the input row of position p
    (see :func:`group_rows`). Slot s is the window ``windows_ns[s]`` ending ``delays_ns[s]``
    before the event; the features are those of ``walks`` (:func:`feature_walks`), whose feature
    indices are columns of ``scratch`` (n x len(columns), C order): scratch column k of row r
    goes to ``out[r, columns[k]]``, other columns are left as they are. Entities run in
    parallel.

    Each entity's history is walked once per (slot, column): the range and its sum live in
    registers, and :func:`_step` (with :func:`_extend`) does what :func:`advance` does for the
    stream, column by column, so the values are bit-identical. Std, min and max get a walk of
    their own, to keep their extras out of the count/sum/mean loop. Values go to ``scratch`` at
    their input row: one cache line per event, which the entity's next walks find still cached;
    a last parallel pass copies ``scratch`` into ``out`` sequentially.

    Large arrays come from the caller: numpy allocates them with huge pages, and first-touch
    page faults otherwise dominate on virtual machines.
    """
    # The caller holds the arrays: the views of them below need no reference counting.
    grouped_times, grouped_vals = borrowed(grouped_times), borrowed(grouped_vals)
    rows, scratch = borrowed(rows), borrowed(scratch)
    n = grouped_times.shape[0]
    for g in prange(starts.shape[0] - 1):
        a = starts[g]
        m = starts[g + 1] - a
        t = grouped_times[a : a + m]
        v = grouped_vals[a : a + m]
        r = rows[a : a + m]
        for k in range(walks.shape[0]):
            s, c, scans = walks[k, 0], walks[k, 1], walks[k, 2]
            f_0, f_1, f_2 = walks[k, 3], walks[k, 4], walks[k, 5]
            w, d = windows_ns[s], delays_ns[s]
            b, e, total, comp = 0, 0, 0.0, 0.0
            if scans:
                ext = np.zeros(4)  # the extras of the (slot, column), as a state row's
                for i in range(m):
                    b0, e0 = b, e
                    b, e, total, comp = _step(t, v, c, i + 1, t[i] - d, w, b0, e0, total, comp)
                    ext[0], ext[1], ext[2], ext[3] = _extend(
                        v, c, b0, e0, b, e, ext[0], ext[1], ext[2], ext[3]
                    )
                    _scanned(v, b, e, c, total + comp, ext, 0, f_0, f_1, f_2, scratch, r[i])
                continue
            for i in range(m):
                b, e, total, comp = _step(t, v, c, i + 1, t[i] - d, w, b, e, total, comp)
                if f_0 >= 0:
                    scratch[r[i], f_0] = _simple_value(e - b, total + comp, OP_COUNT)
                if f_1 >= 0:
                    scratch[r[i], f_1] = _simple_value(e - b, total + comp, OP_SUM)
                if f_2 >= 0:
                    scratch[r[i], f_2] = _simple_value(e - b, total + comp, OP_MEAN)
    for i in prange(n):
        for k in range(columns.shape[0]):
            out[i, columns[k]] = scratch[i, k]


@njit(cache=True, inline="always")
def _upper_bound(times, n, t, lo=0):
    """First index in ``times[lo:n]`` whose time is > t (n if none)."""
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if times[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _upper_bound_recent(times, n, t):
    """:func:`_upper_bound` galloping back from the end: a few probes of recently written
    memory when t is among the newest events (labels, copies, late events), O(log n) always."""
    hi = n  # times[hi:n] are all > t
    step = 1
    while step <= n and times[n - step] > t:
        hi = n - step
        step *= 2
    return _upper_bound(times, hi, t, max(n - step, 0))


@njit(cache=True, inline="always")
def events_of(row, n_slots, n_cols, n_ext, cap):
    """The buffer of a state row: ``(records, times, txids, vals)``, views of one
    ``cap x (2 + C)`` block (times and ids as int64, vals as float64)."""
    off = _head(n_slots, n_cols, n_ext)
    width = 2 + n_cols
    # as_strided, not reshape: numba's reshape calls a C helper (numba_attempt_nocopy_reshape)
    # on every call, a sizeable share of an event's cost; the views are the same.
    buffer = row[off : off + cap * width]
    records = as_strided(buffer, shape=(cap, width), strides=(8 * width, 8))
    vals = as_strided(buffer.view(np.float64), shape=(cap, width), strides=(8 * width, 8))
    return records, records[:, 0], records[:, 1], vals[:, 2:]


@njit(cache=True)
def compact(row, n_slots, n_cols, n_ext, cap, cutoff):
    """Drop buffered events with time <= cutoff (they are behind every slot's range)."""
    n = row[0]
    records, times, _, _ = events_of(row, n_slots, n_cols, n_ext, cap)
    m = _upper_bound(times, n, cutoff)
    for s in range(n_slots):
        m = min(m, row[HEADER + 2 * s])
    if m == 0:
        return
    for i in range(n - m):
        for w in range(2 + n_cols):
            records[i, w] = records[i + m, w]
    for i in range(2 * n_slots):
        row[HEADER + i] -= m
    row[0] = n - m


@njit(cache=True, inline="always")
def _ranges_and_sums(row, n_slots, n_cols, n_ext):
    """Views of a state row's slot ranges (``start, end`` per slot, int64), running sums
    (``[sum, compensation]`` per (slot, column), float64) and extras (float64)."""
    sums_from = HEADER + 2 * n_slots
    extras_from = sums_from + 2 * n_slots * n_cols
    ranges = row[HEADER:sums_from]
    acc = row[sums_from:extras_from].view(np.float64)
    ext = row[extras_from : extras_from + 4 * n_ext].view(np.float64)
    return ranges, acc, ext


@njit(cache=True, inline="always")
def _find_buffered(times, txids, end, t, txid):
    """Index of the buffered event with time t and transaction id ``txid``, or -1.

    ``end`` is one past the last event at or before t (:func:`_upper_bound_recent`, which the
    callers evaluate themselves: nested in here, it would cost reference-count updates). The
    few events at time t are searched from the newest back.
    """
    k = end - 1
    while k >= 0 and times[k] == t and txids[k] != txid:
        k -= 1
    if k >= 0 and times[k] == t:
        return k
    return -1


# How far a label's copy of its transaction's time may be from the time the transaction came
# with: a case system that keeps times in milliseconds or seconds sends them truncated or
# rounded. Within it a label finds its transaction by id (ids are unique, so no other can match).
LABEL_TIME_SLACK_NS = 1_000_000_000


@njit(cache=True, inline="always")
def _find_labelled(times, txids, n, t, txid):
    """Index of the buffered transaction ``txid`` whose time is within
    :data:`LABEL_TIME_SLACK_NS` of t, or -1; searched from the newest of those back."""
    k = _upper_bound_recent(times, n, t + LABEL_TIME_SLACK_NS) - 1
    while k >= 0 and times[k] >= t - LABEL_TIME_SLACK_NS:
        if txids[k] == txid:
            return k
        k -= 1
    return -1


@njit(cache=True, inline="always")
def _apply_label(vals, ranges, acc, ext, ext_at, k, c, value):
    """Set column c (a label column) of buffered event k to ``value``.

    Each slot whose range holds event k gets the change added to its running sum of column c
    (and to its sum of squares, its extremes then unknown); the other slots see the new value
    once their range reaches event k.
    """
    n_cols = vals.shape[1]
    old = vals[k, c]
    vals[k, c] = value
    for s in range(ranges.shape[0] // 2):
        if ranges[2 * s] <= k < ranges[2 * s + 1]:
            _kahan_add(acc, 2 * (s * n_cols + c), value - old)
            x = ext_at[s * n_cols + c]
            if x >= 0:
                _kahan_add(ext, x, value * value - old * old)
                ext[x + 2] = ext[x + 3] = np.nan


@njit(cache=True, inline="always")
def _make_room(records, n, k):
    """Move buffered events ``k..n-1`` up by one, freeing index k of a buffer of n events.

    Only a late event is inserted before the end (k < n); otherwise k == n and nothing moves.
    """
    for i in range(n, k, -1):
        for w in range(records.shape[1]):
            records[i, w] = records[i - 1, w]


@njit(cache=True, inline="always")
def _admit_late(vals, ranges, acc, ext, ext_at, k, t, newest, windows_ns, delays_ns):
    """Update the slot ranges, running sums and extras for a late event just inserted at
    index k.

    The ranges still describe the windows ending at ``newest`` (minus each slot's delay): a
    range past index k moves up by one, and a range whose window holds t also takes the event
    and adds its values to its sums.
    """
    n_cols = vals.shape[1]
    for s in range(windows_ns.shape[0]):
        hi = newest - delays_ns[s]
        lo = hi - windows_ns[s]
        if t <= lo:  # before the window: the whole range moves up
            ranges[2 * s] += 1
            ranges[2 * s + 1] += 1
        elif t <= hi:  # inside the window: the range grows by the event
            ranges[2 * s + 1] += 1
            for c in range(n_cols):
                v = vals[k, c]
                _kahan_add(acc, 2 * (s * n_cols + c), v)
                x = ext_at[s * n_cols + c]
                if x >= 0:
                    _kahan_add(ext, x, v * v)
                    ext[x + 2] = v if v < ext[x + 2] else ext[x + 2]
                    ext[x + 3] = v if v > ext[x + 3] else ext[x + 3]


@njit(cache=True, inline="always")
def _ranges_at(times, vals, k, t, windows_ns, delays_ns, ext_at, ranges, sums, ext):
    """Slot ranges, plain sums and extras of the windows ending at t over ``times[:k + 1]``.

    For a late event at index k, seen at its own time: the events after it are not in its
    windows. Fills ``ranges`` (``start, end`` per slot), ``sums[s * C + c]`` and, where
    ``ext_at`` has them, the extras (plain sums of squares, extremes unknown).
    """
    n_cols = vals.shape[1]
    for s in range(windows_ns.shape[0]):
        hi = t - delays_ns[s]
        e = min(_upper_bound(times, k + 1, hi), k + 1)
        b = _upper_bound(times, e, hi - windows_ns[s])
        ranges[2 * s] = b
        ranges[2 * s + 1] = e
        for c in range(n_cols):
            total = squares = 0.0
            for i in range(b, e):
                v = vals[i, c]
                total += v
                squares += v * v
            sums[s * n_cols + c] = total
            x = ext_at[s * n_cols + c]
            if x >= 0:
                ext[x], ext[x + 1], ext[x + 2], ext[x + 3] = squares, 0.0, np.nan, np.nan


@njit(cache=True, inline="always")
def _seconds_since(t, previous):
    """Seconds from ``previous`` to t, NaN when there is no previous event (``NO_TIME``)."""
    return (t - previous) / NS_PER_S if previous != NO_TIME else np.nan


# How many events ahead :func:`process` prefetches a state's header and sums, and the buffered
# events its ranges point at (read from the header prefetched before): a miss takes about as
# long as processing a few events.
PREFETCH_HEADER_AHEAD = 16
PREFETCH_EVENTS_AHEAD = 8


@njit(cache=True, inline="always")
def _count_extras(ext_at):
    """How many (slot, column)s of :func:`extras_at` have extras."""
    n = 0
    for x in ext_at:
        n += x >= 0
    return n


@njit(cache=True, inline="always")
def _applies(event_kinds, arena_rows, uses_labels, j):
    """Whether :func:`process` reads event j's state: a transaction's, or a label's when the
    plan has label features."""
    kind = event_kinds[j]
    return arena_rows[j] >= 0 and (kind == KIND_TX or (kind == KIND_LABEL and uses_labels))


@njit(cache=True, inline="always")
def _prefetch_states(arena, arena_rows, event_kinds, uses_labels, j, n_slots, n_cols, n_ext):
    """Start loading the parts of state rows that events ahead of event j will read.

    Event ``j + PREFETCH_HEADER_AHEAD``: its header, sums and extras. Event
    ``j + PREFETCH_EVENTS_AHEAD`` (its header loaded by now): for a transaction, the lines at
    each slot's range start and end (the events its ranges move over) and where it will be
    appended; for a label, the buffered events from the earliest slot end on (where its
    transaction lies, a delay back).
    """
    m = arena_rows.shape[0]
    head = _head(n_slots, n_cols, n_ext)
    ahead = j + PREFETCH_HEADER_AHEAD
    if ahead < m and _applies(event_kinds, arena_rows, uses_labels, ahead):
        r = arena_rows[ahead]
        for w in range(0, head, 8):  # 8 words to a 64-byte cache line
            prefetch(arena, r, w)
        prefetch(arena, r, head - 1)  # the last line, where a row does not start on a line
    ahead = j + PREFETCH_EVENTS_AHEAD
    if ahead < m and _applies(event_kinds, arena_rows, uses_labels, ahead):
        r = arena_rows[ahead]
        n = arena[r, 0]
        width = 2 + n_cols
        if event_kinds[ahead] == KIND_LABEL:
            first = n
            for i in range(HEADER + 1, HEADER + 2 * n_slots, 2):
                first = min(first, arena[r, i])
            for w in range(head + first * width, head + (n + 1) * width, 8):
                prefetch(arena, r, w)
        else:
            for i in range(HEADER, HEADER + 2 * n_slots):
                w = head + arena[r, i] * width
                prefetch(arena, r, w)
                prefetch(arena, r, w + 8)
            prefetch(arena, r, head + n * width)


@njit(cache=True)
def process(
    arena,
    arena_rows,
    event_kinds,
    event_times,
    event_txids,
    event_vals,
    label_columns,
    windows_ns,
    delays_ns,
    walks,
    summed,
    ext_at,
    n_feat,
    since_prev,
    keep_ns,
    lateness_ns,
    out,
    status,
    first,
):
    """Apply events ``first..`` in order to the states in ``arena`` (one row per entity).

    Event j is of kind ``event_kinds[j]`` (``KIND_TX``, ``KIND_LABEL`` or ``KIND_SKIP``: left
    alone), at ``event_times[j]`` (ns), for transaction ``event_txids[j]``, with values
    ``event_vals[j]`` (one per column of the state); ``arena_rows[j]`` is its entity's arena
    row (-1 only for a label of an unknown entity). ``status[j]`` gets an ``ST_*`` code.

    A transaction writes its features to ``out[j]``: the ``n_feat`` features of ``walks``
    (:func:`feature_walks`), slot s being the window of ``windows_ns[s]`` ending
    ``delays_ns[s]`` before the transaction; then, if ``since_prev``, seconds since the
    entity's previous transaction. ``summed`` (:func:`summed_columns`) says which running
    sums the features read, ``ext_at`` (:func:`extras_at`) where the extras are. A
    transaction older than the entity's newest by ``lateness_ns`` or more is rejected; a full
    buffer first drops the events ``keep_ns`` or more older than the newest (see
    :func:`compact`). A label sets the ``label_columns`` of its buffered transaction (same id,
    its time within :data:`LABEL_TIME_SLACK_NS` of the label's) to its values.

    Returns the index of the first event not applied: ``len(event_kinds)`` when all were, else
    an event whose entity's buffer is full (the caller grows the arena and calls again).
    """
    # The caller holds every argument: views of them need no reference counting.
    arena, out, event_vals = borrowed(arena), borrowed(out), borrowed(event_vals)
    label_columns, walks, summed = borrowed(label_columns), borrowed(walks), borrowed(summed)
    windows_ns, delays_ns, ext_at = borrowed(windows_ns), borrowed(delays_ns), borrowed(ext_at)
    n_slots = windows_ns.shape[0]
    n_cols = event_vals.shape[1]
    n_ext = _count_extras(ext_at)
    uses_labels = label_columns.shape[0] > 0
    sums = np.zeros(n_slots * n_cols, np.float64)
    own_ranges = np.empty(2 * n_slots, np.int64)  # a late event's ranges at its own time
    own_ext = np.empty(4 * n_ext, np.float64)  # and its extras
    for j in range(first, event_kinds.shape[0]):
        _prefetch_states(arena, arena_rows, event_kinds, uses_labels, j, n_slots, n_cols, n_ext)
        kind = event_kinds[j]
        if kind == KIND_SKIP:
            continue
        if arena_rows[j] < 0 or (kind == KIND_LABEL and not uses_labels):
            status[j] = ST_LABEL_UNKNOWN_ENTITY if uses_labels else ST_LABEL_NOT_USED
            continue
        row = arena[arena_rows[j]]
        n = row[0]
        cap = row[1]
        newest = row[2]
        t = event_times[j]
        txid = event_txids[j]
        ranges, acc, ext = _ranges_and_sums(row, n_slots, n_cols, n_ext)
        records, times, txids, vals = events_of(row, n_slots, n_cols, n_ext, cap)

        if kind == KIND_LABEL:
            k = _find_labelled(times, txids, n, t, txid)
            if k >= 0:
                for c in label_columns:
                    _apply_label(vals, ranges, acc, ext, ext_at, k, c, event_vals[j, c])
                status[j] = ST_LABEL_APPLIED
            elif n == 0 or t + LABEL_TIME_SLACK_NS < times[0]:  # older than the buffer
                status[j] = ST_LABEL_EXPIRED
            else:
                status[j] = ST_LABEL_UNMATCHED
            continue

        seen_any = newest != NO_TIME
        late = seen_any and t < newest
        if late and t <= newest - lateness_ns:
            status[j] = ST_TOO_LATE
            continue
        # Only a transaction at or before the newest time can have a buffered copy.
        if (
            seen_any
            and t <= newest
            and _find_buffered(times, txids, _upper_bound_recent(times, n, t), t, txid) >= 0
        ):
            status[j] = ST_DUPLICATE
            continue
        if n == cap and seen_any:
            compact(row, n_slots, n_cols, n_ext, cap, newest - keep_ns)
            n = row[0]
        if n == cap:  # still full: the caller grows the arena and calls again from j
            return j
        k = _upper_bound_recent(times, n, t) if late else n
        _make_room(records, n, k)
        times[k] = t
        txids[k] = txid
        for c in range(n_cols):
            vals[k, c] = event_vals[j, c]
        for c in label_columns:  # a transaction's label is unknown until its label event
            vals[k, c] = 0.0
        row[0] = n + 1

        if not late:
            row[2] = t
            advance(times, vals, n + 1, ranges, acc, ext, windows_ns, delays_ns, summed, ext_at, t)
            _acc_sums(acc, sums)
            emit(vals, ranges, sums, ext, ext_at, walks, out, j)
            if since_prev:
                out[j, n_feat] = _seconds_since(t, newest)
            status[j] = ST_OK
        else:
            # The state's windows still end at `newest`; this event's own windows end at t.
            _admit_late(vals, ranges, acc, ext, ext_at, k, t, newest, windows_ns, delays_ns)
            _ranges_at(times, vals, k, t, windows_ns, delays_ns, ext_at, own_ranges, sums, own_ext)
            emit(vals, own_ranges, sums, own_ext, ext_at, walks, out, j)
            if since_prev:
                out[j, n_feat] = _seconds_since(t, times[k - 1] if k > 0 else NO_TIME)
            status[j] = ST_LATE
    return event_kinds.shape[0]


@njit(cache=True)
def new_row(row, cap):
    """Make a zeroed ``row`` of capacity ``cap`` an entity's empty state."""
    row[1] = cap
    row[2] = NO_TIME
    row[3] = STATE_FORMAT


@njit(cache=True)
def restore_row(row, words, n_slots, n_cols, n_ext, cap):
    """Fill a zeroed state ``row`` of capacity ``cap`` from exported ``words`` (see
    :func:`export_row`; ``cap`` at least their n)."""
    head = _head(n_slots, n_cols, n_ext)
    n = words[1]  # an export holds n in the capacity word
    row[:head] = words[:head]
    row[1] = cap
    records, _, _, _ = events_of(row, n_slots, n_cols, n_ext, cap)
    for i in range(n):
        records[i, 0] = words[head + i]
        records[i, 1] = words[head + n + i]
        for c in range(n_cols):
            records[i, 2 + c] = words[head + 2 * n + i * n_cols + c]


@njit(cache=True)
def export_row(row, n_slots, n_cols, n_ext, cap, keep_ns):
    """The compact form of a state row, after dropping the events ``keep_ns`` or more older
    than its newest: its header, sums and extras (the capacity word set to n), then times[n],
    txids[n] and vals[n x C] (float64 bits)."""
    if row[2] != NO_TIME:
        compact(row, n_slots, n_cols, n_ext, cap, row[2] - keep_ns)
    head = _head(n_slots, n_cols, n_ext)
    n = row[0]
    exported = np.empty(head + n * (2 + n_cols), np.int64)
    exported[:head] = row[:head]
    exported[1] = n
    records, _, _, _ = events_of(row, n_slots, n_cols, n_ext, cap)
    for i in range(n):
        exported[head + i] = records[i, 0]
        exported[head + n + i] = records[i, 1]
        for c in range(n_cols):
            exported[head + 2 * n + i * n_cols + c] = records[i, 2 + c]
    return exported


@njit(cache=True)
def migrate_row(words, n_slots, n_cols, ext_at):
    """Exported ``words`` of format 0 (no extras) in the current format: the extras of each
    range as :func:`_extend` computes them for a range entered from empty (sums of squares
    compensated, oldest first, as if none had left; extremes exact). Features then equal a
    state kept in the current format up to the rounding of std."""
    n_ext = _count_extras(ext_at)
    head0 = _head(n_slots, n_cols, 0)
    head = _head(n_slots, n_cols, n_ext)
    n = words[1]
    migrated = np.empty(words.shape[0] + 4 * n_ext, np.int64)
    migrated[:head0] = words[:head0]
    migrated[head:] = words[head0:]
    migrated[3] = STATE_FORMAT
    ext = migrated[head0:head].view(np.float64)
    vals = migrated[head + 2 * n :].view(np.float64).reshape(n, n_cols)  # exported: n x C
    for s in range(n_slots):
        b, e = words[HEADER + 2 * s], words[HEADER + 2 * s + 1]
        for c in range(n_cols):
            x = ext_at[s * n_cols + c]
            if x >= 0:
                ext[x], ext[x + 1], ext[x + 2], ext[x + 3] = _extend(
                    vals, c, 0, 0, b, e, 0.0, 0.0, 0.0, 0.0
                )
    return migrated


@njit(cache=True)
def apply_exported(
    words,
    kind,
    t,
    txid,
    vals,
    label_columns,
    windows_ns,
    delays_ns,
    walks,
    summed,
    ext_at,
    n_feat,
    since_prev,
    keep_ns,
    lateness_ns,
    out,
    status,
):
    """One event applied to one entity's exported state (:func:`export_row` words; empty: no
    state): :func:`process` on a scratch row restored from ``words``, then exported again.

    ``vals`` (1 x C), ``out`` (1 x features) and ``status`` (1) are as in :func:`process`.
    Returns the new exported words, or an empty array when the entity still has no state (a
    label for an entity never seen). The same as restoring into an ``EntityStore``, processing
    and exporting, without the store.
    """
    n_slots = windows_ns.shape[0]
    n_cols = vals.shape[1]
    n_ext = _count_extras(ext_at)
    n = words[1] if words.shape[0] > 0 else 0
    cap = n + 1  # room for this event: no compaction before it, as in a store with room
    head = _head(n_slots, n_cols, n_ext)
    arena = np.zeros((1, head + cap * (2 + n_cols)), np.int64)
    row = arena[0]
    rows = np.zeros(1, np.int64)
    if words.shape[0] > 0:
        restore_row(row, words, n_slots, n_cols, n_ext, cap)
    elif kind == KIND_TX:
        new_row(row, cap)
    else:
        rows[0] = -1  # a label for an entity without state
    process(
        arena,
        rows,
        np.full(1, kind, np.int64),
        np.full(1, t, np.int64),
        np.full(1, txid, np.int64),
        vals,
        label_columns,
        windows_ns,
        delays_ns,
        walks,
        summed,
        ext_at,
        n_feat,
        since_prev,
        keep_ns,
        lateness_ns,
        out,
        status,
        0,
    )
    if rows[0] < 0:
        return np.empty(0, np.int64)
    return export_row(row, n_slots, n_cols, n_ext, cap, keep_ns)
