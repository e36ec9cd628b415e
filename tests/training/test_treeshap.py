"""TreeSHAP from tables: the values of XGBoost's ``pred_contribs``, and where it steps aside."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from training import model as models
from training.treeshap import ShapTables


def _data(n: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features)).astype(np.float32)
    signal = X[:, 0] + X[:, 1] * X[:, 2 % features] + 0.3 * rng.normal(size=n)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values go their split's default way
    return X, (signal > 0.8).astype(np.float32)


def _booster(X: np.ndarray, y: np.ndarray, rounds: int, **params) -> xgb.Booster:
    params = {"objective": "binary:logistic", "max_depth": 5, "nthread": 1, **params}
    return xgb.train(params, xgb.DMatrix(X, y), rounds)


def _xgboost(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(X), pred_contribs=True)


@pytest.mark.parametrize(
    ("features", "depth", "rounds"),
    [(3, 6, 20), (12, 4, 30)],  # 3 features at depth 6: features repeat along every path
)
def test_contributions_equal_xgboosts(features: int, depth: int, rounds: int):
    X, y = _data(3_000, features)
    booster = _booster(X, y, rounds, max_depth=depth)
    tables = ShapTables.of(booster)
    assert tables is not None
    rows = np.vstack([X[:300], np.full((1, features), np.nan, np.float32)])  # and all missing
    ours, theirs = tables.contributions(rows), _xgboost(booster, rows)
    assert ours.shape == theirs.shape == (len(rows), features + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * np.abs(theirs).max())
    # and they add up to each row's margin (SHAP's local accuracy)
    margin = booster.predict(xgb.DMatrix(rows), output_margin=True)
    np.testing.assert_allclose(ours.sum(axis=1), margin, rtol=0, atol=1e-5)


def test_a_tree_that_is_a_single_leaf_adds_nothing_but_bias():
    X, y = _data(500, 4)
    booster = _booster(X, y, 3, min_split_loss=1e9)  # no split is worth it: every tree a leaf
    tables = ShapTables.of(booster)
    assert tables is not None
    ours = tables.contributions(X[:20])
    assert not ours[:, :-1].any()
    np.testing.assert_allclose(ours, _xgboost(booster, X[:20]), atol=1e-6)


def test_rows_of_the_wrong_width_are_refused():
    X, y = _data(500, 4)
    tables = ShapTables.of(_booster(X, y, 2))
    with pytest.raises(ValueError, match="rows of 4 features"):
        tables.contributions(X[:, :3])


@pytest.mark.parametrize(
    "params",
    [
        {"objective": "multi:softprob", "num_class": 3},  # an output per class
        {"booster": "dart", "rate_drop": 0.3},  # trees weighted at prediction
    ],
)
def test_models_the_tables_do_not_cover_use_xgboosts_own(params: dict):
    X, y = _data(1_000, 4)
    labels = (y + (X[:, 3] > 1)).astype(np.float32) if "num_class" in params else y
    booster = _booster(X, labels, 4, **params)
    assert ShapTables.of(booster) is None
    got = models.contributions(booster, X[:10])
    np.testing.assert_array_equal(got, _xgboost(booster, X[:10]))


def test_categorical_splits_use_xgboosts_own():
    X, y = _data(1_000, 3)
    codes = np.nan_to_num(X[:, 0] > 0).astype(np.int32) + (np.nan_to_num(X[:, 1]) > 0)
    frame = {"c": codes, "x": np.nan_to_num(X[:, 2])}
    data = pd.DataFrame(frame).astype({"c": "category"})
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "tree_method": "hist"},
        xgb.DMatrix(data, y, enable_categorical=True),
        3,
    )
    assert ShapTables.of(booster) is None


def test_tables_are_built_once_per_booster_and_again_when_it_grows():
    X, y = _data(1_000, 4)
    booster = _booster(X, y, 3)
    first = models.shap_tables(booster)
    assert first is not None and models.shap_tables(booster) is first
    grown = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, y), 2, xgb_model=booster)
    assert grown.num_boosted_rounds() == 5
    again = models.shap_tables(grown)
    assert again is not first
    np.testing.assert_allclose(
        models.contributions(grown, X[:50]), _xgboost(grown, X[:50]), atol=1e-5
    )


def test_cuda_contributions_are_xgboosts(monkeypatch: pytest.MonkeyPatch):
    X, y = _data(500, 4)
    booster = _booster(X, y, 2)
    monkeypatch.setattr(models, "shap_tables", lambda b: pytest.fail("tables used on cuda"))
    got = models.contributions(booster, X[:5], device="cuda")  # XGBoost (on the CPU here)
    np.testing.assert_array_equal(got, _xgboost(booster, X[:5]))
