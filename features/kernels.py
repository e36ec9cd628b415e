"""Numba kernels shared by the backfill and the incremental (streaming) path.

One entity's history is a buffer of events sorted by (time, arrival): ``times`` (int64 ns),
``vals`` (float64, one column per source column). Each *slot* is one distinct (window, delay)
pair and keeps a half-open index range ``[start, end)`` of the events inside
``(t - delay - window, t - delay]`` plus compensated running sums of every column over it.
:func:`_step` moves one range and one column's sum forward for a new time ``t`` (two pointers,
O(1) amortised). The incremental path applies it to every slot and column of a bounded buffer
kept per entity (:func:`advance`, then :func:`emit`); the backfill applies it to a whole sorted
history, one (slot, column) at a time. Each sum sees the same floating-point operations in the
same order either way, hence bit-identical results.

Count, sum and mean come from the running sums; std, min and max scan the slot's range (exact,
O(events in the window)).

A state *row* (one entity, int64 words; float parts are viewed as float64) is laid out as::

    [n, cap, newest_time, 0, start_0, end_0, ..., start_{S-1}, end_{S-1}]   header, 4 + 2S
    [sum, compensation] per (slot, column)                                   2 * S * C (float64)
    [time, txid, vals[C] (float64)] per buffered event                       cap * (2 + C)

An event's fields share a cache line: the stream touches entities at random, and each of its
reads (a window's oldest event, the append, a label's transaction) is then one line, not three.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Ops up to OP_MEAN come from a range's count and running sum; the others scan the range.
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
NS_PER_S = 1e9


def row_width(n_slots: int, n_cols: int, cap: int) -> int:
    """Words (int64) in one state row."""
    return HEADER + 2 * n_slots + 2 * n_slots * n_cols + cap * (2 + n_cols)


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
def _step(times, vals, c, n, hi, win, b, e, total, comp):
    """Move one range ``[b, e)`` to the window ``(hi - win, hi]`` over ``times[:n]``.

    ``total, comp`` is the compensated sum of column c over the range; returns the new
    ``(b, e, total, comp)``. Every caller (backfill, stream, one column or many) goes through
    here, so all of them do the same floating-point operations in the same order.
    """
    lo = hi - win
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
def advance(times, vals, n, ptr, acc, win, dly, t):
    """Move every slot's range to the window ending at ``t`` over ``times[:n]``."""
    n_cols = vals.shape[1]
    for s in range(win.shape[0]):
        hi = t - dly[s]
        b0 = ptr[2 * s]
        e0 = ptr[2 * s + 1]
        b, e = b0, e0
        for c in range(n_cols):  # the range moves the same way for every column
            i = 2 * (s * n_cols + c)
            b, e, total, comp = _step(times, vals, c, n, hi, win[s], b0, e0, acc[i], acc[i + 1])
            acc[i] = total
            acc[i + 1] = comp
        ptr[2 * s] = b
        ptr[2 * s + 1] = e


@njit(cache=True, inline="always")
def _simple_value(cnt, total, op):
    """Count, sum or mean of a range of ``cnt`` events whose sum is ``total``."""
    if op == OP_COUNT:
        return float(cnt)
    if cnt == 0:
        return 0.0
    return total if op == OP_SUM else total / cnt


@njit(cache=True)
def _scan_value(vals, b, e, c, op):
    """Std, min or max of column c over ``vals[b:e]`` (a scan: exact, O(e - b)).

    Not inlined: the scan's code would crowd the registers of the loops that call it.
    """
    cnt = e - b
    if op == OP_STD:
        if cnt == 0:
            return 0.0
        m = 0.0
        for i in range(b, e):
            m += vals[i, c]
        m /= cnt
        ss = 0.0
        for i in range(b, e):
            d = vals[i, c] - m
            ss += d * d
        return np.sqrt(ss / cnt)
    r = np.nan
    for i in range(b, e):
        v = vals[i, c]
        if r != r or (v < r if op == OP_MIN else v > r):
            r = v
    return r


@njit(cache=True, inline="always")
def emit(vals, ptr, sums, fslot, fcol, fop, out):
    """Write each feature into ``out``; ``sums[s * C + c]`` is column c's sum over slot s."""
    n_cols = vals.shape[1]
    for f in range(fslot.shape[0]):
        s = fslot[f]
        c = fcol[f]
        b = ptr[2 * s]
        e = ptr[2 * s + 1]
        if fop[f] <= OP_MEAN:
            out[f] = _simple_value(e - b, sums[s * n_cols + c], fop[f])
        else:
            out[f] = _scan_value(vals, b, e, c, fop[f])


@njit(cache=True, inline="always")
def _acc_sums(acc, sums):
    for i in range(sums.shape[0]):
        sums[i] = acc[2 * i] + acc[2 * i + 1]


NS_PER_DAY = 86_400 * 10**9
NS_PER_HOUR = 3_600 * 10**9


@njit(cache=True, inline="always")
def _calendar_value(kind, t):
    """Weekend (kind 0), night (1: hour <= 6) or hour (2) of naive ns time t.

    Integer floor division is exact; 1970-01-01 was a Thursday (Monday = 0).
    """
    days = t // NS_PER_DAY
    if kind == 0:
        return 1.0 if (days + 3) % 7 >= 5 else 0.0
    hour = (t - days * NS_PER_DAY) // NS_PER_HOUR
    return float(hour) if kind == 2 else (1.0 if hour <= 6 else 0.0)


@njit(cache=True)
def calendar(kinds, times, out, col0):
    """``out[i, col0 + k]`` = calendar feature ``kinds[k]`` of ``times[i]`` (serial: the
    stream calls this per transaction, where starting a parallel region costs milliseconds)."""
    for i in range(times.shape[0]):
        for k in range(kinds.shape[0]):
            out[i, col0 + k] = _calendar_value(kinds[k], times[i])


@njit(cache=True, parallel=True)
def calendar_parallel(kinds, times, out, col0):
    """:func:`calendar` for whole histories."""
    for i in prange(times.shape[0]):
        for k in range(kinds.shape[0]):
            out[i, col0 + k] = _calendar_value(kinds[k], times[i])


@njit(cache=True)
def in_order(times, txids):
    """Whether rows are already sorted by (time, transaction id), ids unique within a time."""
    for r in range(1, times.shape[0]):
        if times[r] < times[r - 1] or (times[r] == times[r - 1] and txids[r] <= txids[r - 1]):
            return False
    return True


@njit(cache=True, parallel=True)
def group_rows(keys, lo, n_groups, order, times, vals, tv, vv, rows, n_threads):
    """Make each entity's events contiguous, taken in ``order`` (a stable counting sort).

    Row r belongs to group ``keys[r] - lo`` (in ``range(n_groups)``).

    ``order`` lists row indices, or is empty for rows already in order. Fills ``tv``/``vv``
    (times, values in entity order) and ``rows[p]`` (the input row now at p); returns ``starts``
    (each group's first position, then n). Each of up to ``n_threads`` threads sorts one
    contiguous chunk of the order into its own sub-range of every group, after the chunks
    before it: the result is the serial stable sort's.
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
            tv[p] = times[r]
            for c in range(n_cols):
                vv[p, c] = vals[r, c]
            rows[p] = r
    return starts


@njit(cache=True)
def _passes(n_slots, n_cols, fslot, fcol, fop):
    """The backfill's walks: one per (slot, column) with count/sum/mean features, one per
    (slot, column) with scanned features.

    Returns rows ``(slot, column, scans, f_count, f_sum, f_mean)`` (-1: no such feature) and
    each scanning walk's feature indices (-1 padded). Names are unique, so a (slot, column)
    has at most one feature of each op.
    """
    n_feat = fslot.shape[0]
    walks = np.full((2 * n_slots * n_cols, 6), -1, np.int64)
    feats = np.full((2 * n_slots * n_cols, max(n_feat, 1)), -1, np.int64)
    k = 0
    for s in range(n_slots):
        for c in range(n_cols):
            for scans in range(2):
                j = 0
                for f in range(n_feat):
                    if fslot[f] != s or fcol[f] != c or (fop[f] > OP_MEAN) != (scans == 1):
                        continue
                    if scans:
                        feats[k, j] = f
                    else:
                        walks[k, 3 + fop[f]] = f
                    j += 1
                if j:
                    walks[k, 0] = s
                    walks[k, 1] = c
                    walks[k, 2] = scans
                    k += 1
    return walks[:k], feats[:k]


@njit(cache=True, parallel=True)
def backfill_entity(starts, tv, vv, rows, win, dly, fslot, fcol, fop, since_prev, blk, out, col0):
    """Features of every event, each as seen at its own time.

    ``tv``/``vv`` hold each entity's events contiguously in (time, arrival) order, entity g at
    ``starts[g]:starts[g + 1]``; ``rows[p]`` is the input row of position p (see
    :func:`group_rows`). Row r's aggregates go to ``out[r, col0:]``, followed (if
    ``since_prev``) by seconds since the entity's previous event. ``blk`` is scratch (n x width,
    C order). Entities run in parallel.

    Each entity's history is walked once per (slot, column): the range and its sum live in
    registers, and :func:`_step` does what :func:`advance` does for the stream, column by
    column, so the values are bit-identical. Scanned features (std, min, max) get a walk of
    their own, to keep the scan out of the count/sum/mean loop. Values go to ``blk`` at their
    input row: one cache line per event, which the entity's next walks find still cached;
    a last parallel pass copies ``blk`` into ``out`` sequentially.

    Large arrays come from the caller: numpy allocates them with huge pages, and first-touch
    page faults otherwise dominate on virtual machines.
    """
    n = tv.shape[0]
    n_feat = fslot.shape[0]
    width = n_feat + (1 if since_prev else 0)
    walks, feats = _passes(win.shape[0], vv.shape[1], fslot, fcol, fop)
    for g in prange(starts.shape[0] - 1):
        a = starts[g]
        m = starts[g + 1] - a
        t = tv[a : a + m]
        v = vv[a : a + m]
        r = rows[a : a + m]
        for k in range(walks.shape[0]):
            s, c, scans = walks[k, 0], walks[k, 1], walks[k, 2]
            f_count, f_sum, f_mean = walks[k, 3], walks[k, 4], walks[k, 5]
            w, d = win[s], dly[s]
            b, e, total, comp = 0, 0, 0.0, 0.0
            if scans:
                for i in range(m):
                    b, e, total, comp = _step(t, v, c, i + 1, t[i] - d, w, b, e, total, comp)
                    for f in feats[k]:
                        if f >= 0:
                            blk[r[i], f] = _scan_value(v, b, e, c, fop[f])
                continue
            for i in range(m):
                b, e, total, comp = _step(t, v, c, i + 1, t[i] - d, w, b, e, total, comp)
                if f_count >= 0:
                    blk[r[i], f_count] = _simple_value(e - b, total + comp, OP_COUNT)
                if f_sum >= 0:
                    blk[r[i], f_sum] = _simple_value(e - b, total + comp, OP_SUM)
                if f_mean >= 0:
                    blk[r[i], f_mean] = _simple_value(e - b, total + comp, OP_MEAN)
        if since_prev and m > 0:
            blk[r[0], n_feat] = np.nan
            for i in range(1, m):
                blk[r[i], n_feat] = (t[i] - t[i - 1]) / NS_PER_S
    for i in prange(n):
        for f in range(width):
            out[i, col0 + f] = blk[i, f]


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
def events_of(row, n_slots, n_cols, cap):
    """The buffer of a state row: ``(records, times, txids, vals)``, views of one
    ``cap x (2 + C)`` block (times and ids as int64, vals as float64)."""
    off = HEADER + 2 * n_slots + 2 * n_slots * n_cols
    records = row[off : off + cap * (2 + n_cols)].reshape((cap, 2 + n_cols))
    vals = row[off : off + cap * (2 + n_cols)].view(np.float64).reshape((cap, 2 + n_cols))
    return records, records[:, 0], records[:, 1], vals[:, 2:]


@njit(cache=True)
def compact(row, n_slots, n_cols, cap, cutoff):
    """Drop buffered events with time <= cutoff (they are behind every slot's range)."""
    n = row[0]
    records, times, _, _ = events_of(row, n_slots, n_cols, cap)
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


@njit(cache=True)
def process(
    arena,
    slots,
    kinds,
    ev_times,
    ev_txids,
    ev_vals,
    label_cols,
    win,
    dly,
    fslot,
    fcol,
    fop,
    since_prev,
    keep_ns,
    lateness_ns,
    out,
    status,
    first,
):
    """Apply events ``first..`` in order to the states in ``arena`` (one row per entity).

    Transactions write their features to ``out[j]``; labels set ``label_cols`` of a buffered
    transaction; ``KIND_SKIP`` events are left alone. ``slots[j]`` is event j's arena row (-1
    only for a label of an unknown entity). Returns the index of the first event not applied:
    ``len(kinds)`` when all were, else an event whose entity's buffer is full (the caller grows
    the arena and calls again).
    """
    n_slots = win.shape[0]
    n_cols = ev_vals.shape[1]
    n_feat = fslot.shape[0]
    sums = np.zeros(n_slots * n_cols, np.float64)
    for j in range(first, kinds.shape[0]):
        if kinds[j] == KIND_SKIP:
            continue
        if slots[j] < 0 or (kinds[j] == KIND_LABEL and label_cols.shape[0] == 0):
            status[j] = ST_LABEL_NOT_USED if label_cols.shape[0] == 0 else ST_LABEL_UNKNOWN_ENTITY
            continue
        row = arena[slots[j]]
        cap = row[1]
        newest = row[2]
        t = ev_times[j]
        acc_off = HEADER + 2 * n_slots
        ptr = row[HEADER:acc_off]
        acc = row[acc_off : acc_off + 2 * n_slots * n_cols].view(np.float64)
        records, times, txids, vals = events_of(row, n_slots, n_cols, cap)
        n = row[0]
        if kinds[j] == KIND_LABEL:
            k = _upper_bound_recent(times, n, t) - 1
            while k >= 0 and times[k] == t and txids[k] != ev_txids[j]:
                k -= 1
            if k < 0 or times[k] != t:
                status[j] = ST_LABEL_EXPIRED if n == 0 or t < times[0] else ST_LABEL_UNMATCHED
                continue
            for c in label_cols:
                delta = ev_vals[j, c] - vals[k, c]
                vals[k, c] = ev_vals[j, c]
                for s in range(n_slots):
                    if ptr[2 * s] <= k < ptr[2 * s + 1]:
                        _kahan_add(acc, 2 * (s * n_cols + c), delta)
            status[j] = ST_LABEL_APPLIED
            continue
        late = newest != NO_TIME and t < newest
        if late and t <= newest - lateness_ns:
            status[j] = ST_TOO_LATE
            continue
        if newest != NO_TIME and t <= newest:  # only then can a copy be buffered
            k = _upper_bound_recent(times, n, t) - 1
            while k >= 0 and times[k] == t and txids[k] != ev_txids[j]:
                k -= 1
            if k >= 0 and times[k] == t:  # redelivered: the original is buffered
                status[j] = ST_DUPLICATE
                continue
        if n == cap and newest != NO_TIME:
            compact(row, n_slots, n_cols, cap, newest - keep_ns)
            n = row[0]
        if n == cap:
            return j
        k = _upper_bound_recent(times, n, t) if late else n
        for i in range(n, k, -1):  # make room at k (late events only)
            for w in range(2 + n_cols):
                records[i, w] = records[i - 1, w]
        times[k] = t
        txids[k] = ev_txids[j]
        for c in range(n_cols):
            vals[k, c] = ev_vals[j, c]
        for c in label_cols:  # a transaction's label is unknown until its label event
            vals[k, c] = 0.0
        row[0] = n + 1
        if not late:
            row[2] = t
            advance(times, vals, n + 1, ptr, acc, win, dly, t)
            _acc_sums(acc, sums)
            emit(vals, ptr, sums, fslot, fcol, fop, out[j])
            if since_prev:
                out[j, n_feat] = (t - newest) / NS_PER_S if newest != NO_TIME else np.nan
            status[j] = ST_OK
            continue
        # Late: shift the ranges (windows still end at `newest`), then compute this event's
        # features at its own time by scanning the buffer up to and including it.
        for s in range(n_slots):
            hi = newest - dly[s]
            lo = hi - win[s]
            if t <= lo:
                ptr[2 * s] += 1
                ptr[2 * s + 1] += 1
            elif t <= hi:
                ptr[2 * s + 1] += 1
                for c in range(n_cols):
                    _kahan_add(acc, 2 * (s * n_cols + c), vals[k, c])
        scan_ptr = np.empty(2 * n_slots, np.int64)
        for s in range(n_slots):
            hi = t - dly[s]
            e = min(_upper_bound(times, k + 1, hi), k + 1)
            b = _upper_bound(times, e, hi - win[s])
            scan_ptr[2 * s] = b
            scan_ptr[2 * s + 1] = e
            for c in range(n_cols):
                tot = 0.0
                for i in range(b, e):
                    tot += vals[i, c]
                sums[s * n_cols + c] = tot
        emit(vals, scan_ptr, sums, fslot, fcol, fop, out[j])
        if since_prev:
            out[j, n_feat] = (t - times[k - 1]) / NS_PER_S if k > 0 else np.nan
        status[j] = ST_LATE
    return kinds.shape[0]
