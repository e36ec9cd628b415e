"""``fraudstream monitor``: read the scored parts, compute window records against the
champion's drift reference, write ``monitoring.json``, ``monitoring.md`` and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from apache_beam.io.filesystems import FileSystems

from streaming import schema
from streaming.monitoring.report import render, write_markdown
from streaming.monitoring.stats import (
    latency_counts,
    latency_quantile,
    records_frame,
    window_records,
)
from streaming.schema import SCORED_COLUMNS
from training.drift import (
    REFERENCE_FILE,
    Reference,
    load_reference,
    reference_profile,
)

REFERENCE_HEAD_SHARE = 0.2  # without a stored reference: the first 20 % of events by event time


def read_scored(directory: str | Path) -> pd.DataFrame:
    """The scored sink's ``part-*.parquet`` files of ``directory`` (a path or ``gs://``),
    concatenated; FileNotFoundError when there is no directory or no part."""
    directory = str(directory)
    if FileSystems.get_scheme(directory) in (None, "file") and not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory}: no such scored-events directory")
    scored = schema.read_scored(directory)
    if scored.empty:
        raise FileNotFoundError(f"{directory}: no part-*.parquet files (scored events)")
    return scored


def feature_columns(scored: pd.DataFrame) -> list[str]:
    """The model-input columns of a scored table (every column but :data:`SCORED_COLUMNS`)."""
    return [c for c in scored.columns if c not in SCORED_COLUMNS]


def head_reference(scored: pd.DataFrame, features: list[str]) -> tuple[Reference, str]:
    """A reference from the first :data:`REFERENCE_HEAD_SHARE` of events by event time."""
    ordered = scored.sort_values("event_time", kind="stable")
    n = max(1, math.ceil(len(ordered) * REFERENCE_HEAD_SHARE))
    head = ordered.iloc[:n]
    ref = reference_profile(
        head[features].to_numpy(np.float64), features, scores=head["score"].to_numpy(float)
    )
    last = pd.Timestamp(head["event_time"].iloc[-1])
    return ref, (
        f"first {REFERENCE_HEAD_SHARE:.0%} of the scored events by event time "
        f"({n:,} events up to {last.isoformat()})"
    )


def resolve_reference(
    scored: pd.DataFrame, model_dir: str | Path | None
) -> tuple[Reference, list[str], str, str | None]:
    """``(reference, features, source, note)``: the champion's stored reference, else one
    from the head of the scored events (``note`` then says why)."""
    columns = feature_columns(scored)
    note = None
    if model_dir is not None:
        from training.registry import Registry

        version_dir = Registry(model_dir, create=False).champion_uri() or f"{model_dir}/current"
        if FileSystems.exists(FileSystems.join(version_dir, REFERENCE_FILE)):
            ref = load_reference(version_dir)
            features = [n for n in ref.names if n in scored.columns]
            missing = [n for n in ref.names if n not in scored.columns]
            if not features:
                raise ValueError(
                    f"the scored events have none of the reference's features ({version_dir})"
                )
            if missing:
                note = f"features of the reference missing from the scored events: {missing}"
            version = version_dir.rstrip("/").rsplit("/", 1)[-1]
            return ref.subset(features), features, f"model {version} ({version_dir})", note
        note = f"no {REFERENCE_FILE} in {version_dir}"
    else:
        note = "no --model-dir given"
    if not columns:
        raise ValueError("the scored events have no feature columns")
    ref, source = head_reference(scored, columns)
    return ref, columns, source, note


def run_monitor(
    scored_dir: str | Path, model_dir: str | Path | None, freq: str, out_dir: str | Path
) -> dict[str, Any]:
    """Read, compute, write; returns the summary printed by the command."""
    try:
        step = pd.Timedelta(freq)
    except ValueError as exc:
        raise ValueError(f"--freq {freq!r}: not a fixed window length ({exc})") from exc
    if step <= pd.Timedelta(0):
        raise ValueError(f"--freq {freq!r}: must be positive")
    scored = read_scored(scored_dir)
    if scored.empty:
        raise ValueError(f"{scored_dir}: the scored-events parts hold no rows")
    reference, features, source, note = resolve_reference(scored, model_dir)
    if note is not None:
        print(f"note: {note}")
    if source.startswith("first"):
        print(f"note: drift reference computed from the {source}")
    records = window_records(scored, reference, features, freq, source)
    stats = records_frame(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "monitoring.json").write_text(json.dumps(records, indent=1) + "\n")
    write_markdown(stats, out / "monitoring.md", source)
    written = render(scored, stats, out)
    drift = stats["drift"].value_counts()
    latency = latency_counts(scored["latency_ms"].to_numpy(float))
    worst = stats.dropna(subset=["max_psi"]).nlargest(1, "max_psi")
    return {
        "events": f"{len(scored):,}",
        "features": len(features),
        "reference": source,
        "windows": f"{len(stats)} of {freq}",
        "alert_rate": f"{scored['alert'].mean():.3%} ({int(scored['alert'].sum()):,} alerts)",
        "latency_p50_p99_ms": f"{latency_quantile(latency, 0.5):.3g} / "
        f"{latency_quantile(latency, 0.99):.3g}",
        "windows_stable_moderate_sig": " / ".join(
            str(drift.get(k, 0)) for k in ("stable", "moderate", "significant")
        ),
        "largest_psi": (
            f"{worst['max_psi'].iloc[0]:.3f} ({worst['max_psi_feature'].iloc[0]}, window "
            f"{worst['window_start'].iloc[0]:%Y-%m-%d %H:%M})"
            if len(worst)
            else "n/a"
        ),
        "wrote": ", ".join(
            str(p) for p in [out / "monitoring.json", out / "monitoring.md", *written]
        ),
    }
