"""``make bench``: every benchmark of the project in one run, ratios measured in the same run.

Writes ``bench/results/latest.json`` and ``bench/results/latest.md``. Run with
``python -m bench.run [--only NAME] [--only NAME ...] [--data PATH]`` (``--only`` repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from features import presets
from features.backfill import backfill
from features.incremental import IncrementalEngine
from features.stream import slices, with_labels
from features.table import read_transactions

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/transactions.parquet"
Metrics = dict[str, float | int | str | None]


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest wall time of ``repeat`` runs (the least disturbed by a noisy machine)."""
    return _best_in_turns([fn], repeat)[0]


def _best_in_turns(fns: list[Callable[[], object]], rounds: int) -> list[float]:
    """Fastest wall time of each of ``fns`` over ``rounds`` rounds, each round running every
    one once: a slow spell of the machine falls on all of them, not on one's runs."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench_backfill(df: pd.DataFrame) -> Metrics:
    """Baseline preset over all reference data vs the pandas groupby-rolling reference and vs
    the memory floor, and the time of each of its steps."""
    from bench.backfill_profile import backfill_profile, write_floor
    from bench.pandas_reference import baseline_features

    spec = presets.BASELINE
    backfill(df, spec)  # compile / load the kernels
    ours, floor = _best_in_turns(
        [lambda: backfill(df, spec), lambda: write_floor(len(df), spec)], rounds=7
    )
    reference = _best_of(lambda: baseline_features(df), repeat=1)
    default = _best_of(lambda: backfill(df, presets.DEFAULT), repeat=3)
    return {
        "events": len(df),
        "backfill_baseline_s": round(ours, 4),
        "backfill_default_s": round(default, 4),
        "pandas_reference_s": round(reference, 3),
        "backfill_speedup_vs_pandas": round(reference / ours, 1),
        "write_floor_s": round(floor, 4),
        "backfill_vs_write_floor": round(ours / floor, 2),
        **backfill_profile(df, spec),
    }


def bench_incremental(df: pd.DataFrame, batch_size: int = 2_000) -> Metrics:
    """Replay of the whole history, labels after the delay, in micro-batches (amortised)."""
    out: Metrics = {"incremental_batch_size": batch_size}
    for spec in (presets.BASELINE, presets.DEFAULT):
        events = with_labels(df, spec)
        parts = list(slices(events, batch_size))
        IncrementalEngine(spec).process(parts[0])  # compile / load the kernels

        def replay(spec=spec, parts=parts) -> None:
            engine = IncrementalEngine(spec)
            for part in parts:
                engine.process(part)

        seconds = _best_of(replay, repeat=3)
        key = (
            "incremental_us_per_event"
            if spec is presets.BASELINE
            else "incremental_default_us_per_event"
        )
        out[key] = round(1e6 * seconds / len(df), 3)
    one = next(slices(with_labels(df.iloc[:1000], presets.BASELINE), 1))
    engine = IncrementalEngine(presets.BASELINE)
    out["incremental_single_event_us"] = round(1e6 * _best_of(lambda: engine.process(one), 200), 1)
    return out


_COMPILE_SNIPPET = """
import time; t0 = time.perf_counter()
from features import presets; from features.backfill import backfill
from features.stream import stream_features; from features.synthetic import transactions
from features.table import validate
df = validate(transactions(n=500), presets.DEFAULT)
backfill(df, presets.DEFAULT); stream_features(df, presets.DEFAULT)
print(time.perf_counter() - t0)
"""


def bench_compile() -> Metrics:
    """Numba compile time (empty cache) and cache-load time, in fresh processes."""

    def run(cache_dir: str) -> float:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE_SNIPPET],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return float(done.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = run(cache)
    return {
        "numba_first_run_cold_cache_s": round(cold, 2),
        "numba_first_run_warm_cache_s": round(warm, 2),
        "numba_compile_s": round(cold - warm, 2),
    }


def _bench_feature_store() -> Metrics:
    """Feast read/write latency on the Bigtable emulator: stock store, ours, raw client."""
    from bench.feature_store import bench_feature_store
    from streaming.local.emulators import gcloud_available

    reason = gcloud_available(("bigtable",))
    if reason:
        print(f"bench: feature_store skipped: {reason}", file=sys.stderr)
        return {}
    return bench_feature_store()


def _bench_state_store() -> Metrics:
    """Initial states from Bigtable: states loaded per second, a worker's memory at two store
    sizes (on the Bigtable emulator)."""
    from bench.state_store import bench_state_store
    from streaming.local.emulators import gcloud_available

    reason = gcloud_available(("bigtable",))
    if reason:
        print(f"bench: state_store skipped: {reason}", file=sys.stderr)
        return {}
    return bench_state_store()


def _bench_scoring() -> Metrics:
    """Our batched scoring handler against Beam's stock XGBoost handler (same model, rows)."""
    from bench.scoring import bench_scoring

    return bench_scoring()


def _bench_pipeline() -> Metrics:
    """The job on the local runner vs a pass-through job; publish->alert latency at 200 ev/s."""
    from bench.pipeline import bench_pipeline

    return bench_pipeline()


def _bench_lookup(data: Path) -> Metrics:
    """The stream's feature lookup: e2e p50/p99 of preset enriched vs default in the same
    run, Bigtable reads per 1,000 transactions (on the Pub/Sub and Bigtable emulators)."""
    from bench.lookup import bench_lookup

    return bench_lookup(data)


def _bench_freshness() -> Metrics:
    """Publish -> a card's updated features readable through Feast's ``get_online_features``
    at 200 events/s (on the Pub/Sub and Bigtable emulators)."""
    from bench.freshness import bench_freshness

    return bench_freshness()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``, else ``platform.processor()``), so a
    figure says which host it came from: a shared VM's host may change between runs."""
    try:
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> Metrics:
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {cpu_model()}",
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "numba": version("numba"),
        "pandas": version("pandas"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


GOALS = {
    "backfill_speedup_vs_pandas": (">=", 150),
    "backfill_vs_write_floor": ("<=", 2.0),
    "incremental_us_per_event": ("<=", 1.0),
    "incremental_default_us_per_event": ("<=", 1.2),
    "feast_read100_vs_raw": ("<=", 1.5),
    "scoring_speedup_vs_beam_handler": (">=", 20),
    "shap_speedup_vs_xgboost": (">=", 5),
    "pipeline_vs_passthrough": (">=", 0.8),
    "e2e_p99_ms_at_200eps": ("<=", 500),
    "e2e_p99_ms_at_1000eps": ("<=", 200),
    "freshness_p99_ms_at_200eps": ("<=", 250),
    "lookup_p99_ratio": ("<=", 1.10),
    "lookup_reads_per_1k_tx": ("<=", 10),
}


def to_markdown(results: Metrics) -> str:
    lines = ["| metric | value | goal | met |", "|---|---|---|---|"]
    for key, value in results.items():
        goal = GOALS.get(key)
        met = ""
        if goal and isinstance(value, int | float):
            met = "yes" if (value >= goal[1] if goal[0] == ">=" else value <= goal[1]) else "no"
        lines.append(
            f"| {key} | {'not measured yet' if value is None else value} | "
            f"{f'{goal[0]} {goal[1]}' if goal else ''} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="reference transactions parquet")
    parser.add_argument(
        "--only",
        action="append",
        choices=[
            "backfill",
            "incremental",
            "compile",
            "feature_store",
            "state_store",
            "scoring",
            "pipeline",
            "lookup",
            "freshness",
        ],
    )
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    chosen = args.only or [
        "backfill", "incremental", "compile", "feature_store", "state_store", "scoring", "pipeline",
        "lookup", "freshness",
    ]  # fmt: skip
    if not Path(args.data).exists():
        print(f"bench: reference data {args.data} not found (see ../shared/data)", file=sys.stderr)
        return 2
    df = read_transactions([args.data], presets.DEFAULT)
    results: Metrics = {**machine(), **{k: None for k in GOALS}}
    steps = {
        "backfill": lambda: bench_backfill(df),
        "incremental": lambda: bench_incremental(df),
        "compile": bench_compile,
        "feature_store": _bench_feature_store,
        "state_store": _bench_state_store,
        "scoring": _bench_scoring,
        "pipeline": _bench_pipeline,
        "lookup": lambda: _bench_lookup(Path(args.data)),
        "freshness": _bench_freshness,
    }
    for name in chosen:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results.update(steps[name]())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = to_markdown(results)
    (out / "latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
