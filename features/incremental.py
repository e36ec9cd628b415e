"""Incremental path: per-entity state updated event by event (or a micro-batch at a time).

Semantics (the backfill gives the same float64 values for the same events in time order):

* A transaction's features are computed as of its own time, over the events of its entity that
  arrived before it, plus itself.
* Out of order: a transaction older than its entity's newest event but within ``max_lateness``
  of it is inserted where it belongs: later events see it, and its own features are computed
  from its windows at its time (equal to the backfill up to float rounding). One older than
  that is rejected (status ``TOO_LATE``) and changes no state.
* Redelivery: a transaction whose id the state already holds at the same time is ignored
  (status ``DUPLICATE``). The original is always still buffered when the copy is not too late,
  so every copy is caught.
* Labels (transaction id, entity ids, transaction time, fraud) update the buffered transaction
  they name: the same id, its time within a second of the label's copy of it (a case system may
  keep times in milliseconds or seconds). For stream == backfill a label must arrive no later
  than its transaction's time plus the delay (at equal times, deliver labels first). A label for
  a transaction no longer buffered (older than the state's horizon) is ignored with status
  ``LABEL_EXPIRED``; one for a transaction the state has not seen with ``LABEL_UNMATCHED``; one
  for an entity without state with ``LABEL_UNKNOWN_ENTITY``. Until its label arrives a
  transaction counts as not fraudulent.
* State per entity holds the events of the last ``horizon + max_lateness`` (horizon = longest
  window plus its delay) and is compacted when its buffer fills or when it is exported.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

import numpy as np
from numba import njit, types
from numba.typed import Dict

from features import kernels
from features.plan import DerivedPlan, EntityPlan, lateness_ns, value_rows
from features.spec import Entity, FeatureSpec

KIND_TX = kernels.KIND_TX
KIND_LABEL = kernels.KIND_LABEL
_KIND_SKIP = kernels.KIND_SKIP
_DENSE_IDS = 1 << 22  # ids below this are looked up in a table (at most 32 MB), others hashed


class Status(IntEnum):
    """What happened to each event of a batch."""

    OK = kernels.ST_OK
    LATE = kernels.ST_LATE
    TOO_LATE = kernels.ST_TOO_LATE
    LABEL_APPLIED = kernels.ST_LABEL_APPLIED
    LABEL_EXPIRED = kernels.ST_LABEL_EXPIRED
    LABEL_UNMATCHED = kernels.ST_LABEL_UNMATCHED
    LABEL_UNKNOWN_ENTITY = kernels.ST_LABEL_UNKNOWN_ENTITY
    LABEL_NOT_USED = kernels.ST_LABEL_NOT_USED  # no label-based feature for its entities
    DUPLICATE = kernels.ST_DUPLICATE  # a transaction id already applied: ignored


class EntityStore:
    """The states of every entity of one type: one int64 row each in a growable arena."""

    def __init__(self, plan: EntityPlan, max_lateness: timedelta, capacity: int = 16) -> None:
        self.plan = plan
        self.keep_ns = plan.horizon_ns + lateness_ns(max_lateness)
        self.lateness_ns = lateness_ns(max_lateness)
        self.n_slots = len(plan.win)
        self.n_cols = plan.n_cols
        self.n_ext = plan.n_extras
        self.cap = capacity
        # entity id -> arena row: a table for ids in [0, len(self.dense)), a dict for the rest
        self.dense = np.full(0, -1, np.int64)
        self.sparse = Dict.empty(types.int64, types.int64)
        self.n_rows = 0
        self.arena = np.zeros((64, self._width(capacity)), np.int64)
        # At least every state's newest time: a batch whose transactions are all within the
        # lateness of it cannot hold one too late for any state.
        self.newest_bound = kernels.NO_TIME

    def _width(self, cap: int) -> int:
        return kernels.row_width(self.n_slots, self.n_cols, self.n_ext, cap)

    def __len__(self) -> int:
        return self.n_rows

    def __contains__(self, key: int) -> bool:
        return self._row(key) >= 0

    def __iter__(self) -> Iterator[int]:
        """Ids of the entities with state."""
        yield from (int(k) for k in np.flatnonzero(self.dense >= 0))
        yield from (int(k) for k in self.sparse)

    def _row(self, key: int) -> int:
        if 0 <= key < len(self.dense):
            return int(self.dense[key])
        return self.sparse.get(key, -1)

    def _widen_table(self, ids: np.ndarray) -> None:
        """Grow the id table to cover ``ids`` where they are small non-negative ints (at most
        ``_DENSE_IDS``, and 16 slots per state it may hold: sparse ids go to the dict)."""
        hi = int(ids.max()) if len(ids) else -1
        if len(self.dense) <= hi < min(_DENSE_IDS, 16 * (self.n_rows + len(ids)) + 65_536):
            grown = np.full(min(max(hi + 1, 2 * len(self.dense), 1024), _DENSE_IDS), -1, np.int64)
            grown[: len(self.dense)] = self.dense
            self.dense = grown

    def _ensure_rows(self, n: int) -> None:
        if n > len(self.arena):
            grown = np.zeros((max(n, 2 * len(self.arena)), self.arena.shape[1]), np.int64)
            grown[: self.n_rows] = self.arena[: self.n_rows]  # a new state sets its own row
            self.arena = grown

    def rows_for(self, ids: np.ndarray, is_tx: np.ndarray) -> np.ndarray:
        """Arena rows for a batch: transactions create state, labels only look it up."""
        ids = np.ascontiguousarray(ids, np.int64)
        self._ensure_rows(self.n_rows + int(is_tx.sum()))
        self._widen_table(ids)
        rows, self.n_rows = _rows_of(
            self.dense, self.sparse, self.n_rows, ids, is_tx, self.arena, self.cap
        )
        return rows

    def row_of(self, ids: np.ndarray, create: bool) -> np.ndarray:
        """Arena row of each id (-1 for an unknown id when ``create`` is false)."""
        ids = np.ascontiguousarray(ids, np.int64)
        return self.rows_for(ids, np.full(len(ids), create))

    def _grow(self) -> None:
        """Double every row's buffer capacity (rare: amortised O(1) per event)."""
        old, cap, used = self.arena, self.cap, self.n_rows
        keep = self._width(cap)  # header, sums and the buffer's records, in place
        self.cap = 2 * cap
        # Rows not in use yet are left untouched (their pages unmapped until then): a new
        # state sets its own row (_rows_of).
        self.arena = np.zeros((len(old), self._width(self.cap)), np.int64)
        self.arena[:used, :keep] = old[:used]
        self.arena[:used, 1] = self.cap

    def process(
        self,
        kinds: np.ndarray,
        rows: np.ndarray,
        times: np.ndarray,
        txids: np.ndarray,
        vals: np.ndarray,
        out: np.ndarray,
        status: np.ndarray,
    ) -> None:
        """Apply events in order; transactions' features go to ``out`` (one row per event)."""
        p = self.plan
        if len(times):  # labels' and skipped events' times too: still a bound
            self.newest_bound = max(self.newest_bound, int(times.max()))
        first = 0
        while True:
            first = kernels.process(
                self.arena,
                rows,
                kinds,
                times,
                txids,
                vals,
                p.label_cols,
                p.win,
                p.dly,
                p.walks,
                p.summed,
                p.extras_at,
                len(p.fslot),
                p.since_prev,
                self.keep_ns,
                self.lateness_ns,
                out,
                status,
                first,
            )
            if first == len(kinds):
                return
            self._grow()

    def export(self, key: int) -> bytes:
        """The compact state of one entity (for Beam state, :func:`kernels.export_row`);
        ``b""`` if it has none."""
        row = self._row(key)
        if row < 0:
            return b""
        r = self.arena[row]
        words = kernels.export_row(r, self.n_slots, self.n_cols, self.n_ext, self.cap, self.keep_ns)
        return words.tobytes()

    def load(self, key: int, blob: bytes) -> None:
        """Restore one entity's state from :meth:`export`; ``ValueError`` if it does not fit."""
        words = state_words(key, blob, self.plan)
        while int(words[1]) > self.cap:
            self._grow()
        row = int(self.row_of(np.array([key]), create=True)[0])
        r = self.arena[row]
        r[:] = 0
        kernels.restore_row(r, words, self.n_slots, self.n_cols, self.n_ext, self.cap)
        self.newest_bound = max(self.newest_bound, int(r[2]))


_NO_WORDS = np.empty(0, np.int64)
_COUNT_AND_FORMAT = struct.Struct("=q8xq")  # an exported state's words 1 and 3 (n, format)


def state_words(key: int, blob: bytes, plan: EntityPlan) -> np.ndarray:
    """The words of entity ``key``'s exported state ``blob`` in the current format (a state
    of format 0 is migrated: :func:`kernels.migrate_row`); ``ValueError`` unless it is a state
    of ``plan``."""
    head, record = plan.state_shape
    if len(blob) >= 8 * head:  # the usual case first: a keyed step reads a state per event
        n, fmt = _COUNT_AND_FORMAT.unpack_from(blob, 8)
        if fmt == kernels.STATE_FORMAT and len(blob) == 8 * (head + n * record):
            return np.frombuffer(blob, np.int64)
    if len(blob) % 8:
        raise ValueError(f"state of {key} is not a state ({len(blob)} bytes)")
    return _older_state(key, np.frombuffer(blob, np.int64), plan)


def _older_state(key: int, words: np.ndarray, plan: EntityPlan) -> np.ndarray:
    """:func:`state_words` with every check: a state of format 0 is migrated, one that is not
    a state of ``plan`` refused."""
    n_slots, n_cols = len(plan.win), plan.n_cols
    fmt = int(words[3]) if len(words) > 3 else 0
    if fmt not in (0, kernels.STATE_FORMAT):
        raise ValueError(
            f"state of {key} has format {fmt}; this version reads {kernels.STATE_FORMAT} and 0"
        )
    n_ext = plan.n_extras if fmt else 0
    head = kernels.row_width(n_slots, n_cols, n_ext, 0)
    if len(words) < head or len(words) != kernels.row_width(n_slots, n_cols, n_ext, int(words[1])):
        raise ValueError(f"state of {key} does not match this spec ({len(words)} words)")
    return words if fmt else kernels.migrate_row(words, n_slots, n_cols, plan.extras_at)


class ExportedStates:
    """One entity type's events applied one at a time to exported states (:meth:`EntityStore.export`
    bytes), the form a keyed stream step keeps per key: one kernel call per event and no store.
    The results equal restoring the state into an :class:`EntityStore`, processing the event and
    exporting it again, bit for bit. One instance per thread: it reuses a scratch array."""

    def __init__(self, plan: EntityPlan, max_lateness: timedelta) -> None:
        self.plan = plan
        self.keep_ns = plan.horizon_ns + lateness_ns(max_lateness)
        self.lateness_ns = lateness_ns(max_lateness)
        self.status = np.empty(1, np.int64)  # the kernel's status of the event, reused

    def apply(
        self, key: int, blob: bytes, kind: int, time_ns: int, txid: int, vals: np.ndarray,
        out: np.ndarray,
    ) -> tuple[bytes, int]:  # fmt: skip
        """Apply one event (``kind`` ``KIND_TX`` or ``KIND_LABEL``, ``vals`` 1 x the plan's
        columns) to entity ``key``'s state ``blob`` (``b""``: none); a transaction's features go
        to ``out`` (1 x the plan's features). Returns the new state (``b""`` while the entity
        has none) and the event's :class:`Status` code. ``ValueError`` if ``blob`` is not a
        state of this plan."""
        words = state_words(key, blob, self.plan) if blob else _NO_WORDS
        p = self.plan
        status = self.status
        status[0] = Status.LABEL_NOT_USED
        exported = kernels.apply_exported(
            words, kind, time_ns, txid, vals, p.label_cols, p.win, p.dly, p.walks, p.summed,
            p.extras_at, len(p.fslot), p.since_prev, self.keep_ns, self.lateness_ns, out, status,
        )  # fmt: skip
        return exported.tobytes(), int(status[0])


@njit(cache=True)
def _rows_of(dense, sparse, n_rows, ids, create, arena, cap):
    """Look up each id's arena row, adding an empty state where ``create[i]``; -1 if unknown.

    Returns the rows and the new row count.
    """
    out = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        key = ids[i]
        in_table = 0 <= key < dense.shape[0]
        row = dense[key] if in_table else sparse.get(key, -1)
        if row < 0 and create[i]:
            row = n_rows
            n_rows += 1
            if in_table:
                dense[key] = row
            else:
                sparse[key] = row
            arena[row, :] = 0
            kernels.new_row(arena[row], cap)
        out[i] = row
    return out, n_rows


@njit(cache=True)
def _finish(kinds, per_entity, out, times, raw, calendar_kinds, ratio_args):
    """One status per event from each entity's (``per_entity[e, j]``): the worst for
    transactions; for labels, applied if any entity applied it, else the first entity's
    reason. A transaction scored (``OK`` or ``LATE``) gets its derived columns as
    :func:`features.plan.fill_derived` computes them (``raw[r]`` into column r, the calendar
    from the next column on, ``ratio_args``: the numerators and :func:`kernels.ratios`'
    columns); every other row becomes NaN."""
    numerators, ratio_columns, denominator_columns = ratio_args
    col0 = raw.shape[0]
    values = np.empty(calendar_kinds.shape[0])
    start, end = np.int64(1), np.int64(0)  # the hour of ``values``: none yet
    status = np.empty(kinds.shape[0], np.int64)
    for j in range(kinds.shape[0]):
        if kinds[j] == _KIND_SKIP:
            st = kernels.ST_TOO_LATE
        elif kinds[j] == KIND_TX:
            st = per_entity[0, j]
            for e in range(1, per_entity.shape[0]):
                st = max(st, per_entity[e, j])
        else:
            st = kernels.ST_LABEL_NOT_USED
            for e in range(per_entity.shape[0]):
                if per_entity[e, j] == kernels.ST_LABEL_APPLIED:
                    st = kernels.ST_LABEL_APPLIED
                    break
                if st == kernels.ST_LABEL_NOT_USED:
                    st = per_entity[e, j]
        status[j] = st
        if st > kernels.ST_LATE:
            for f in range(out.shape[1]):  # not out[j, :]: no view per event
                out[j, f] = np.nan
            continue
        for r in range(col0):
            out[j, r] = raw[r, j]
        t = times[j]
        if t < start or t >= end:  # labels, which interleave a week older, never get here
            start = kernels.calendar_values(calendar_kinds, t, values)
            end = start + kernels.NS_PER_HOUR
        for k in range(calendar_kinds.shape[0]):
            out[j, col0 + k] = values[k]
        for k in range(ratio_columns.shape[0]):
            d = out[j, denominator_columns[k]]
            out[j, ratio_columns[k]] = kernels.ratio(numerators[k, j], d)
    return status


@njit(cache=True)
def _reject_too_late(kinds, times, rows, newest, lateness):
    """Mark transactions too late for any of their entities.

    ``newest[e]`` is entity e's column of newest times (a view of its arena), indexed by
    ``rows[e]``. It is advanced as the batch's transactions are checked, so each sees those
    before it, and restored before returning: O(batch), whatever the number of entities.
    """
    k, m = rows.shape
    undo_entity = np.empty(m * k, np.int64)
    undo_row = np.empty(m * k, np.int64)
    undo_time = np.empty(m * k, np.int64)
    n_undo = 0
    for j in range(m):
        if kinds[j] != KIND_TX:
            continue
        t = times[j]
        late = False
        for e in range(k):
            nw = newest[e][rows[e, j]]
            if nw != kernels.NO_TIME and t < nw and t <= nw - lateness[e]:
                late = True
        if late:
            kinds[j] = _KIND_SKIP
            continue
        for e in range(k):
            column = newest[e]
            r = rows[e, j]
            if t > column[r]:
                undo_entity[n_undo] = e
                undo_row[n_undo] = r
                undo_time[n_undo] = column[r]
                n_undo += 1
                column[r] = t
    for i in range(n_undo - 1, -1, -1):
        newest[undo_entity[i]][undo_row[i]] = undo_time[i]


@dataclass
class Batch:
    """Events in arrival order as column arrays; labels carry the fraud flag in ``fraud``."""

    kind: np.ndarray  # KIND_TX or KIND_LABEL
    transaction_id: np.ndarray
    time_ns: np.ndarray
    ids: dict[str, np.ndarray]  # entity key column -> ids
    values: dict[str, np.ndarray]  # numeric columns (TX_AMOUNT, TX_FRAUD, ...)

    def __len__(self) -> int:
        return len(self.kind)

    def __getitem__(self, part: slice) -> Batch:
        """The events of ``part`` (views, not copies)."""
        return Batch(
            kind=self.kind[part],
            transaction_id=self.transaction_id[part],
            time_ns=self.time_ns[part],
            ids={k: v[part] for k, v in self.ids.items()},
            values={k: v[part] for k, v in self.values.items()},
        )


class IncrementalEngine:
    """All features of a spec, updated one micro-batch at a time; holds every entity's state."""

    def __init__(
        self, spec: FeatureSpec, max_lateness: timedelta = timedelta(days=1), capacity: int = 16
    ) -> None:
        self.spec = spec
        self.plans = {e: EntityPlan.build(spec, e) for e in spec.entities}
        self.stores = {e: EntityStore(p, max_lateness, capacity) for e, p in self.plans.items()}
        self._n_columns, self._n_computed = len(spec.names), len(spec.stream_names)

    def process(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``batch`` in order. Returns (features, status).

        ``features`` has one row per event and one column per ``spec.names`` (NaN for labels and
        rejected transactions); ``status`` holds :class:`Status` codes.
        """
        m = len(batch)
        kinds = batch.kind.astype(np.int64, copy=True)
        times = np.ascontiguousarray(batch.time_ns, np.int64)
        txids = np.ascontiguousarray(batch.transaction_id, np.int64)
        is_tx = kinds == KIND_TX
        # Every column of a scored transaction is written below (the entity blocks, then the
        # derived columns) and every other row set to NaN (_finish); only the spec's
        # looked-up columns, which the caller fills, start as NaN.
        out = np.empty((m, self._n_columns))
        out[:, self._n_computed :] = np.nan
        entities = self.spec.entities
        rows = np.empty((len(entities), m), np.int64)
        for e, entity in enumerate(entities):
            rows[e] = self.stores[entity].rows_for(batch.ids[entity.key], is_tx)
        if self._may_be_too_late(times[is_tx]):
            newest = tuple(self.stores[e].arena[:, 2] for e in entities)  # views, not copies
            lateness = np.array([self.stores[e].lateness_ns for e in entities], np.int64)
            _reject_too_late(kinds, times, rows, newest, lateness)
        per_entity = np.full((len(entities), m), int(Status.LABEL_NOT_USED), np.int64)
        for e, entity in enumerate(entities):
            plan = self.plans[entity]
            cols = [batch.values[c] for c in plan.columns] or [np.zeros(m)]
            vals = np.ascontiguousarray(np.column_stack(cols), np.float64)
            block = out[:, plan.offset : plan.offset + plan.n_out]
            self.stores[entity].process(kinds, rows[e], times, txids, vals, block, per_entity[e])
        derived = DerivedPlan.of(self.spec)
        raw = value_rows(batch.values, [name for _, name in derived.raw], m)
        numerators = value_rows(batch.values, derived.numerators, m)
        ratio_args = (numerators, derived.ratio_columns, derived.denominator_columns)
        return out, _finish(kinds, per_entity, out, times, raw, derived.calendar_kinds, ratio_args)

    def _may_be_too_late(self, tx_times: np.ndarray) -> bool:
        """Whether a transaction at one of ``tx_times`` could be too late for a state: false
        when all are within every store's lateness of the newest time any state or the batch
        holds (the common case, checked without touching the states)."""
        if not len(tx_times):
            return False
        newest = max(int(tx_times.max()), *(s.newest_bound for s in self.stores.values()))
        lateness = min(s.lateness_ns for s in self.stores.values())
        return int(tx_times.min()) <= newest - lateness

    def export(self, entity: Entity, key: int) -> bytes:
        """Compact state of one entity (see :meth:`EntityStore.export`)."""
        return self.stores[entity].export(key)

    def load(self, entity: Entity, key: int, blob: bytes) -> None:
        self.stores[entity].load(key, blob)
