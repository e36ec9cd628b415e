"""Batch features: daily snapshots of a history, and the point-in-time join that reads them.

A spec's lookups (:class:`~features.spec.AmountProfile`, :class:`~features.spec.CompromiseScore`)
are computed as of each midnight ``D`` from what is known at ``D``: transactions before ``D`` and
labels at least the spec's label delay old. :func:`snapshots` gives, per entity, the rows of its
batch view: ``<key>, event_timestamp (= D), <stored values>``. An entity has a row at ``D`` when it
was active in ``[D - window - 1 day, D)``: its last row is the one whose window has just emptied
(the defaults), so the online store, which keeps each entity's newest row, holds exactly the
values of the latest snapshot.

A transaction at ``t`` uses the snapshot of ``t``'s midnight (the materialization before it);
:func:`point_in_time` is that join (what Feast's historical retrieval returns, within
:data:`LOOKUP_TTL`), and :func:`complete` turns looked-up values into the model's lookup columns
(stored values, then deviations of the transaction from them). The streaming job calls
:func:`complete` on what it reads from the online store, so training and serving share it.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
from numba import njit, prange

from features.spec import (
    AMOUNT,
    BATCH_CADENCE,
    CUSTOMER,
    DAY,
    FRAUD,
    AmountProfile,
    Entity,
    FeatureSpec,
    Lookup,
    to_ns,
)
from features.table import event_times_ns

EVENT_TIMESTAMP = "event_timestamp"
DAY_NS = to_ns(BATCH_CADENCE)
LOOKUP_TTL = 2 * DAY
"""How long after its as-of midnight a snapshot value is served: one missed daily run is
survived; past it the entity reads as missing (its defaults)."""
_HOUR_NS = 3_600 * 10**9


def midnight(times_ns: np.ndarray | int) -> np.ndarray | int:
    """The as-of midnight of each time (naive): the snapshot a transaction at that time uses."""
    return times_ns - times_ns % DAY_NS


def snapshot_days(times_ns: np.ndarray) -> tuple[int, int]:
    """``(first, last)`` as-of midnights a history gives (the day after its first transaction to
    the day after its last: the snapshot the next day's stream uses)."""
    return int(midnight(times_ns.min())) + DAY_NS, int(midnight(times_ns.max())) + DAY_NS


def snapshots(
    df: pd.DataFrame, spec: FeatureSpec, days: tuple[int, int] | None = None
) -> dict[str, pd.DataFrame]:
    """Per entity name with lookups, the rows of its batch view for as-of midnights ``days``
    (``(first, last)`` ns, inclusive; default :func:`snapshot_days` of ``df``).

    ``df``: a validated transaction table (``features.table``) with every column the spec
    reads; ``TX_FRAUD`` is read only where it is known at each as-of midnight.
    """
    times = event_times_ns(df)
    if days is None:
        days = snapshot_days(times) if len(df) else (0, -1)
    first, last = days
    if first % DAY_NS or last % DAY_NS:
        raise ValueError(f"as-of days must be midnights, got {days}")
    out = {}
    for entity in lookup_entities(spec):
        frames = []
        for lookup in spec.entity_lookups(entity):
            keys, at, values = _snapshot(lookup, df, times, spec, first, last)
            frame = pd.DataFrame(values, columns=lookup.stored_names())
            frame.insert(0, entity.key, keys)
            frame.insert(1, EVENT_TIMESTAMP, at.view("datetime64[ns]"))
            frames.append(frame.set_index([entity.key, EVENT_TIMESTAMP]))
        # lookups of one entity share its view: an entity missing from one gets its defaults
        table = pd.concat(frames, axis=1, join="outer").sort_index()
        for lookup in spec.entity_lookups(entity):
            names = lookup.stored_names()
            table[names] = table[names].fillna(dict(zip(names, lookup.defaults, strict=True)))
        out[entity.name] = table.reset_index()
    return out


def lookup_entities(spec: FeatureSpec) -> list[Entity]:
    """The spec's entities with batch features, in spec order (one batch view each)."""
    return [e for e in spec.entities if spec.entity_lookups(e)]


def point_in_time(
    spec: FeatureSpec,
    times_ns: np.ndarray,
    ids: dict[str, np.ndarray],
    tables: dict[str, pd.DataFrame],
) -> dict[str, np.ndarray]:
    """Each transaction's stored values: its entity's latest snapshot row at or before its time
    and at most :data:`LOOKUP_TTL` older, else the defaults. Entity name -> (n, stored)."""
    out = {}
    order = np.argsort(times_ns, kind="stable")
    for entity in lookup_entities(spec):
        names = spec.lookup_stored_names(entity)
        left = pd.DataFrame(
            {entity.key: ids[entity.key][order], "t": times_ns[order].view("datetime64[ns]")}
        )
        right = tables[entity.name].sort_values(EVENT_TIMESTAMP, kind="stable")
        right = right.astype({entity.key: np.int64, EVENT_TIMESTAMP: "datetime64[ns]"})
        joined = pd.merge_asof(
            left,
            right,
            left_on="t",
            right_on=EVENT_TIMESTAMP,
            by=entity.key,
            direction="backward",
            tolerance=pd.Timedelta(LOOKUP_TTL),
            allow_exact_matches=True,
        )
        values = np.empty((len(times_ns), len(names)))
        values[order] = joined[names].to_numpy(np.float64)
        found = np.zeros(len(times_ns), bool)
        found[order] = joined[EVENT_TIMESTAMP].notna().to_numpy()
        values[~found] = defaults(spec, entity)
        out[entity.name] = values
    return out


def defaults(spec: FeatureSpec, entity: Entity) -> np.ndarray:
    """Stored values of an entity the store has no live row for."""
    return np.array([v for k in spec.entity_lookups(entity) for v in k.defaults], np.float64)


def complete(
    spec: FeatureSpec, stored: dict[str, np.ndarray], amounts: np.ndarray, times_ns: np.ndarray
) -> np.ndarray:
    """The model's lookup columns (``spec.lookup_names``) of ``n`` transactions from their
    entities' stored values (entity name -> (n, stored)), their amounts and times."""
    n = len(amounts)
    columns: dict[str, np.ndarray] = {}
    for entity in lookup_entities(spec):
        values = stored[entity.name]
        names = spec.lookup_stored_names(entity)
        if values.shape != (n, len(names)):
            raise ValueError(
                f"{entity.name}: values of shape {values.shape}, expected {(n, len(names))}"
            )
        columns.update(zip(names, values.T, strict=True))
    for lookup in spec.lookups:
        if isinstance(lookup, AmountProfile):
            _, median, mad, usual, _ = (columns[name] for name in lookup.stored_names())
            amount_dev, hour_dev = lookup.derived_names()
            columns[amount_dev] = (amounts - median) / (mad + 1.0)
            hours = (times_ns % DAY_NS) / _HOUR_NS
            gap = np.abs(hours - usual)
            columns[hour_dev] = np.minimum(gap, 24.0 - gap)
    out = np.empty((n, len(spec.lookup_names)))
    for j, name in enumerate(spec.lookup_names):
        out[:, j] = columns[name]
    return out


def lookup_columns(
    df: pd.DataFrame, spec: FeatureSpec, tables: dict[str, pd.DataFrame] | None = None
) -> np.ndarray:
    """The lookup columns of every row of ``df``, point in time, from ``tables`` (default: the
    snapshots of ``df`` itself, as the daily batch job computes them)."""
    if tables is None:
        tables = snapshots(df, spec)
    times = event_times_ns(df)
    ids = {e.key: df[e.key].to_numpy(np.int64) for e in lookup_entities(spec)}
    stored = point_in_time(spec, times, ids, tables)
    return complete(spec, stored, df[AMOUNT.name].to_numpy(np.float64), times)


# --------------------------------------------------------------------------- the computations


def _snapshot(
    lookup: Lookup, df: pd.DataFrame, times: np.ndarray, spec: FeatureSpec, first: int, last: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, as-of ns, values)`` rows of one lookup for the midnights in ``[first, last]``."""
    keys = df[lookup.entity.key].to_numpy(np.int64)
    order = np.lexsort((times, keys))
    if isinstance(lookup, AmountProfile):
        columns = [df[AMOUNT.name].to_numpy(np.float64)[order]]
    else:
        cards = df[CUSTOMER.key].to_numpy(np.int64)
        fraud = df[FRAUD.name].to_numpy(np.float64) > 0.5
        columns = [cards[order], next_fraud(cards, times, fraud)[order]]
    return entity_rows(lookup, keys[order], times[order], columns, spec.label_delay, first, last)


def entity_rows(
    lookup: Lookup,
    keys: np.ndarray,
    times: np.ndarray,
    columns: list[np.ndarray],
    label_delay: timedelta,
    first: int,
    last: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, as-of ns, values)`` rows of ``lookup`` for events sorted by (key, time).

    ``columns``: the amounts (:class:`AmountProfile`), or the card and
    :func:`next_fraud` of each event (:class:`CompromiseScore`). Any grouping of whole keys
    gives the same rows (the Beam batch job passes one key at a time)."""
    if len(keys) == 0:
        return keys, np.zeros(0, np.int64), np.zeros((0, len(lookup.defaults)))
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bounds = np.append(starts, len(keys)).astype(np.int64)
    window = to_ns(lookup.window)
    group, at = _rows(bounds, times, window, first, last)
    values = np.empty((len(group), len(lookup.defaults)))
    if isinstance(lookup, AmountProfile):
        _profiles(bounds, times, columns[0], group, at, window, values)
    else:
        cards, nxt = columns
        _compromise(bounds, times, cards, nxt, group, at, window, to_ns(label_delay), values)
    return keys[bounds[group]], at, values


NO_FRAUD = np.iinfo(np.int64).max


def next_fraud(cards: np.ndarray, times: np.ndarray, fraud: np.ndarray) -> np.ndarray:
    """For each transaction, the time of its card's first fraud at or after it
    (:data:`NO_FRAUD` if none): what a terminal's compromise score needs of every card."""
    order = np.lexsort((times, cards))
    out = np.empty(len(cards), np.int64)
    out[order] = _next_fraud(cards[order], times[order], fraud[order])
    return out


@njit(cache=True)
def _next_fraud(cards, times, fraud):
    """Over events sorted by (card, time): a run of equal times shares its fraud, if any."""
    out = np.empty(len(cards), np.int64)
    upcoming = NO_FRAUD
    end = len(cards)
    while end > 0:
        start = end - 1  # the run [start, end): one card, one time
        while (
            start > 0 and cards[start - 1] == cards[end - 1] and times[start - 1] == times[end - 1]
        ):
            start -= 1
        if end == len(cards) or cards[end] != cards[end - 1]:
            upcoming = NO_FRAUD
        for i in range(start, end):
            if fraud[i]:
                upcoming = times[i]
        for i in range(start, end):
            out[i] = upcoming
        end = start
    return out


@njit(cache=True)
def _rows(bounds, times, window, first, last):
    """The (group, as-of midnight) pairs: each midnight in ``[first, last]`` at which the group
    had an event in ``[D - window - 1 day, D)``."""
    n_groups = len(bounds) - 1
    lo = np.empty(n_groups, np.int64)
    count = np.zeros(n_groups, np.int64)
    for g in range(n_groups):
        t0, t1 = times[bounds[g]], times[bounds[g + 1] - 1]
        a = max(t0 - t0 % DAY_NS + DAY_NS, first)
        b = min(t1 - t1 % DAY_NS + DAY_NS + window, last)
        lo[g] = a
        count[g] = (b - a) // DAY_NS + 1 if b >= a else 0
    group = np.empty(count.sum(), np.int64)
    at = np.empty(count.sum(), np.int64)
    i = 0
    for g in range(n_groups):
        for k in range(count[g]):
            group[i] = g
            at[i] = lo[g] + k * DAY_NS
            i += 1
    return group, at


@njit(cache=True, parallel=True)
def _profiles(bounds, times, amounts, group, at, window, out):
    """AmountProfile values of each (group, as-of) row over its events in ``[D - window, D)``."""
    for i in prange(len(group)):
        g, d = group[i], at[i]
        b, e = bounds[g], bounds[g + 1]
        lo = b + np.searchsorted(times[b:e], d - window)
        hi = b + np.searchsorted(times[b:e], d)
        n = hi - lo
        out[i, 0] = n
        if n == 0:
            out[i, 1:] = np.nan
            continue
        amount = amounts[lo:hi]
        median = np.median(amount)
        out[i, 1] = median
        out[i, 2] = np.median(np.abs(amount - median))
        c = 0.0
        s = 0.0
        for t in times[lo:hi]:
            angle = 2.0 * math.pi * ((t % DAY_NS) / _HOUR_NS) / 24.0
            c += math.cos(angle)
            s += math.sin(angle)
        c /= n
        s /= n
        out[i, 3] = (math.atan2(s, c) * 24.0 / (2.0 * math.pi)) % 24.0
        out[i, 4] = 1.0 - math.sqrt(c * c + s * s)


@njit(cache=True, parallel=True)
def _compromise(bounds, times, cards, next_fraud, group, at, window, delay, out):
    """CompromiseScore values of each (terminal, as-of) row: cards that used the terminal in
    ``[D - window, D)``, and the share whose next fraud after their first use there is known
    (at most ``D - delay``)."""
    for i in prange(len(group)):
        g, d = group[i], at[i]
        b, e = bounds[g], bounds[g + 1]
        lo = b + np.searchsorted(times[b:e], d - window)
        hi = b + np.searchsorted(times[b:e], d)
        visits = cards[lo:hi]
        order = np.argsort(visits, kind="mergesort")  # stable: a card's first use comes first
        n_cards = 0
        compromised = 0
        for k in range(len(order)):
            card = visits[order[k]]
            if k > 0 and visits[order[k - 1]] == card:
                continue
            n_cards += 1
            if next_fraud[lo + order[k]] <= d - delay:
                compromised += 1
        out[i, 0] = n_cards
        out[i, 1] = compromised / n_cards if n_cards else 0.0
