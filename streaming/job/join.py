"""``JoinFeatures``: the ``event_time`` ordering's stateful join of entity blocks per
transaction."""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
)
from apache_beam.typehints import KV

from features.incremental import Status
from features.spec import FeatureSpec
from streaming.job.common import Clock, StageCpu
from streaming.job.entity_state import EntityBlock, assemble, feature_offsets

_PARTS = ReadModifyWriteStateSpec("parts", PickleCoder())


_PARTS_PARAM = beam.DoFn.StateParam(_PARTS)


JOIN_BUCKETS = 1024
"""Keys of the join: a transaction joins in bucket ``id % JOIN_BUCKETS``. A key per transaction
would leave a keyed state per transaction behind on the DirectRunner (it keeps every key's);
few buckets make each bucket's pending map, encoded on every block, large (with 64, ~15 entries
and a quarter of a local run's CPU)."""


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
        self.offsets = feature_offsets(spec)
        self.cpu = StageCpu("join")

    def finish_bundle(self) -> None:
        self.cpu.report()

    def process(self, element: tuple[int, EntityBlock], parts_state=_PARTS_PARAM):
        started = self.cpu.start()
        out = self._join(element[1], parts_state)
        self.cpu.stop(started)
        return out

    def _join(self, block: EntityBlock, parts_state) -> list[Any]:
        out = []
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
            out.append(assemble(self.spec, self.offsets, row, self.clock()))
        if pending:
            parts_state.write(pending)
        else:
            parts_state.clear()
        return out


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
