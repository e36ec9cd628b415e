"""``EntityChain`` alone: delivered in arrival order, every transaction gets the backfill's
features; a redelivered transaction comes out as a ``DUPLICATE`` row without features."""

from __future__ import annotations

import numpy as np
import pandas as pd
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class
from apache_beam.testing.util import assert_that

from streaming.job.arrival import EntityChain
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
