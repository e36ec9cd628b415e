"""Backfill walks as one pass over the whole history in time order, without grouping by entity.

A window's count and sum change only when an event *enters* it (at its own time plus the
window's delay) or *leaves* it (that plus the window's length). Both happen in time order, so a
window over all entities is a merge of the history with itself shifted: one pointer per kind of
change walks the time-sorted arrays, and each change updates a small per-entity state (count,
sum, compensation) that stays in cache. Results come out in time order, one sequential column
per feature; no sort by entity, no scattered writes.

The values are those of :func:`features.kernels._step` bit for bit, in two cases:

* **no delay**: an entity's events leave in the order ``_step`` removes them, and before the
  entity's next event enters, so each sum sees the same operations in the same order (the reset
  of an emptied window included);
* **exact sums** (every value an integer, the absolute sum below 2**53: labels, flags): every
  partial sum is exact, so any order gives the same sum (and ``_step``'s compensation stays 0).

A count is exact either way, and so is an exact sum: a delayed window's are what entered it (its
events ``delay`` old, counted once for every window of that delay by :func:`entered`) less what
left it. Other windows (a delayed sum of amounts, a scan for std, min or max) need each entity's
events side by side: :func:`features.kernels.backfill_entity` does those.

The merges choose each step with masks, not branches: which pointer moves next is as random as
the data, and a mispredicted branch per step would cost more than the step. A step is a few
dozen instructions, so the kernels count them: positions are unsigned (Numba adds no
negative-index fix-up to those), and each output column is its own array or None (a column not
asked for costs no test, and no register).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features.kernels import NS_PER_S

EXACT_LIMIT = 2.0**53


@njit(cache=True, fastmath={"reassoc", "contract"})
def exact_sums(vals):
    """Whether every sum of ``vals`` is exact in float64: all integers, absolute sum < 2**52
    (half the limit: the float total of the check may itself be rounded down).

    Blocks of branch-free steps (``reassoc`` lets the block's sum vectorise; NaN and inf keep
    IEEE semantics: a NaN is no integer, an inf sum is not below the limit)."""
    n = vals.shape[0]
    total = 0.0
    for start in range(0, n, 4096):
        fractional = False
        block = 0.0
        for i in range(start, min(start + 4096, n)):
            v = vals[i]
            fractional |= v != np.floor(v)
            block += abs(v)
        if fractional:
            return False
        total += block
    return total < EXACT_LIMIT / 2


_U0 = np.uint64(0)
_U1 = np.uint64(1)


@njit(cache=True, inline="always")
def _emit(count, total, mean, r, cnt, s, live):
    """A window's features of the event at output row ``r`` (a column None: not asked for)."""
    if count is not None:
        count[r] = cnt
    if total is not None:
        total[r] = s if live else 0.0
    if mean is not None:
        mean[r] = s / max(cnt, 1.0)


@njit(cache=True, inline="always")
def _row(p, rows):
    """Event ``p``'s output row (``p``: unsigned)."""
    return p if rows is None else np.uint64(rows[p])


@njit(cache=True, inline="always")
def _pick(times, keys, key_lo, shift, j, p):
    """A merge step's choice: ``(moves, q, g)``, whether event j moves (it is ``shift`` old at
    event p's time; 1 or 0), the event the step reads (j if so, else p) and its group."""
    moves = np.uint64(times[j] + shift <= times[p])
    q = p + ((j - p) & (_U0 - moves))
    return moves, q, np.uint64(keys[q] - key_lo)


@njit(cache=True, nogil=True)
def recent(times, keys, key_lo, n_groups, vals, window, exact, count, total, mean, rows):
    """Count / sum / mean over ``(t - window, t]`` of every event's entity, into the columns
    ``count``, ``total`` and ``mean`` (each an array, one value per output row, or None).

    ``times`` is sorted (ties in arrival order), ``keys[p] - key_lo`` the group of event p in
    ``range(n_groups)``, ``vals`` the summed column (None: counts only; plain sums if ``exact``,
    else compensated as ``_step`` does). Event p's row is ``rows[p]``, or p if ``rows`` is None.
    (None is a type of its own to Numba: each combination compiles to a loop without the tests.)
    """
    n = np.uint64(times.shape[0])
    state = np.zeros((n_groups, 4))  # count, sum, compensation: one cache line per entity
    left = _U0  # the oldest event still in its window
    p = _U0  # the next event to enter (and be emitted)
    while p < n:
        # step: event `left` leaves (it is at least a window old), else event p enters
        leaves, q, g = _pick(times, keys, key_lo, window, left, p)
        sign = 1.0 - 2.0 * np.float64(leaves)
        c = state[g, 0] + sign
        state[g, 0] = c
        live = c > 0.5  # a count: an emptied window restarts its sum at 0
        s = 0.0
        if vals is not None:
            x = sign * vals[q]
            t = state[g, 1]
            s = t + x
            if not exact:  # Neumaier, as kernels._kahan
                a = (t - s) + x
                b = (x - s) + t
                cp = state[g, 2] + (a if abs(t) >= abs(x) else b)
                s = s if live else 0.0
                cp = cp if live else 0.0
                state[g, 2] = cp
                state[g, 1] = s
                s += cp
            else:
                state[g, 1] = s
        # a leave writes the pending row too; its entering step overwrites it
        _emit(count, total, mean, _row(p, rows), c, s, live)
        left += leaves
        p += _U1 - leaves


@njit(cache=True, nogil=True)
def entered(times, keys, key_lo, n_groups, vals, delay, counts, sums):
    """Each event's entity's count (and sum of ``vals``, unless None) of events at least
    ``delay`` (> 0) old, into ``counts[p]`` and ``sums[p]``; sums must be exact."""
    n = np.uint64(times.shape[0])
    state = np.zeros((n_groups, 2))  # count, sum
    j = _U0  # the next event to count (at its time + delay)
    p = _U0  # the next event to emit
    while p < n:
        counted, q, g = _pick(times, keys, key_lo, delay, j, p)
        one = np.float64(counted)
        c = state[g, 0] + one
        state[g, 0] = c
        counts[p] = c  # a counting step writes the pending event too: its own step overwrites it
        if vals is not None:
            s = state[g, 1] + one * vals[q]
            state[g, 1] = s
            sums[p] = s
        j += counted
        p += _U1 - counted


@njit(cache=True, inline="always")
def _delayed_step(
    times, keys, key_lo, vals, shift, counts, sums, state, count, total, mean, rows, j, p
):
    """One step of :func:`delayed`'s merge: event j leaves the window (it is ``shift`` old at
    event p's time), else event p is emitted; returns the next ``(j, p)``."""
    leaves, q, g = _pick(times, keys, key_lo, shift, j, p)
    one = np.float64(leaves)
    left = state[g, 0] + one
    state[g, 0] = left
    c = counts[p] - left
    s = 0.0
    if vals is not None:
        gone = state[g, 1] + one * vals[q]
        state[g, 1] = gone
        s = sums[p] - gone
    _emit(count, total, mean, _row(p, rows), c, s, c > 0.5)  # a leave: overwritten later
    return j + leaves, p + (_U1 - leaves)


@njit(cache=True, nogil=True)
def delayed(
    times, keys, key_lo, n_groups, vals, window, delay, counts, sums, count, total, mean, rows
):
    """Count / sum / mean over ``(t - delay - window, t - delay]`` (``delay`` > 0), as
    :func:`recent`, from what :func:`entered` counted at ``delay`` (``counts``, ``sums``): less
    what has left the window. Sums must be exact (:func:`exact_sums`): an entity's events enter
    and leave here in time order, where ``_step`` takes all that left before all that entered."""
    n = np.uint64(times.shape[0])
    state = np.zeros((n_groups, 2))  # count, sum of the events that left
    shift = delay + window
    j = _U0  # the next event to leave (at its time + delay + window)
    p = _U0  # the next event to emit
    while p < n:
        j, p = _delayed_step(
            times, keys, key_lo, vals, shift, counts, sums, state, count, total, mean, rows, j, p
        )


@njit(cache=True, nogil=True)
def delayed_pair(
    times, keys, key_lo, n_groups, vals, delay, counts, sums, window_a, window_b,
    count_a, total_a, mean_a, count_b, total_b, mean_b, rows,
):  # fmt: skip
    """Two windows of one delay, as :func:`delayed` each, their merges' steps side by side in
    one loop: a step waits on its own pointer chain (a load and a compare), so the two chains
    overlap (about 3/4 of the time of two loops; a third window crowds the registers)."""
    n = np.uint64(times.shape[0])
    state_a, state_b = np.zeros((n_groups, 2)), np.zeros((n_groups, 2))
    shift_a, shift_b = delay + window_a, delay + window_b
    j_a = p_a = j_b = p_b = _U0
    while p_a < n or p_b < n:  # the tests are predicted: each fails once, at its window's end
        if p_a < n:
            j_a, p_a = _delayed_step(
                times, keys, key_lo, vals, shift_a, counts, sums, state_a,
                count_a, total_a, mean_a, rows, j_a, p_a,
            )  # fmt: skip
        if p_b < n:
            j_b, p_b = _delayed_step(
                times, keys, key_lo, vals, shift_b, counts, sums, state_b,
                count_b, total_b, mean_b, rows, j_b, p_b,
            )  # fmt: skip


@njit(cache=True, nogil=True)
def since_previous(times, keys, key_lo, n_groups, out, rows):
    """Seconds since the entity's previous event (NaN for its first) into the column ``out``."""
    last = np.full(n_groups, np.iinfo(np.int64).min)
    for p in range(np.uint64(times.shape[0])):
        g = keys[p] - key_lo
        t = times[p]
        before = last[g]
        out[_row(p, rows)] = np.nan if before == np.iinfo(np.int64).min else (t - before) / NS_PER_S
        last[g] = t
