"""The ``event_time`` ordering: a key's events wait in Beam state until the watermark passes
them, then apply in :func:`~streaming.job.entity_state.arrival_key` order, whatever order Beam
delivered them in (:class:`EntityFeatures`, one per entity; ``JoinFeatures`` joins them).
Exact for any delivery order, at the cost of the watermark's delay."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import Timestamp

from features.plan import EntityPlan
from features.spec import DEFAULT_MAX_LATENESS, Entity, FeatureSpec
from streaming.job.entity_state import ENTITY_STATE_PARAM, EntityStateFn, arrival_key, entity_id
from streaming.job.initial_states import InitialStates
from streaming.schema import Label, Transaction

_PENDING = BagStateSpec("pending", PickleCoder())


_PENDING_PARAM = beam.DoFn.StateParam(_PENDING)


_NEXT = ReadModifyWriteStateSpec("next_flush", VarIntCoder())


_NEXT_PARAM = beam.DoFn.StateParam(_NEXT)


_FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)


_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)


class _OrderedEntityState(EntityStateFn):
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
        started = self.cpu.start()
        event = element[1]
        pending.add(event)
        due = arrival_key(event)[0] // 1_000  # micros
        current = next_flush.read()
        if current is None or due < current:
            flush.set(Timestamp(micros=due))
            next_flush.write(due)
        self.cpu.stop(started)

    @on_timer(_FLUSH)
    def on_flush(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        state=ENTITY_STATE_PARAM,
        pending=_PENDING_PARAM,
        next_flush=_NEXT_PARAM,
        flush=_FLUSH_PARAM,
    ):
        started = self.cpu.start()
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
        blocks = [self._apply(key, event, state) for event in due]
        self.cpu.stop(started)
        return [b for b in blocks if b is not None]

    def finish_bundle(self) -> None:
        self.counts.report()
        self.cpu.report()


class EntityFeatures(beam.PTransform):
    """Transactions and labels -> one :class:`EntityBlock` per transaction for ``entity``
    (``event_time`` ordering; :class:`JoinFeatures` joins the entities' blocks).

    Labels reach the state only when the entity's plan has label columns (others ignore them).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        entity: Entity,
        max_lateness: timedelta = DEFAULT_MAX_LATENESS,
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
            >> beam.Map(lambda e: (entity_id(e, entity), e)).with_output_types(KV[int, Any])
            # a stage of its own: fused with the other entity's stateful DoFn (same input, same
            # state and timer names) the portable runner lost one entity's timers
            | "Shuffle" >> beam.Reshuffle()
            | "State" >> beam.ParDo(_OrderedEntityState(self.plan, self.max_lateness, self.initial))
        )
