"""The reason-code benchmark's figures: both paths timed on the same rows, the ratio theirs."""

from __future__ import annotations

import numpy as np
import xgboost as xgb

from bench.scoring import bench_shap


def test_the_shap_benchmark_times_both_paths_on_the_same_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    booster = xgb.train({"max_depth": 4}, xgb.DMatrix(X, (X[:, 0] > 0).astype(float)), 5)
    result = bench_shap(booster, X[:16])
    assert result["shap_trees"] == 5
    ours, theirs = result["shap_us_per_row_one"], result["xgboost_shap_us_per_row_one"]
    assert ours > 0 and theirs > 0 and result["shap_us_per_row_16"] > 0
    assert result["xgboost_shap_us_per_row_16"] > 0
    assert abs(result["shap_speedup_vs_xgboost"] - theirs / ours) <= 0.1 * theirs / ours + 0.1
