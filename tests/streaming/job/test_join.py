"""``JoinFeatures`` alone: entity blocks in any order -> one feature row per transaction."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
from apache_beam import Create
from apache_beam.testing.util import assert_that

from features.incremental import Status
from features.plan import EntityPlan
from streaming.job.entity_state import EntityBlock
from streaming.job.join import JoinFeatures
from tests.streaming.job.stages import SPEC, batch_pipeline, rows_equal, to_transactions

NOW = 1_700_000_000.0


def _blocks(df: pd.DataFrame, X: np.ndarray, status: Status = Status.OK) -> list[EntityBlock]:
    """Each transaction's block of each entity: its slice of the backfill's row."""
    plans = [EntityPlan.build(SPEC, e) for e in SPEC.entities]
    return [
        EntityBlock(tx, plan.entity.name, x[plan.offset : plan.offset + plan.n_out], int(status))
        for tx, x in zip(to_transactions(df), X, strict=True)
        for plan in plans
    ]


def test_blocks_in_any_order_join_into_the_backfill_rows(
    world: tuple[pd.DataFrame, np.ndarray],
) -> None:
    """The joined row is the backfill's (the derived features filled in by the join); a
    redelivered copy (``DUPLICATE`` blocks) joins with copies only; a transaction one entity
    refused (``TOO_LATE``) is refused as a whole, its features NaN."""
    df, X = world
    blocks = _blocks(df.iloc[:-1], X[:-1])
    blocks += _blocks(df.iloc[:3], X[:3], Status.DUPLICATE)
    refused = df.iloc[-1:]
    customer, terminal = _blocks(refused, X[-1:])
    blocks += [
        customer,
        EntityBlock(terminal.tx, terminal.entity, terminal.values, Status.TOO_LATE),
    ]
    random.Random(0).shuffle(blocks)
    nan = np.full(len(SPEC.names), np.nan)
    expected = {(int(i), "OK"): x for i, x in zip(df["TRANSACTION_ID"][:-1], X[:-1], strict=True)}
    expected |= {(int(i), "DUPLICATE"): nan for i in df["TRANSACTION_ID"][:3]}
    expected[(int(refused["TRANSACTION_ID"].iloc[0]), "TOO_LATE")] = nan
    with batch_pipeline() as p:
        rows = p | Create(blocks) | JoinFeatures(SPEC, clock=lambda: NOW)
        assert_that(rows, rows_equal(expected, computed_at=NOW))
