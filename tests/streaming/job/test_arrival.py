"""``EntityChain`` alone: delivered in arrival order, every transaction gets the backfill's
features; a redelivered transaction comes out as a ``DUPLICATE`` row without features."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.pipeline import PipelineVisitor
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class
from apache_beam.testing.util import assert_that

from features import presets
from features.spec import CUSTOMER, FRAUD, TERMINAL, Aggregate, Entity, FeatureSpec, Op
from streaming.job.arrival import EntityChain, chain_order
from tests.streaming.job.stages import (
    SPEC,
    in_arrival_order,
    rows_equal,
    streaming_pipeline,
    to_transactions,
)

NOW = 1_700_000_000.0


def test_events_in_arrival_order_get_the_backfill_features(
    world: tuple[pd.DataFrame, np.ndarray],
) -> None:
    """Labels interleaved with transactions, as a replay delivers them; then a copy of the
    newest transaction (a copy older than the lateness would be ``TOO_LATE`` instead)."""
    df, X = world
    redelivered = to_transactions(df.iloc[-1:])[0]
    stream = (
        _TestStream()
        .add_elements([*in_arrival_order(df), redelivered])
        .advance_watermark_to_infinity()
    )
    expected = {(int(i), "OK"): x for i, x in zip(df["TRANSACTION_ID"], X, strict=True)}
    expected[(redelivered.transaction_id, "DUPLICATE")] = np.full(len(SPEC.names), np.nan)
    with streaming_pipeline() as p:
        rows = p | stream | EntityChain(SPEC, clock=lambda: NOW)
        assert_that(rows, rows_equal(expected, computed_at=NOW))


def _spec(customer_uses_labels: bool, terminal_uses_labels: bool) -> FeatureSpec:
    week = timedelta(days=7)

    def aggregate(entity: Entity, labels: bool) -> Aggregate:
        if labels:
            return Aggregate(entity, Op.MEAN, week, column=FRAUD, delay=week)
        return Aggregate(entity, Op.COUNT, week)

    return FeatureSpec(
        name="chain",
        aggregates=(
            aggregate(CUSTOMER, customer_uses_labels),
            aggregate(TERMINAL, terminal_uses_labels),
        ),
        label_delay=week,
    )


@pytest.mark.parametrize(
    ("customer_labels", "terminal_labels", "order"),
    [
        (False, True, ("terminal", "customer")),
        (True, False, ("customer", "terminal")),
        (True, True, ("customer", "terminal")),
        (False, False, ("customer", "terminal")),
    ],
)
def test_entities_that_read_labels_come_first_in_the_chain(
    customer_labels: bool, terminal_labels: bool, order: tuple[str, ...]
) -> None:
    spec = _spec(customer_labels, terminal_labels)
    assert tuple(e.name for e in chain_order(spec)) == order


def test_labels_are_not_keyed_by_an_entity_that_does_not_read_them() -> None:
    """The job's preset: labels enter at the terminal's state, and the card's state takes its
    input from the terminal's (transactions only) rather than from the entry step."""
    p = streaming_pipeline()
    events = p | beam.Create([]).with_output_types(Any)
    _ = events | "Chain" >> EntityChain(presets.DEFAULT, clock=lambda: NOW)
    steps = _steps(p)
    producers = {out: step.full_label for step in steps for out in step.outputs.values()}
    inputs = {step.full_label: [producers.get(i) for i in step.inputs] for step in steps}
    assert inputs["Chain/TerminalFeatures"] == ["Chain/KeyByEntity"]
    assert inputs["Chain/CustomerFeatures"] == ["Chain/TerminalFeatures"]


def _steps(p: beam.Pipeline) -> list:
    """The applied leaf transforms of ``p``."""
    found = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node) -> None:
            found.append(node)

    p.visit(Visitor())
    return found
