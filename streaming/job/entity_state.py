"""Feature stages: entity state in Beam state, from transactions and labels to feature rows.

The stream computes features with the same kernels as the backfill (``features/``): each entity's
state is an exported :class:`~features.incremental.EntityStore` row (bytes) kept in a
``ReadModifyWriteState`` of a DoFn keyed by the entity's id, and each event is applied to it by
one kernel call (:class:`~features.incremental.ExportedStates`).

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

With initial states (``--initial_state``, a file or the Bigtable state store:
:mod:`streaming.job.initial_states`), an entity starts from its replayed history instead of
from nothing. Its initial state is looked up once, the first time its key is seen (Beam state
never written); from then on Beam state holds it, :data:`NO_STATE` when the lookup found none
and the event left none, so no event looks it up again.

Unlike ``IncrementalEngine`` (which rejects a transaction too late for *any* entity from all of
them), each entity here decides alone: a transaction too late for one entity still updates the
other's state; its features are NaN and its status ``TOO_LATE`` all the same, so it is never
scored as accepted.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
)

from features.incremental import KIND_LABEL, KIND_TX, ExportedStates, Status
from features.plan import EntityPlan, fill_derived
from features.spec import Entity, FeatureSpec
from streaming.job.common import NAMESPACE, TOTALS, BundleCounters, StageCpu
from streaming.job.initial_states import InitialStates, StateLookup
from streaming.schema import Label, Transaction

NO_STATE = b"\0"
"""Beam state of an entity seen with no state to keep (no exported state is one byte long)."""


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


def entity_id(event: Transaction | Label, entity: Entity) -> int:
    return getattr(event, entity.key.lower())


def entity_key(entity: Entity) -> Callable[[Transaction | Label], int]:
    """``entity_id(event, entity)`` as a picklable function of the event, for the per-element
    steps: an ``attrgetter`` of the record's id field."""
    return operator.attrgetter(entity.key.lower())


def event_value(event: Transaction | Label, column: str) -> float:
    if isinstance(event, Transaction):
        return event.amount if column == "TX_AMOUNT" else 0.0  # labels are unknown until later
    return float(event.fraud) if column == "TX_FRAUD" else 0.0


ENTITY_STATE = ReadModifyWriteStateSpec("entity_state", BytesCoder())


ENTITY_STATE_PARAM = beam.DoFn.StateParam(
    ENTITY_STATE
)  # module-level: ruff B008 (no calls in defaults)


def arrival_key(event: Transaction | Label) -> tuple[int, int, int]:
    """Order of application: arrival time (a label arrives at its label time), labels first at
    equal times, then transaction id: the order ``features.stream.with_labels`` replays."""
    if isinstance(event, Label):
        return (event.label_time_ns, 0, event.transaction_id)
    return (event.time_ns, 1, event.transaction_id)


ORDERINGS = ("arrival", "event_time")
DEFAULT_ORDERING = "arrival"
"""The job's: each transaction is scored as it arrives (see :mod:`streaming.job.arrival`)."""


class EntityStateFn(beam.DoFn):
    """Keyed by entity id: applies events with the kernels (state in Beam state, exported
    bytes). Subclasses decide when: :class:`_ChainLink` as they arrive, :class:`_OrderedEntityState`
    once the watermark passes them."""

    def __init__(
        self, plan: EntityPlan, max_lateness: timedelta, initial: InitialStates | None = None
    ) -> None:
        self.plan, self.max_lateness, self.initial = plan, max_lateness, initial
        name = plan.entity.name
        self.counts = BundleCounters(  # by status code
            {int(s): Metrics.counter(NAMESPACE, f"{name}_{s.name.lower()}") for s in Status}
        )
        self.bootstrapped = Metrics.counter(NAMESPACE, f"{name}_initial_state_loaded")
        self.not_bootstrapped = Metrics.counter(NAMESPACE, f"{name}_initial_state_missing")
        self.cpu = StageCpu(f"{name}_features")

    def setup(self) -> None:
        self.states = ExportedStates(self.plan, self.max_lateness)
        self.initial_state = self.initial.lookup(self.plan.entity) if self.initial else None
        # an event's inputs to the kernel, one array per kind, filled in place (event_value's
        # values: the transaction's amount and the label's flag, 0 in every other column)
        columns = list(self.plan.columns) or ["none"]
        self.tx_vals, self.label_vals = np.zeros((1, len(columns))), np.zeros((1, len(columns)))
        self.amount_at = columns.index("TX_AMOUNT") if "TX_AMOUNT" in columns else None
        self.fraud_at = columns.index("TX_FRAUD") if "TX_FRAUD" in columns else None
        self.no_features = np.full((1, self.plan.n_out), np.nan)  # copied for a transaction
        self.label_out = np.empty((1, self.plan.n_out))  # a label has no features

    def teardown(self) -> None:
        TOTALS.flush()

    def _first_sight(self, lookup: StateLookup, key: int) -> bytes:
        """The initial state of ``key`` (``b""``: none), looked up once per key: the caller
        writes Beam state after it. One read per call from the store: buffering a bundle's
        keys to read them together would hold back its events (and their order) until the
        bundle ends, and Beam state is only at hand while an element is processed."""
        blob = lookup(key)
        (self.bootstrapped if blob else self.not_bootstrapped).inc()
        where = "store" if self.initial is not None and self.initial.in_store else "file"
        TOTALS.add(f"states_from_{where}" if blob else f"states_missing_from_{where}")
        return blob or b""

    def _apply(self, key: int, event: Transaction | Label, state) -> EntityBlock | None:
        blob = state.read()
        lookup = self.initial_state if blob is None else None  # first sight: look it up
        if lookup is not None:
            blob = self._first_sight(lookup, key)
        elif blob is None or blob == NO_STATE:
            blob = b""
        is_tx = isinstance(event, Transaction)
        if is_tx:
            kind, vals, out = KIND_TX, self.tx_vals, self.no_features.copy()
            if self.amount_at is not None:
                vals[0, self.amount_at] = event.amount
        else:
            kind, vals, out = KIND_LABEL, self.label_vals, self.label_out
            if self.fraud_at is not None:
                vals[0, self.fraud_at] = event.fraud
        exported, code = self.states.apply(
            key, blob, kind, event.time_ns, event.transaction_id, vals, out
        )
        self.counts.add(code)
        if exported:
            state.write(exported)
        elif lookup is not None:
            state.write(NO_STATE)  # seen: not looked up again
        if not is_tx:
            return None
        return EntityBlock(event, self.plan.entity.name, out[0], code)


def feature_offsets(spec: FeatureSpec) -> dict[str, int]:
    """Where each entity's block starts in a row of ``spec.names``."""
    return {e.name: EntityPlan.build(spec, e).offset for e in spec.entities}


def uses_labels(spec: FeatureSpec, entity: Entity) -> bool:
    return len(EntityPlan.build(spec, entity).label_cols) > 0


def assemble(
    spec: FeatureSpec, offsets: dict[str, int], parts: dict[str, EntityBlock], now: float = 0.0
) -> Any:
    """The :class:`FeatureRow` of one transaction from its entity blocks (``fill_derived``)
    and its looked-up batch features (``tx.lookups``, NaN without), assembled at processing
    time ``now``."""
    return assemble_many(spec, offsets, [parts], now)[0]


def assemble_many(
    spec: FeatureSpec,
    offsets: dict[str, int],
    parts: Sequence[dict[str, EntityBlock]],
    now: float = 0.0,
) -> list[Any]:
    """:func:`assemble` of several transactions at once: one ``fill_derived`` call for all of
    them (its per-call overhead is most of one row's cost), the same rows."""
    txs = [next(iter(p.values())).tx for p in parts]
    out = np.full((len(parts), len(spec.names)), np.nan)
    for i, blocks in enumerate(parts):
        for name, block in blocks.items():
            out[i, offsets[name] : offsets[name] + len(block.values)] = block.values
    status = [max(b.status for b in blocks.values()) for blocks in parts]
    raw = {c: np.array([event_value(tx, c) for tx in txs], np.float64) for c in spec.value_columns}
    fill_derived(spec, out, np.array([tx.time_ns for tx in txs], np.int64), raw)
    n_stream = len(spec.stream_names)
    for i, tx in enumerate(txs):
        if tx.lookups is not None:
            out[i, n_stream:] = tx.lookups
        if status[i] > Status.LATE:
            out[i] = np.nan
    return [FeatureRow(tx, out[i], status[i], now) for i, tx in enumerate(txs)]
