"""Feature stages: entity state in Beam state, from transactions and labels to feature rows.

The stream computes features with the same kernels as the backfill (``features/``): each entity's
state is an :class:`~features.incremental.EntityStore` row, exported to bytes after every event
and kept in a ``ReadModifyWriteState`` of a DoFn keyed by the entity's id.

Two orderings (:data:`ORDERINGS`):

* ``arrival`` (the streaming job's default, :class:`EntityChain`): a key's events are applied
  as they reach its state, and a transaction goes from one entity's state to the next (keyed by
  that entity's id) with its features so far; the last assembles its row. Nothing waits for the
  watermark or for another entity, so a transaction is scored as soon as it arrives. One older
  than its entity's newest event (within the lateness) is inserted where it belongs, so its own
  features are still exact; events scored before it arrived do not see it. Delivered in arrival
  order (the replay's, :func:`arrival_key`), the features equal the backfill's.
* ``event_time`` (:class:`EntityFeatures` per entity, then :class:`JoinFeatures`): a key's events
  are buffered in Beam state and applied once the watermark passes their arrival time, in
  :func:`arrival_key` order, whatever order Beam delivers them in. The features equal the
  backfill's for any delivery order (batch runs, replays), at the cost of the watermark's delay
  (seconds on Dataflow).

With an initial state file (``--initial_state``, :mod:`streaming.bootstrap`), an entity whose
Beam state is empty starts from its replayed history instead of from nothing.

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
from streaming.bootstrap import InitialStates
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
    """Keyed by entity id: applies events with the kernels (state in Beam state, exported
    bytes). Subclasses decide when: :class:`_ChainLink` as they arrive, :class:`_OrderedEntityState`
    once the watermark passes them."""

    def __init__(
        self, plan: EntityPlan, max_lateness: timedelta, initial: InitialStates | None = None
    ) -> None:
        self.plan, self.max_lateness, self.initial = plan, max_lateness, initial
        name = plan.entity.name
        self.counters = {s: Metrics.counter(NAMESPACE, f"{name}_{s.name.lower()}") for s in Status}
        self.bootstrapped = Metrics.counter(NAMESPACE, f"{name}_initial_state_loaded")

    def setup(self) -> None:
        self.store = EntityStore(self.plan, self.max_lateness)  # numba state: built on the worker
        self.initial_states = self.initial.load(self.plan.entity) if self.initial else {}

    def _apply(self, key: int, event: Transaction | Label, state) -> EntityBlock | None:
        blob = state.read()
        if not blob and key in self.initial_states:  # first sight of a bootstrapped entity
            blob = self.initial_states[key]
            self.bootstrapped.inc()
        if len(self.store) >= _MAX_CACHED_ROWS or (not blob and key in self.store):
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
    """Transactions and labels -> one :class:`EntityBlock` per transaction for ``entity``
    (``event_time`` ordering; :class:`JoinFeatures` joins the entities' blocks).

    Labels reach the state only when the entity's plan has label columns (others ignore them).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        entity: Entity,
        max_lateness: timedelta = timedelta(days=1),
        initial: InitialStates | None = None,
    ) -> None:
        super().__init__()
        self.plan = EntityPlan.build(spec, entity)
        self.entity, self.max_lateness, self.initial = entity, max_lateness, initial

    def expand(self, events):
        entity, uses_labels = self.entity, len(self.plan.label_cols) > 0
        return (
            events
            | "Route" >> beam.Filter(lambda e: uses_labels or isinstance(e, Transaction))
            | "KeyByEntity"
            >> beam.Map(lambda e: (_id_of(e, entity), e)).with_output_types(KV[int, Any])
            # a stage of its own: fused with the other entity's stateful DoFn (same input, same
            # state and timer names) the portable runner lost one entity's timers
            | "Shuffle" >> beam.Reshuffle()
            | "State" >> beam.ParDo(_OrderedEntityState(self.plan, self.max_lateness, self.initial))
        )


@dataclass(frozen=True, slots=True)
class _Partial:
    """A transaction on its way along the entity chain, with its entity blocks so far."""

    tx: Transaction
    blocks: tuple[EntityBlock, ...]


class _ChainLink(_EntityState):
    """Keyed by one entity's id (``arrival`` ordering): apply each event as it arrives, then
    hand it to the next entity's link, keyed by that entity's id; the last link assembles the
    transaction's :class:`FeatureRow`. A label goes along only as far as an entity uses labels.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        entity: Entity,
        max_lateness: timedelta,
        after: tuple[Entity, ...],
        clock: Clock,
        initial: InitialStates | None = None,
    ) -> None:
        super().__init__(EntityPlan.build(spec, entity), max_lateness, initial)
        self.spec, self.clock = spec, clock
        self.next = after[0] if after else None
        self.uses_labels = len(self.plan.label_cols) > 0
        self.labels_later = any(_uses_labels(spec, e) for e in after)
        self.offsets = _offsets(spec)

    def process(self, element: tuple[int, Label | _Partial], state=_STATE_PARAM):
        key, event = element
        if isinstance(event, Label):
            if self.uses_labels:
                self._apply(key, event, state)
            if self.labels_later:
                yield _id_of(event, self.next), event
            return
        blocks = (*event.blocks, self._apply(key, event.tx, state))
        if self.next is not None:
            yield _id_of(event.tx, self.next), _Partial(event.tx, blocks)
        else:
            yield assemble(self.spec, self.offsets, {b.entity: b for b in blocks}, self.clock())


def _offsets(spec: FeatureSpec) -> dict[str, int]:
    """Where each entity's block starts in a row of ``spec.names``."""
    return {e.name: EntityPlan.build(spec, e).offset for e in spec.entities}


def _uses_labels(spec: FeatureSpec, entity: Entity) -> bool:
    return len(EntityPlan.build(spec, entity).label_cols) > 0


def _enter(event: Transaction | Label, first: Entity, labels_used: bool):
    """The chain's input: a transaction with no blocks yet, or a label some entity uses."""
    if isinstance(event, Transaction):
        yield _id_of(event, first), _Partial(event, ())
    elif labels_used:
        yield _id_of(event, first), event


class EntityChain(beam.PTransform):
    """Transactions and labels -> one :class:`FeatureRow` per transaction (``arrival``
    ordering): a stateful step per entity, keyed by its id, each passing the transaction on
    with its block (no join: nothing waits for another entity's output)."""

    def __init__(
        self,
        spec: FeatureSpec,
        max_lateness: timedelta = timedelta(days=1),
        clock: Clock = time.time,
        initial: InitialStates | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.max_lateness, self.clock = spec, max_lateness, clock
        self.initial = initial

    def expand(self, events):
        entities = tuple(self.spec.entities)
        labels_used = any(_uses_labels(self.spec, e) for e in entities)
        chain = events | "KeyByEntity" >> beam.FlatMap(
            _enter, entities[0], labels_used
        ).with_output_types(KV[int, Any])
        for i, entity in enumerate(entities):
            after = entities[i + 1 :]
            link = beam.ParDo(
                _ChainLink(self.spec, entity, self.max_lateness, after, self.clock, self.initial)
            )
            if after:
                link = link.with_output_types(KV[int, Any])
            chain = chain | f"{entity.name.capitalize()}Features" >> link
        return chain


JOIN_BUCKETS = 1024
"""Keys of the join: a transaction joins in bucket ``id % JOIN_BUCKETS``. A key per transaction
would leave a keyed state per transaction behind on the DirectRunner (it keeps every key's); with
64 buckets each bucket's pending map, encoded on every block, held ~15 entries (a quarter of a
local run's CPU)."""


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
        self.offsets = _offsets(spec)

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
