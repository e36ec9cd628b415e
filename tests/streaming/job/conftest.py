"""Shared inputs of the stage tests: a small transaction table, its backfill, a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from features.backfill import backfill
from features.synthetic import transactions
from features.table import validate
from tests.streaming.job.stages import SPEC
from training import model as models
from training.registry import Registry, model_meta


@pytest.fixture(scope="session")
def world() -> tuple[pd.DataFrame, np.ndarray]:
    """120 transactions over 20 days (labels fall inside: the delay is 7 days) and their
    backfill features, ``spec.names`` columns in ``TRANSACTION_ID`` order."""
    df = validate(transactions(n=120, customers=6, terminals=4, days=20, fraud_rate=0.1), SPEC)
    return df, backfill(df, SPEC)[SPEC.names].to_numpy()


@pytest.fixture(scope="session")
def model(
    world: tuple[pd.DataFrame, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[xgb.Booster, Path]:
    """A 10-tree booster trained on ``world``, promoted as ``v0001`` (threshold 0.5) in a
    registry; returns the booster and the registry's directory."""
    df, X = world
    booster = models.train(X.astype(np.float32), df["TX_FRAUD"].to_numpy(), models.Params(10))
    root = tmp_path_factory.mktemp("models")
    registry = Registry(root)
    meta = model_meta(SPEC, 0.5)
    registry.promote(registry.save(booster, meta))
    return booster, root
