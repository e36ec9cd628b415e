"""``bench/gpu.py``'s GPU detection and batch choice, without running the benchmark (that is
``tests/bench/test_gpu.py``). True with a GPU and without one."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import xgboost as xgb

from bench import gpu


def _visible_gpu() -> bool:
    """Whether this XGBoost has CUDA and NVIDIA's driver shows a device (found apart from
    XGBoost, to check ``find_gpu`` against)."""
    tools = shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")
    return bool(xgb.build_info().get("USE_CUDA")) and tools


def test_forced_cuda_finds_a_gpu_exactly_where_the_driver_shows_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked for CUDA without a GPU, XGBoost only warns and trains on the CPU: the probe
    catches that. With a GPU the probe trains on it and the GPU is named."""
    monkeypatch.setenv("FRAUDSTREAM_DEVICE", "cuda")
    name, reason = gpu.find_gpu()
    if _visible_gpu():
        assert name and reason is None, reason
    else:
        assert name is None and reason.startswith("no GPU"), reason


def test_forced_cpu_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DEVICE", "cpu")
    name, reason = gpu.find_gpu()
    assert name is None and reason.startswith("no GPU"), reason


def test_a_quiet_fallback_to_the_cpu_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """XGBoost asked for CUDA warns and trains on the CPU (made to here, GPU or not): the probe
    reads the device the booster used and passes the warning on."""
    train = xgb.train

    def on_the_cpu(params: dict, dtrain: xgb.DMatrix, rounds: int) -> xgb.Booster:
        assert params["device"] == "cuda"
        warnings.warn("No visible GPU is found, setting device to CPU.", UserWarning, 2)
        return train({**params, "device": "cpu"}, dtrain, rounds)

    monkeypatch.setattr(gpu.xgb, "train", on_the_cpu)
    assert gpu.probe_cuda() == (
        "no GPU: XGBoost fell back to device=cpu (No visible GPU is found, setting device to CPU.)"
    )


def test_a_cuda_error_is_no_gpu_with_its_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(params: dict, dtrain: xgb.DMatrix, rounds: int) -> xgb.Booster:
        raise xgb.core.XGBoostError("cudaErrorNoDevice: no CUDA-capable device\nStack trace")

    monkeypatch.setattr(gpu.xgb, "train", failing)
    assert gpu.probe_cuda() == (
        "no GPU: XGBoost failed on device=cuda (cudaErrorNoDevice: no CUDA-capable device)"
    )


def test_recommended_batch_is_the_smallest_near_the_peak() -> None:
    assert gpu.recommended_batch({1: 10, 64: 85, 1_024: 100, 65_536: 90}) == 64
