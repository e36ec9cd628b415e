"""``bench/gpu.py`` at quick sizes on this machine (a benchmark run: marked slow).

Every CPU figure is produced everywhere; the GPU figures are measured where XGBoost can use a
GPU, and null with the reason where it cannot.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from bench import gpu

pytestmark = pytest.mark.slow

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
    "gpu_cpu_max_abs_diff",
    "notes",
}
QUICK_BATCHES = ["1", "64", "1024", "65536"]  # --quick caps batches at 64 k


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "gpu-latest"
    assert gpu.main(["--quick", "--out", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


def _device_figures(result: dict, device: str) -> dict[str, object]:
    """Every figure of one device (``cpu``, ``cuda``, ``cuda_cupy``), by a readable name."""
    rates = result["predict_rows_per_s"][device] or {}
    figures: dict[str, object] = {f"rows/s batch {b}": rates.get(b) for b in QUICK_BATCHES}
    for batch in (1, 64):
        for q in ("p50", "p99"):
            figures[f"latency {q} batch {batch}"] = result[f"predict_latency_ms_batch{batch}_{q}"][
                device
            ]
    figures["recommended batch"] = result["recommended_batch_size"][device]
    if device != "cuda_cupy":  # training and SHAP take numpy rows
        figures["shap rows/s"] = result["shap_rows_per_s"][device]
        figures["train s"] = result["train_s_cpu" if device == "cpu" else "train_s_gpu"]
    return figures


def test_quick_run_reports_every_cpu_figure(quick: tuple[dict, str]) -> None:
    result, _ = quick
    assert result.keys() >= KEYS
    assert result["batch_sizes"] == [int(b) for b in QUICK_BATCHES]
    assert set(result["predict_rows_per_s"]["cpu"]) == set(QUICK_BATCHES)
    cpu = _device_figures(result, "cpu")
    assert all(map(_positive, cpu.values())), cpu
    assert _positive(result["predict_rows_per_s_64k_cpu_reference"])
    assert result["shap_rows"]["cpu"] >= 512
    for batch in (1, 64):
        assert cpu[f"latency p50 batch {batch}"] <= cpu[f"latency p99 batch {batch}"]
    assert result["recommended_batch_size"]["cpu"] in result["batch_sizes"]


def test_gpu_figures_are_measured_or_null_with_the_reason(quick: tuple[dict, str]) -> None:
    """The run saw the GPU this machine has (or why it has none, which the table says). With
    one, every GPU figure is measured unless a GPU step failed, which a note says; figures for
    cupy input are measured only when cupy is installed, and a note says when it is not."""
    result, table = quick
    name = gpu.find_gpu()[0]
    assert result["gpu"] == result["gpu_name"] == name
    assert (result["gpu_reason"] is None) == (name is not None)
    assert f"GPU: {name or result['gpu_reason']};" in table
    cuda, cupy = _device_figures(result, "cuda"), _device_figures(result, "cuda_cupy")
    if name is None:
        assert result["gpu_reason"].startswith("no GPU")
        assert result["gpu_inputs"] == []
        assert set(cuda.values()) == set(cupy.values()) == {None}
        for key in (
            "gpu_scoring_speedup_at_64k",
            "gpu_shap_speedup",
            "gpu_train_speedup",
            "gpu_cpu_max_abs_diff",
            "predict_rows_per_s_64k_gpu_without_cupy",
        ):
            assert result[key] is None, key
        return
    failed = any(note.startswith("GPU step failed") for note in result["notes"])
    assert result["gpu_inputs"][0] == "numpy"
    measured = {k: v for k, v in cuda.items() if v is not None}
    assert all(map(_positive, measured.values())), measured
    assert failed or len(measured) == len(cuda), cuda
    if "rows/s batch 65536" in measured:
        assert _positive(result["gpu_scoring_speedup_at_64k"])
        # the CPU's trees scored on the GPU: the same probabilities up to float32 rounding
        assert 0 <= result["gpu_cpu_max_abs_diff"] <= gpu.PARITY_GOAL
    if "cupy" in result["gpu_inputs"]:
        assert failed or all(map(_positive, cupy.values())), cupy
        assert failed or _positive(result["predict_rows_per_s_64k_gpu_without_cupy"])
    else:
        assert set(cupy.values()) == {None}
        assert result["predict_rows_per_s_64k_gpu_without_cupy"] is None
        assert any(note.startswith("cupy not installed") for note in result["notes"])


def test_markdown_lists_every_batch_size(quick: tuple[dict, str]) -> None:
    _, table = quick
    for batch in gpu.BATCHES:
        assert f"| predict rows/s, batch {batch} |" in table
    assert "not run (above --max-batch)" in table  # 1,048,576 under --quick
    assert ">= 50x" in table and "recommended batch size" in table


def test_reference_threads_below_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with more cores than the goal's CPU, the 64 k figure is re-measured."""
    monkeypatch.setattr(gpu, "REFERENCE_THREADS", 1)
    sizes = replace(gpu.QUICK, train_rows=5_000, n_trees=5, predict_budget_s=0.05)
    result = gpu.run(sizes)
    assert _positive(result["predict_rows_per_s_64k_cpu_reference"])
    assert "cpu nthread=1" in gpu.to_markdown(result)
