"""Batch jobs behind the CLI: backfill a history, and the parity check (backfill == stream)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from features.incremental import Status
from features.spec import FeatureSpec
from features.stream import stream_features
from features.table import read_transactions, validate

if TYPE_CHECKING:
    from streaming.bootstrap import StateFileInfo


def run_backfill(inputs: list[str], output: str, preset: str) -> pd.DataFrame:
    """``fraudstream backfill``: read, compute, write parquet; progress on stderr."""
    spec = presets.get(preset)
    with tqdm(total=3, desc="backfill", unit="step") as bar:
        bar.set_postfix_str(f"reading {len(inputs)} file(s)")
        df = read_transactions(inputs, spec)
        bar.update()
        bar.set_postfix_str(f"computing {len(spec.names)} features of {len(df):,} events")
        features = backfill(df, spec)
        bar.update()
        bar.set_postfix_str(f"writing {output}")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        features.to_parquet(output, index=False)
        bar.update()
    print(f"wrote {len(features):,} rows x {len(spec.names)} features ({spec.name}) to {output}")
    return features


def run_bootstrap(
    inputs: list[str],
    output: str,
    preset: str,
    pseudonymise_ids: bool = True,
    id_key_secret: str | None = None,
    max_lateness_hours: float = 24.0,
) -> StateFileInfo:
    """``fraudstream bootstrap``: replay a history, write every entity's state for ``run
    --initial_state`` (see :mod:`streaming.bootstrap`); progress on stderr."""
    from streaming.bootstrap import bootstrap
    from streaming.pipeline import launch_pseudonymiser

    spec = presets.get(preset)
    df = read_transactions(inputs, spec)
    ids = launch_pseudonymiser(id_key_secret) if pseudonymise_ids else None
    lateness = timedelta(hours=max_lateness_hours)
    info = bootstrap(df, spec, output, ids, lateness, progress=True)
    id_key, end_ns = info.id_key, info.end_ns
    print(
        f"wrote the states of {info.entities:,} entities ({spec.name}, "
        f"{'key ' + id_key if id_key else 'clear ids'}) up to {pd.Timestamp(end_ns)} to {output}"
    )
    return info


def stream(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Replay ``df`` through the incremental path (labels after the delay), with progress."""
    with tqdm(total=2 * len(df), desc="stream", unit="ev", unit_scale=True) as bar:
        return stream_features(df, spec, batch_size=2_000, progress=bar.update)


def _load_demo_data(path: str, spec: FeatureSpec, events: int | None) -> tuple[pd.DataFrame, str]:
    if Path(path).exists():
        df, source = read_transactions([path], spec), path
    else:
        from training.simulator import SimulatorConfig, simulate

        print(f"{path} not found: using the built-in simulator (1,000 cards, 90 days, seed 0)")
        config = SimulatorConfig(customers=1_000, terminals=2_000, days=90)
        df, source = validate(simulate(config), spec), "simulator"
    if events is not None:
        df = df.iloc[:events].reset_index(drop=True)
    return df, source


def run_parity(
    path: str, preset: str, events: int | None, out_dir: str, json_path: str | None
) -> int:
    """Backfill, stream, compare, summarise. Returns 0 when stream == backfill everywhere."""
    spec = presets.get(preset)
    df, source = _load_demo_data(path, spec, events)
    print(
        f"{len(df):,} transactions from {source}, preset {spec.name} ({len(spec.names)} features)"
    )
    t0 = time.perf_counter()
    table = backfill(df, spec)
    t_backfill = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = stream(df, spec)
    t_stream = time.perf_counter() - t0
    streamed, status = result[spec.names].to_numpy(), result["STATUS"].to_numpy()
    expected = table[spec.names].to_numpy()
    same = (expected == streamed) | (np.isnan(expected) & np.isnan(streamed))
    identical_rows = int(same.all(axis=1).sum())
    summary = {
        "mode": "embedded",
        "source": source,
        "preset": spec.name,
        "events": len(df),
        "features": len(spec.names),
        "backfill_s": round(t_backfill, 3),
        "stream_s": round(t_stream, 3),
        "stream_us_per_event": round(1e6 * t_stream / max(len(df), 1), 2),
        "stream_equals_backfill_rows": identical_rows,
        "rejected": int((status == Status.TOO_LATE).sum()),
    }
    golden = Path(path).with_name("handbook_features.parquet")
    if spec.name == "baseline" and source != "simulator" and golden.exists():
        summary.update(_compare_golden(table, golden))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    table.to_parquet(Path(out_dir) / "features.parquet", index=False)
    print()
    for key, value in summary.items():
        print(f"  {key:32s} {value}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    ok = identical_rows == len(df)
    print(
        "\nstream == backfill on every transaction"
        if ok
        else "\nMISMATCH between stream and backfill"
    )
    return 0 if ok else 1


def _compare_golden(table: pd.DataFrame, golden_path: Path) -> dict[str, int]:
    """Rows of the baseline that differ from the handbook's published values by more than 1e-9."""
    golden = pd.read_parquet(golden_path)
    merged = table.merge(golden, on="TRANSACTION_ID", suffixes=("", "_golden"))
    cols = [c for c in golden.columns if c != "TRANSACTION_ID"]
    diff = np.abs(merged[cols].to_numpy() - merged[[c + "_golden" for c in cols]].to_numpy())
    return {
        "golden_rows_compared": len(merged),
        "golden_rows_differing": int((diff > 1e-9).any(axis=1).sum()),
    }
