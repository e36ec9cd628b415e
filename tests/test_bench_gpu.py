"""``bench/gpu.py`` at quick sizes on this machine: every CPU figure, GPU fields null here."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from bench import gpu

KEYS = {
    "machine",
    "cpu_count",
    "xgboost",
    "xgboost_cuda_build",
    "gpu",
    "gpu_name",
    "gpu_reason",
    "train_s_cpu",
    "train_s_gpu",
    "predict_rows_per_s",
    "predict_latency_ms_batch1_p50",
    "predict_latency_ms_batch1_p99",
    "predict_latency_ms_batch64_p50",
    "predict_latency_ms_batch64_p99",
    "shap_rows_per_s",
    "gpu_scoring_speedup_at_64k",
    "recommended_batch_size",
    "notes",
}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "gpu-latest"
    assert gpu.main(["--quick", "--out", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


def test_quick_run_reports_every_cpu_figure(quick: tuple[dict, str]) -> None:
    result, _ = quick
    assert result.keys() >= KEYS
    assert result["batch_sizes"] == [1, 64, 1_024, 65_536]  # --quick caps batches at 64 k
    rates = result["predict_rows_per_s"]["cpu"]
    assert set(rates) == {"1", "64", "1024", "65536"} and all(map(_positive, rates.values()))
    for key in ("train_s_cpu", "predict_rows_per_s_64k_cpu_reference"):
        assert _positive(result[key]), key
    assert _positive(result["shap_rows_per_s"]["cpu"]) and result["shap_rows"]["cpu"] >= 512
    for batch in (1, 64):
        p50 = result[f"predict_latency_ms_batch{batch}_p50"]["cpu"]
        p99 = result[f"predict_latency_ms_batch{batch}_p99"]["cpu"]
        assert _positive(p50) and _positive(p99) and p50 <= p99
    assert result["recommended_batch_size"]["cpu"] in result["batch_sizes"]


def test_gpu_fields_are_null_without_a_gpu(quick: tuple[dict, str]) -> None:
    result, _ = quick
    assert result["gpu"] is None and result["gpu_name"] is None
    assert result["gpu_reason"].startswith("no GPU")
    assert result["gpu_inputs"] == []
    for key in ("train_s_gpu", "gpu_scoring_speedup_at_64k", "gpu_shap_speedup"):
        assert result[key] is None, key
    for key in ("predict_rows_per_s", "recommended_batch_size", "predict_latency_ms_batch64_p50"):
        assert result[key]["cuda"] is None and result[key]["cuda_cupy"] is None, key
    assert result["shap_rows_per_s"]["cuda"] is None


def test_markdown_lists_every_batch_size(quick: tuple[dict, str]) -> None:
    _, table = quick
    for batch in gpu.BATCHES:
        assert f"| predict rows/s, batch {batch} |" in table
    assert "not run (above --max-batch)" in table  # 1,048,576 under --quick
    assert ">= 50x" in table and "recommended batch size" in table


def test_forced_cuda_without_a_gpu_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """XGBoost only warns and trains on the CPU when asked for CUDA without a GPU."""
    monkeypatch.setenv("FRAUDSTREAM_DEVICE", "cuda")
    name, reason = gpu.find_gpu()
    assert name is None and reason.startswith("no GPU")


def test_reference_threads_below_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with more cores than the goal's CPU, the 64 k figure is re-measured."""
    monkeypatch.setattr(gpu, "REFERENCE_THREADS", 1)
    sizes = replace(gpu.QUICK, train_rows=5_000, n_trees=5, predict_budget_s=0.05)
    result = gpu.run(sizes)
    assert _positive(result["predict_rows_per_s_64k_cpu_reference"])
    assert "cpu nthread=1" in gpu.to_markdown(result)


def test_recommended_batch_is_the_smallest_near_the_peak() -> None:
    assert gpu.recommended_batch({1: 10, 64: 85, 1_024: 100, 65_536: 90}) == 64
