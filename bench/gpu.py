"""``make bench-gpu``: XGBoost on the GPU against the CPU, same model and rows, in one run.

Training time (``hist``), ``inplace_predict`` rows/s and latency at batches of 1 to 1 M rows,
and the job's SHAP contributions rows/s (the CPU's tables, XGBoost's GPU TreeSHAP), on
synthetic float32 rows as wide as the ``default`` preset. Without a usable GPU it says so
and reports the CPU figures only (GPU fields null).
Writes ``<out>.json`` and ``<out>.md`` (default ``bench/results/gpu-latest``); the scoring
handler takes its batch size from ``recommended_batch_size``. Run with
``python -m bench.gpu [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xgboost as xgb
from tqdm import tqdm

from bench.run import RESULTS, Metrics, machine
from features import presets
from training import model as models

BATCHES = (1, 64, 1_024, 65_536, 1_048_576)
LATENCY_BATCHES = (1, 64)
SPEEDUP_BATCH = 65_536
SPEEDUP_GOAL = 50.0  # goal: GPU scoring >= 50x the 2-core CPU at batch 64 k
REFERENCE_THREADS = 2  # the goal's CPU: a 2-core machine, emulated with nthread=2 on bigger ones
PEAK_SHARE = 0.8  # recommended batch: the smallest reaching 80% of the device's peak rows/s
SHAP_MAX_ROWS = 65_536
PARITY_GOAL = 1e-5  # the same trees on both devices: float32 sums in another order


@dataclass(frozen=True)
class Sizes:
    """How much work one run does; the budgets bound the CPU's share of it."""

    train_rows: int = 1_000_000
    max_batch: int = 1_048_576
    n_trees: int = 200
    max_depth: int = 6
    train_budget_s: float = 150.0  # projected CPU training above this: fewer rows, both devices
    predict_budget_s: float = 3.0  # per device and batch size
    shap_budget_s: float = 20.0  # per device
    seed: int = 0


QUICK = Sizes(
    train_rows=20_000,
    max_batch=65_536,
    n_trees=20,
    train_budget_s=20.0,
    predict_budget_s=0.3,
    shap_budget_s=1.0,
)


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` float32 rows as wide as the default preset; labels (~3% 1s) by a seeded rule."""
    width = len(presets.get("default").names)
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 20.0, (rows, width)).astype(np.float32)
    weights = rng.normal(size=width).astype(np.float32)
    score = (X - 40.0) @ weights / 40.0 + 0.5 * (X[:, 0] > 80) * (X[:, 1] > 60)
    y = (score > np.quantile(score, 0.97)).astype(np.int8)
    return X, y


def _gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "unknown (nvidia-smi not found)"
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    names = done.stdout.strip().splitlines()
    return names[0].strip() if done.returncode == 0 and names else "unknown (nvidia-smi failed)"


def probe_cuda() -> str | None:
    """None when XGBoost trains on the GPU here, else why not (it falls back to the CPU quietly)."""
    X, y = synthetic(256, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            booster = xgb.train(
                {"device": "cuda", "tree_method": "hist"}, xgb.QuantileDMatrix(X, label=y), 1
            )
        except xgb.core.XGBoostError as error:
            return f"no GPU: XGBoost failed on device=cuda ({str(error).splitlines()[0]})"
    used = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    if not used.startswith("cuda"):
        said = "; ".join(str(w.message).strip() for w in caught)[:200]
        return f"no GPU: XGBoost fell back to device={used}" + (f" ({said})" if said else "")
    return None


def find_gpu() -> tuple[str | None, str | None]:
    """(GPU name, None) when XGBoost can use a GPU here, else (None, reason starting 'no GPU')."""
    if not xgb.build_info().get("USE_CUDA"):
        return None, "no GPU: this XGBoost is built without CUDA"
    if models.detect_device() != "cuda":
        return None, "no GPU: no NVIDIA device visible (or FRAUDSTREAM_DEVICE=cpu)"
    reason = probe_cuda()
    return (None, reason) if reason else (_gpu_name(), None)


def time_calls(
    fn: Callable[[], object], min_repeat: int, max_repeat: int, budget_s: float
) -> np.ndarray:
    """Seconds of each call: at least ``min_repeat``, more while under ``budget_s``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeat and (
        len(times) < min_repeat or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def bench_predict(
    predict: Callable[[np.ndarray], object], X: np.ndarray, batches: list[int], budget_s: float
) -> tuple[dict[int, int], dict[int, tuple[float, float]]]:
    """Rows/s (from the median call) and latency (p50, p99 ms) of ``predict`` per batch size."""
    rates, latency = {}, {}
    for batch in batches:
        rows = X[:batch]
        for _ in range(3):  # warm-up: allocations, the device's first launches
            predict(rows)
        small = batch in LATENCY_BATCHES
        times = time_calls(
            lambda rows=rows: predict(rows),
            min_repeat=200 if small else 3,
            max_repeat=5_000 if small else 50,
            budget_s=budget_s,
        )
        p50, p99 = np.percentile(times, [50, 99])
        rates[batch] = round(batch / p50)
        latency[batch] = (round(1e3 * p50, 4), round(1e3 * p99, 4))
    return rates, latency


def bench_shap(
    booster: xgb.Booster, X: np.ndarray, budget_s: float, device: str
) -> tuple[int, int]:
    """(rows/s, rows) of the job's SHAP contributions on ``device``: rows sized so three calls
    fit in ``budget_s``."""
    probe = X[: min(512, len(X))]
    t0 = time.perf_counter()
    models.contributions(booster, probe, device)  # also the warm-up (and the CPU's tables)
    rate = len(probe) / (time.perf_counter() - t0)
    rows = int(min(SHAP_MAX_ROWS, len(X), max(len(probe), rate * budget_s / 3)))
    times = time_calls(lambda: models.contributions(booster, X[:rows], device), 3, 3, 0.0)
    return round(rows / float(np.median(times))), rows


def recommended_batch(rates: dict[int, int]) -> int:
    """The smallest batch size reaching ``PEAK_SHARE`` of the best rows/s measured."""
    peak = max(rates.values())
    return min(b for b, r in rates.items() if r >= PEAK_SHARE * peak)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a and b else None


def run(sizes: Sizes) -> Metrics:
    """Every figure for the CPU, and for the GPU when one is usable."""
    load = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
    gpu, reason = find_gpu()
    if reason:
        print(f"no GPU found: CPU figures only ({reason})", file=sys.stderr, flush=True)
    batches = [b for b in BATCHES if b <= sizes.max_batch]
    cpus = os.cpu_count() or 1
    notes: list[str] = []
    bar = tqdm(total=9 if gpu else 4, desc="bench-gpu", unit="step", file=sys.stderr)

    def step(done: str) -> None:
        bar.set_postfix_str(f"{done} done")
        bar.update()

    X, y = synthetic(max(sizes.train_rows, max(batches)), sizes.seed)
    step("data")
    # Project the CPU's training time from 10 trees (also the warm-up) less the one-off
    # QuantileDMatrix build that train() does first; shrink the rows if it is too long.
    t0 = time.perf_counter()
    xgb.QuantileDMatrix(X[: sizes.train_rows], label=y[: sizes.train_rows])
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    models.train(X[: sizes.train_rows], y[: sizes.train_rows], models.Params(10), "cpu", "probe")
    probe = time.perf_counter() - t0
    projected = build + max(probe - build, 0.0) * sizes.n_trees / 10
    train_rows = sizes.train_rows
    if projected > sizes.train_budget_s:
        train_rows = max(10_000, int(train_rows * sizes.train_budget_s / projected) // 1000 * 1000)
        notes.append(
            f"CPU training projected {projected:.0f} s on {sizes.train_rows} rows: "
            f"trained on {train_rows} rows instead (both devices)"
        )
    params = models.Params(n_estimators=sizes.n_trees, max_depth=sizes.max_depth)
    Xt, yt = X[:train_rows], y[:train_rows]
    t0 = time.perf_counter()
    booster = models.train(Xt, yt, params, "cpu", "train cpu")
    train_cpu = time.perf_counter() - t0
    step("train cpu")
    rates: dict[str, dict[int, int] | None] = {"cpu": None, "cuda": None, "cuda_cupy": None}
    latency: dict[str, dict[int, tuple[float, float]] | None] = dict.fromkeys(rates)
    rates["cpu"], latency["cpu"] = bench_predict(
        lambda rows: models.predict(booster, rows), X, batches, sizes.predict_budget_s
    )
    reference_64k = rates["cpu"].get(SPEEDUP_BATCH)
    if cpus > REFERENCE_THREADS and SPEEDUP_BATCH in batches:
        two = booster.copy()
        two.set_param({"nthread": REFERENCE_THREADS})
        reference_64k = bench_predict(
            lambda rows: models.predict(two, rows), X, [SPEEDUP_BATCH], sizes.predict_budget_s
        )[0][SPEEDUP_BATCH]
    step("predict cpu")
    shap: dict[str, int | None] = {"cpu": None, "cuda": None}
    shap_rows: dict[str, int | None] = {"cpu": None, "cuda": None}
    shap["cpu"], shap_rows["cpu"] = bench_shap(booster, X, sizes.shap_budget_s, "cpu")
    step("shap cpu")
    train_gpu = gpu_cpu_diff = without_cupy_64k = None
    cupy = models.cupy_module() if gpu else None
    if gpu:
        with warnings.catch_warnings():  # numpy rows into a CUDA booster: XGBoost copies them
            warnings.filterwarnings("ignore", message="(?s).*mismatched devices")
            try:
                models.train(Xt[:10_000], yt[:10_000], models.Params(5), "cuda", "warm-up cuda")
                step("warm-up cuda")
                t0 = time.perf_counter()
                models.train(Xt, yt, params, "cuda", "train cuda")
                train_gpu = time.perf_counter() - t0
                step("train cuda")
                on_gpu = booster.copy()  # the CPU's trees, so both devices score one model
                on_gpu.set_param({"device": "cuda"})
                same = X[: min(SPEEDUP_BATCH, len(X))]
                on_both = models.predict(on_gpu, same, "cuda"), models.predict(booster, same)
                gpu_cpu_diff = float(np.max(np.abs(on_both[0] - on_both[1])))
                rates["cuda"], latency["cuda"] = bench_predict(
                    lambda rows: models.predict(on_gpu, rows, "cuda"),
                    X,
                    batches,
                    sizes.predict_budget_s,
                )
                step("predict cuda (numpy in)")
                if cupy is not None:
                    if SPEEDUP_BATCH in batches:  # XGBoost's own copy of host rows: a DMatrix
                        without_cupy_64k = bench_predict(
                            on_gpu.inplace_predict, X, [SPEEDUP_BATCH], sizes.predict_budget_s
                        )[0][SPEEDUP_BATCH]
                    resident = cupy.asarray(X[: max(batches)])

                    def on_device(rows) -> None:
                        on_gpu.inplace_predict(rows)
                        cupy.cuda.runtime.deviceSynchronize()

                    rates["cuda_cupy"], latency["cuda_cupy"] = bench_predict(
                        on_device, resident, batches, sizes.predict_budget_s
                    )
                step("predict cuda (cupy in)")
                shap["cuda"], shap_rows["cuda"] = bench_shap(on_gpu, X, sizes.shap_budget_s, "cuda")
                step("shap cuda")
            except xgb.core.XGBoostError as error:
                notes.append(f"GPU step failed, later GPU figures missing: {error}")
    bar.close()
    if gpu and cupy is None:
        notes.append(
            "cupy not installed (or it sees no GPU): GPU scoring from numpy rows through "
            "XGBoost's DMatrix copy (the job's path then); no figures for rows on the GPU"
        )
    gpu_64k = (rates["cuda"] or {}).get(SPEEDUP_BATCH)

    def per_device(batch: int, index: int) -> dict[str, float | None]:
        return {d: (v or {}).get(batch, (None, None))[index] for d, v in latency.items()}

    def keyed(values: dict | None) -> dict | None:
        return None if values is None else {str(k): v for k, v in values.items()}

    return {
        **machine(),
        "cpu_count": cpus,
        "load_average_1m_at_start": round(load, 2),
        "xgboost": version("xgboost"),
        "xgboost_cuda_build": bool(xgb.build_info().get("USE_CUDA")),
        "gpu": gpu,
        "gpu_name": gpu,
        "gpu_reason": reason,
        "sizes": asdict(replace(sizes, train_rows=train_rows)),
        "features": X.shape[1],
        "batch_sizes": batches,
        "gpu_inputs": (["numpy"] + (["cupy"] if cupy else [])) if gpu else [],
        "train_s_cpu": round(train_cpu, 3),
        "train_s_gpu": None if train_gpu is None else round(train_gpu, 3),
        "gpu_train_speedup": _ratio(train_cpu, train_gpu),
        "gpu_cpu_max_abs_diff": gpu_cpu_diff,
        "predict_rows_per_s": {d: keyed(v) for d, v in rates.items()},
        "predict_latency_ms_p50": {
            d: keyed(v and {b: p[0] for b, p in v.items()}) for d, v in latency.items()
        },
        "predict_latency_ms_batch1_p50": per_device(1, 0),
        "predict_latency_ms_batch1_p99": per_device(1, 1),
        "predict_latency_ms_batch64_p50": per_device(64, 0),
        "predict_latency_ms_batch64_p99": per_device(64, 1),
        "cpu_reference_threads": min(REFERENCE_THREADS, cpus),
        "predict_rows_per_s_64k_cpu_reference": reference_64k,
        "gpu_scoring_speedup_at_64k": _ratio(gpu_64k, reference_64k),
        "gpu_scoring_speedup_at_64k_all_cores": _ratio(gpu_64k, rates["cpu"].get(SPEEDUP_BATCH)),
        "predict_rows_per_s_64k_gpu_without_cupy": without_cupy_64k,
        "shap_rows_per_s": shap,
        "shap_rows": shap_rows,
        "gpu_shap_speedup": _ratio(shap["cuda"], shap["cpu"]),
        "recommended_batch_size": {d: v and recommended_batch(v) for d, v in rates.items()},
        "notes": notes,
    }


def _cell(value: object) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else str(value)


def to_markdown(results: Metrics) -> str:
    """The figures per device, one row per metric, every batch size listed."""
    devices = ("cpu", "cuda", "cuda_cupy")
    rates, shap = results["predict_rows_per_s"], results["shap_rows_per_s"]
    speedup = results["gpu_scoring_speedup_at_64k"]
    goal_met = "" if speedup is None else ("yes" if speedup >= SPEEDUP_GOAL else "no")
    gpu = results["gpu_name"] or results["gpu_reason"]
    lines = [
        f"GPU: {gpu}; {results['machine']}; xgboost {results['xgboost']} "
        f"(CUDA build: {results['xgboost_cuda_build']}); load average "
        f"{results['load_average_1m_at_start']} at start; {results['date']}",
        "",
        *(f"- {note}" for note in results["notes"]),
        *([""] if results["notes"] else []),
        "| metric | cpu | gpu (the job's path: numpy rows) | gpu (rows already on it) "
        "| gpu / cpu | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, cells: list[object], ratio: object = None, goal: str = "", met: str = ""):
        lines.append(
            f"| {name} | {' | '.join(map(_cell, cells))} | {_cell(ratio)} | {goal} | {met} |"
        )

    sizes = results["sizes"]
    row(
        f"train s ({sizes['train_rows']} rows, {sizes['n_trees']} trees, depth "
        f"{sizes['max_depth']}, hist)",
        [results["train_s_cpu"], results["train_s_gpu"], None],
        results["gpu_train_speedup"],
    )
    for batch in BATCHES:
        name = f"predict rows/s, batch {batch}"
        if batch not in results["batch_sizes"]:
            row(name, ["not run (above --max-batch)", None, None])
            continue
        cells = [(rates[d] or {}).get(str(batch)) for d in devices]
        if batch == SPEEDUP_BATCH:
            row(
                name,
                cells,
                speedup,
                f">= {SPEEDUP_GOAL:g}x vs {REFERENCE_THREADS}-core cpu",
                goal_met,
            )
        else:
            row(name, cells, _ratio(cells[1], cells[0]))
    for batch in LATENCY_BATCHES:
        p50 = results[f"predict_latency_ms_batch{batch}_p50"]
        p99 = results[f"predict_latency_ms_batch{batch}_p99"]
        row(
            f"latency ms p50 / p99, batch {batch}",
            [None if p50[d] is None else f"{p50[d]} / {p99[d]}" for d in devices],
        )
    if results["cpu_count"] > REFERENCE_THREADS:
        row(
            f"predict rows/s, batch {SPEEDUP_BATCH}, cpu nthread={REFERENCE_THREADS}",
            [results["predict_rows_per_s_64k_cpu_reference"], None, None],
        )
    if results["predict_rows_per_s_64k_gpu_without_cupy"] is not None:
        row(
            f"predict rows/s, batch {SPEEDUP_BATCH}, gpu without CuPy (XGBoost's DMatrix copy)",
            [None, results["predict_rows_per_s_64k_gpu_without_cupy"], None],
        )
    rows = results["shap_rows"]
    row(
        f"shap contributions rows/s (rows: cpu {_cell(rows['cpu'])}, gpu {_cell(rows['cuda'])})",
        [shap["cpu"], shap["cuda"], None],
        results["gpu_shap_speedup"],
    )
    row("recommended batch size", [results["recommended_batch_size"][d] for d in devices])
    diff = results["gpu_cpu_max_abs_diff"]
    row(
        "largest abs(gpu - cpu) probability, same trees, 64 k rows",
        [None, None if diff is None else f"{diff:.2e}", None],
        goal=f"<= {PARITY_GOAL:g}",
        met="" if diff is None else ("yes" if diff <= PARITY_GOAL else "no"),
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--out", default=str(RESULTS / "gpu-latest"), help="path stem of results")
    parser.add_argument("--train-rows", type=int, help="training rows (default 1,000,000)")
    parser.add_argument("--max-batch", type=int, help="largest batch size (default 1,048,576)")
    args = parser.parse_args(argv)
    if args.train_rows is not None and args.train_rows < 1_000:
        parser.error(f"--train-rows must be at least 1000, got {args.train_rows}")
    if args.max_batch is not None and args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, got {args.max_batch}")
    sizes = QUICK if args.quick else Sizes()
    if args.train_rows:
        sizes = replace(sizes, train_rows=args.train_rows)
    if args.max_batch:
        sizes = replace(sizes, max_batch=args.max_batch)
    results = run(sizes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    Path(f"{out}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
