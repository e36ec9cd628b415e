"""``training.model.predict`` on each device: the CPU path, and the CUDA path's single copy
through CuPy (a stand-in here: no GPU; ``bench/gpu_device.sh`` runs the real one and checks
that the GPU's probabilities match the CPU's)."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np
import pytest
import xgboost as xgb

from tests.training.cupy_standin import StandInCupy
from training import model as models


@pytest.fixture(scope="module")
def booster_and_rows() -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0.8).astype(np.int8)
    return models.train(X, y, models.Params(8), "cpu"), X


def test_cpu_probabilities_are_float64_of_any_input_layout(booster_and_rows) -> None:
    booster, X = booster_and_rows
    expected = booster.inplace_predict(X)
    strided = np.asfortranarray(X.astype(np.float64))  # float64, column-major: converted
    scores = models.predict(booster, strided)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, expected.astype(np.float64))


def test_cuda_rows_go_to_the_device_once_as_contiguous_float32(
    booster_and_rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster, X = booster_and_rows
    cupy = StandInCupy()
    monkeypatch.setattr(models, "cupy_module", lambda: cupy)
    scores = models.predict(booster, X.astype(np.float64), "cuda")
    (sent,) = cupy.sent
    assert sent.dtype == np.float32 and sent.flags.c_contiguous and sent.shape == X.shape
    np.testing.assert_array_equal(scores, models.predict(booster, X))
    models.predict(booster, X)  # the CPU path sends nothing
    assert len(cupy.sent) == 1


def test_cuda_without_cupy_scores_and_says_how_to_copy_faster_once(
    booster_and_rows, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    booster, X = booster_and_rows
    monkeypatch.setattr(models, "cupy_module", lambda: None)
    models._warn_no_cupy.cache_clear()
    with caplog.at_level(logging.WARNING, logger=models.log.name):
        first = models.predict(booster, X, "cuda")
        models.predict(booster, X, "cuda")
    np.testing.assert_array_equal(first, models.predict(booster, X))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "fraudstream[gpu]" in warning


def test_a_cupy_that_sees_no_gpu_is_not_used(
    booster_and_rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker image carries CuPy; on a worker without a GPU, ``device=cuda`` must still
    score (through XGBoost, which falls back to the CPU) instead of failing every batch."""
    booster, X = booster_and_rows
    blind = StandInCupy(gpu=False)
    monkeypatch.setitem(sys.modules, "cupy", blind)
    models.cupy_module.cache_clear()
    try:
        assert models.cupy_module() is None
        with warnings.catch_warnings():  # XGBoost's, where it sees no GPU either
            warnings.simplefilter("ignore")
            scores = models.predict(booster, X, "cuda")
        assert blind.sent == []
        np.testing.assert_array_equal(scores, models.predict(booster, X))
        monkeypatch.setitem(sys.modules, "cupy", StandInCupy(gpu=True))
        models.cupy_module.cache_clear()
        assert models.cupy_module() is sys.modules["cupy"]
    finally:
        models.cupy_module.cache_clear()
