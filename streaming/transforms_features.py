"""Feature stages: entity state in Beam state (``EntityFeatures``), the join (``JoinFeatures``).

The stream computes features with the same kernels as the backfill (``features/``): each entity's
state is an :class:`~features.incremental.EntityStore` row, exported to bytes after every event
and kept in a ``ReadModifyWriteState`` of a DoFn keyed by the entity's id.

Two orderings (:data:`ORDERINGS`):

* ``arrival`` (the streaming job's default): a key's events are applied as they reach its state.
  Nothing waits for the watermark, so a transaction is scored as soon as it arrives. A
  transaction older than its entity's newest event (within the lateness) is inserted where it
  belongs, so its own features are still exact; events scored before it arrived do not see it.
  Delivered in arrival order (the replay's, :func:`arrival_key`), the features equal the
  backfill's.
* ``event_time``: a key's events are buffered in Beam state and applied once the watermark passes
  their arrival time, in :func:`arrival_key` order, whatever order Beam delivers them in. The
  features equal the backfill's for any delivery order (batch runs, replays), at the cost of the
  watermark's delay (seconds on Dataflow).

Unlike ``IncrementalEngine`` (which rejects a transaction too late for *any* entity from all of
them), each entity here decides alone: a transaction too late for one entity still updates the
other's state; its features are NaN and its status ``TOO_LATE`` all the same, so it is never
scored as accepted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import BytesCoder, PickleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import Timestamp

from features.incremental import KIND_LABEL, KIND_TX, EntityStore, Status
from features.plan import EntityPlan, fill_derived
from features.spec import Entity, FeatureSpec
from streaming.schema import Label, Transaction
from streaming.transforms import NAMESPACE, Clock

_MAX_CACHED_ROWS = 1024  # entities a worker's scratch store holds before it is rebuilt


@dataclass(frozen=True, slots=True)
class EntityBlock:
    """One entity's features of one transaction (``values`` in ``spec.entity_names`` order)."""

    tx: Transaction
    entity: str
    values: np.ndarray
    status: int


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """All features of one transaction in ``spec.names`` order, and the merged status."""

    tx: Transaction
    features: np.ndarray
    status: int
    computed_at: float = 0.0
    """Processing time (epoch seconds) when the row was assembled: the features' age starts."""

    @property
    def accepted(self) -> bool:
        return self.status <= Status.LATE


def _id_of(event: Transaction | Label, entity: Entity) -> int:
    return getattr(event, entity.key.lower())


def _value(event: Transaction | Label, column: str) -> float:
    if isinstance(event, Transaction):
        return event.amount if column == "TX_AMOUNT" else 0.0  # labels are unknown until later
    return float(event.fraud) if column == "TX_FRAUD" else 0.0


_STATE = ReadModifyWriteStateSpec("entity_state", BytesCoder())
_STATE_PARAM = beam.DoFn.StateParam(_STATE)  # module-level: ruff B008 (no calls in defaults)
_PENDING = BagStateSpec("pending", PickleCoder())
_PENDING_PARAM = beam.DoFn.StateParam(_PENDING)
_NEXT = ReadModifyWriteStateSpec("next_flush", VarIntCoder())
_NEXT_PARAM = beam.DoFn.StateParam(_NEXT)
_FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)
_PARTS = ReadModifyWriteStateSpec("parts", PickleCoder())
_PARTS_PARAM = beam.DoFn.StateParam(_PARTS)


def arrival_key(event: Transaction | Label) -> tuple[int, int, int]:
    """Order of application: arrival time (a label arrives at its label time), labels first at
    equal times, then transaction id: the order ``features.stream.with_labels`` replays."""
    if isinstance(event, Label):
        return (event.label_time_ns, 0, event.transaction_id)
    return (event.time_ns, 1, event.transaction_id)


ORDERINGS = ("arrival", "event_time")


class _EntityState(beam.DoFn):
    """Keyed by entity id: apply each event as it arrives, with the kernels (state in Beam
    state, exported bytes); a transaction yields its :class:`EntityBlock`."""

    def __init__(self, plan: EntityPlan, max_lateness: timedelta) -> None:
        self.plan, self.max_lateness = plan, max_lateness
        name = plan.entity.name
        self.counters = {s: Metrics.counter(NAMESPACE, f"{name}_{s.name.lower()}") for s in Status}

    def setup(self) -> None:
        self.store = EntityStore(self.plan, self.max_lateness)  # numba state: built on the worker

    def process(self, element: tuple[int, Transaction | Label], state=_STATE_PARAM):
        block = self._apply(element[0], element[1], state)
        if block is not None:
            yield block

    def _apply(self, key: int, event: Transaction | Label, state) -> EntityBlock | None:
        blob = state.read()
        if len(self.store) >= _MAX_CACHED_ROWS or (not blob and key in self.store.rows):
            self.store = EntityStore(self.plan, self.max_lateness)  # no stale row for this key
        if blob:
            self.store.load(key, blob)
        is_tx = isinstance(event, Transaction)
        plan = self.plan
        rows = self.store.rows_for(np.array([key], np.int64), np.array([is_tx]))
        vals = np.array([[_value(event, c) for c in plan.columns] or [0.0]], np.float64)
        out = np.full((1, plan.n_out), np.nan)
        status = np.full(1, int(Status.LABEL_NOT_USED), np.int64)
        self.store.process(
            np.array([KIND_TX if is_tx else KIND_LABEL], np.int64),
            rows,
            np.array([event.time_ns], np.int64),
            np.array([event.transaction_id], np.int64),
            vals,
            out,
            status,
        )
        self.counters[Status(int(status[0]))].inc()
        exported = self.store.export(key)
        if exported:
            state.write(exported)
        if not is_tx:
            return None
        return EntityBlock(event, plan.entity.name, out[0], int(status[0]))


class _OrderedEntityState(_EntityState):
    """Keyed by entity id: buffer events until the watermark passes them, then apply them in
    :func:`arrival_key` order (the ``event_time`` ordering).

    Transactions and labels come from two inputs, so a key's events can arrive in any order;
    an event-time timer makes the application order deterministic and equal to the replay's.
    """

    def process(
        self,
        element: tuple[int, Transaction | Label],
        pending=_PENDING_PARAM,
        next_flush=_NEXT_PARAM,
        flush=_FLUSH_PARAM,
    ):
        event = element[1]
        pending.add(event)
        due = arrival_key(event)[0] // 1_000  # micros
        current = next_flush.read()
        if current is None or due < current:
            flush.set(Timestamp(micros=due))
            next_flush.write(due)

    @on_timer(_FLUSH)
    def on_flush(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        state=_STATE_PARAM,
        pending=_PENDING_PARAM,
        next_flush=_NEXT_PARAM,
        flush=_FLUSH_PARAM,
    ):
        events = sorted(pending.read(), key=arrival_key)
        limit = fired.micros
        due = [e for e in events if arrival_key(e)[0] // 1_000 <= limit]
        rest = events[len(due) :]
        pending.clear()
        for e in rest:
            pending.add(e)
        if rest:
            nxt = arrival_key(rest[0])[0] // 1_000
            flush.set(Timestamp(micros=nxt))
            next_flush.write(nxt)
        else:
            next_flush.clear()
        for event in due:
            block = self._apply(key, event, state)
            if block is not None:
                yield block


class EntityFeatures(beam.PTransform):
    """Transactions and labels -> one :class:`EntityBlock` per transaction for ``entity``.

    Labels reach the state only when the entity's plan has label columns (others ignore them).
    ``ordering`` is one of :data:`ORDERINGS` (see the module's docstring).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        entity: Entity,
        max_lateness: timedelta = timedelta(days=1),
        ordering: str = "event_time",
    ) -> None:
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, not {ordering!r}")
        self.plan = EntityPlan.build(spec, entity)
        self.entity, self.max_lateness, self.ordering = entity, max_lateness, ordering

    def expand(self, events):
        entity, uses_labels = self.entity, len(self.plan.label_cols) > 0
        keyed = (
            events
            | "Route" >> beam.Filter(lambda e: uses_labels or isinstance(e, Transaction))
            | "KeyByEntity"
            >> beam.Map(lambda e: (_id_of(e, entity), e)).with_output_types(KV[int, Any])
        )
        if self.ordering == "arrival":
            return keyed | "State" >> beam.ParDo(_EntityState(self.plan, self.max_lateness))
        return (
            keyed
            # a stage of its own: fused with the other entity's stateful DoFn (same input, same
            # state and timer names) the portable runner lost one entity's timers
            | "Shuffle" >> beam.Reshuffle()
            | "State" >> beam.ParDo(_OrderedEntityState(self.plan, self.max_lateness))
        )


JOIN_BUCKETS = 64
"""Keys of the join: a transaction joins in bucket ``id % JOIN_BUCKETS``. A key per transaction
would leave a keyed state per transaction behind on the DirectRunner, which scans them all for
timers on every round (a run slowed down as it went)."""


class _Join(beam.DoFn):
    """Keyed by bucket: wait for every entity's block of a transaction, then assemble the row.

    The bucket's state maps (transaction id, is a redelivered copy) to the blocks so far. Every
    entity emits one block per transaction (a rejected one too, with its status), so a join
    always completes and its entry is removed then; no timer is needed (an event-time expiry
    could already be due when the first block arrives, since blocks are emitted after the
    watermark passed their event time).
    """

    def __init__(self, spec: FeatureSpec, clock: Clock) -> None:
        self.spec, self.clock = spec, clock
        self.offsets = {e.name: EntityPlan.build(spec, e).offset for e in spec.entities}

    def process(self, element: tuple[int, EntityBlock], parts_state=_PARTS_PARAM):
        block = element[1]
        pending: dict[tuple[int, bool], dict[str, list[EntityBlock]]] = parts_state.read() or {}
        join_key = (block.tx.transaction_id, block.status == Status.DUPLICATE)
        parts = pending.setdefault(join_key, {})
        parts.setdefault(block.entity, []).append(block)  # copies queue up: first with first
        if len(parts) == len(self.offsets):
            row = {entity: blocks.pop(0) for entity, blocks in parts.items()}
            if not any(parts.values()):
                del pending[join_key]
            else:
                pending[join_key] = {e: b for e, b in parts.items() if b}
            yield assemble(self.spec, self.offsets, row, self.clock())
        if pending:
            parts_state.write(pending)
        else:
            parts_state.clear()


def assemble(
    spec: FeatureSpec, offsets: dict[str, int], parts: dict[str, EntityBlock], now: float = 0.0
) -> Any:
    """The :class:`FeatureRow` of one transaction from its entity blocks (``fill_derived``),
    assembled at processing time ``now``."""
    tx = next(iter(parts.values())).tx
    out = np.full((1, len(spec.names)), np.nan)
    for name, block in parts.items():
        out[0, offsets[name] : offsets[name] + len(block.values)] = block.values
    status = max(b.status for b in parts.values())
    raw = {c: np.array([_value(tx, c)]) for c in spec.value_columns}
    fill_derived(spec, out, np.array([tx.time_ns], np.int64), raw)
    if status > Status.LATE:
        out[:] = np.nan
    return FeatureRow(tx, out[0], status, now)


class JoinFeatures(beam.PTransform):
    """Entity blocks -> one :class:`FeatureRow` per transaction (a stateful join on its id)."""

    def __init__(self, spec: FeatureSpec, clock: Clock = time.time) -> None:
        super().__init__()
        self.spec, self.clock = spec, clock

    def expand(self, blocks):
        return (
            blocks
            # a redelivered copy is refused by every entity: the join pairs copies with copies
            | "KeyByBucket"
            >> beam.Map(lambda b: (b.tx.transaction_id % JOIN_BUCKETS, b)).with_output_types(
                KV[int, Any]
            )
            | "Join" >> beam.ParDo(_Join(self.spec, self.clock))
        )
