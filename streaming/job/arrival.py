"""The ``arrival`` ordering (the job's default): a chain of entity states, no join.

A key's events are applied as they reach its state, and a transaction goes from one entity's
state to the next (keyed by that entity's id) with its features so far; the last assembles its
row. Nothing waits for the watermark or for another entity. Delivered in arrival order, the
features equal the backfill's; an event that overtakes an older one is scored without it.

The entities whose features read labels come first in the chain (:func:`chain_order`), so a
label goes through those states only: with the ``default`` preset, the terminal's, then the
card's, and no label is keyed by card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import apache_beam as beam
from apache_beam.typehints import KV
from apache_beam.utils.windowed_value import WindowedValue

from features.plan import EntityPlan
from features.spec import DEFAULT_MAX_LATENESS, Entity, FeatureSpec
from streaming.job.common import Clock, StampedGroups
from streaming.job.entity_state import (
    ENTITY_STATE_PARAM,
    EntityBlock,
    EntityStateFn,
    assemble_many,
    entity_id,
    entity_key,
    feature_offsets,
    uses_labels,
)
from streaming.job.initial_states import InitialStates
from streaming.schema import Label, Transaction


@dataclass(frozen=True, slots=True)
class _Partial:
    """A transaction on its way along the entity chain, with its entity blocks so far."""

    tx: Transaction
    blocks: tuple[EntityBlock, ...]


class _ChainLink(EntityStateFn):
    """Keyed by one entity's id (``arrival`` ordering): apply each event as it arrives, then
    hand it to the next entity's link, keyed by that entity's id; the last link assembles the
    transactions' :class:`FeatureRow` (all of a bundle's at once, at its end) and emits them as
    one list per window, in arrival order, at the earliest of their timestamps: what follows
    (scoring, alerts, the sinks) then costs the runner an element per bundle, not per
    transaction. A label goes along only as far as an entity uses labels.
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
        self.next_id = entity_key(self.next) if self.next is not None else None
        self.uses_labels = len(self.plan.label_cols) > 0
        self.labels_later = any(uses_labels(spec, e) for e in after)
        self.offsets = feature_offsets(spec)

    def start_bundle(self) -> None:
        self.assembling: list[tuple[dict[str, EntityBlock], Any, Any]] = []

    def process(
        self,
        element: tuple[int, Label | _Partial],
        state=ENTITY_STATE_PARAM,
        timestamp=beam.DoFn.TimestampParam,
        window=beam.DoFn.WindowParam,
    ):
        started = self.cpu.start()
        out = self._link(element, state, timestamp, window)
        self.cpu.stop(started)
        return out

    def finish_bundle(self) -> list[WindowedValue]:
        out = []
        if self.assembling:
            started = self.cpu.start()
            pending, self.assembling = self.assembling, []
            rows = assemble_many(self.spec, self.offsets, [p for p, _, _ in pending], self.clock())
            by_window = StampedGroups()
            for row, (_, stamp, window) in zip(rows, pending, strict=True):
                by_window.add(window, stamp, row)
            out = [WindowedValue(batch, t, (w,)) for w, t, batch in by_window.take()]
            self.cpu.stop(started)
        self.counts.report()
        self.cpu.report()
        return out

    def _link(
        self, element: tuple[int, Label | _Partial], state, timestamp: Any, window: Any
    ) -> tuple[Any, ...]:
        key, event = element
        if isinstance(event, Label):
            if self.uses_labels:
                self._apply(key, event, state)
            return ((self.next_id(event), event),) if self.labels_later else ()
        if isinstance(event, Transaction):  # entering the chain: no blocks yet
            event = _Partial(event, ())
        blocks = (*event.blocks, self._apply(key, event.tx, state))
        if self.next is not None:
            return ((self.next_id(event.tx), _Partial(event.tx, blocks)),)
        self.assembling.append(({b.entity: b for b in blocks}, timestamp, window))
        return ()  # assembled at the bundle's end


def chain_order(spec: FeatureSpec) -> tuple[Entity, ...]:
    """The chain's entities: those whose features read labels first, each group in the spec's
    order (a stable sort). A label goes along only as far as the last entity that uses labels."""
    return tuple(sorted(spec.entities, key=lambda e: not uses_labels(spec, e)))


def chain_key(spec: FeatureSpec) -> Callable[[Transaction | Label], int]:
    """``key(record)``: the id a transaction or label enters :class:`EntityChain` keyed by."""
    return entity_key(chain_order(spec)[0])


def _enter(event: Transaction | Label, first: Entity, labels_used: bool):
    """The chain's input, keyed by the first entity's id: a transaction, or a label some entity
    uses (the keyed input the job's parse steps emit, less the unused labels)."""
    if labels_used or isinstance(event, Transaction):
        yield entity_id(event, first), event


class EntityChain(beam.PTransform):
    """Transactions and labels -> lists of :class:`FeatureRow`, one row per transaction, a
    bundle's rows of one window per list (``arrival`` ordering): a stateful step per entity (in
    :func:`chain_order`), keyed by its id, each passing the transaction on with its block (no
    join: nothing waits for another entity's output).

    ``keyed``: the events come keyed already, ``(chain_key(spec)(event), event)`` (the job keys
    them as it parses them: a step of its own would cost the runner once more per element)."""

    def __init__(
        self,
        spec: FeatureSpec,
        max_lateness: timedelta = DEFAULT_MAX_LATENESS,
        clock: Clock = time.time,
        initial: InitialStates | None = None,
        keyed: bool = False,
    ) -> None:
        super().__init__()
        self.spec, self.max_lateness, self.clock = spec, max_lateness, clock
        self.initial, self.keyed = initial, keyed

    def expand(self, events):
        entities = chain_order(self.spec)
        labels_used = uses_labels(self.spec, entities[0])
        chain = events
        if not self.keyed:
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
