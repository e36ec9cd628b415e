"""``fraudstream monitor``: per event-time window, model-input drift (PSI), alert rate, latency.

A window's record (:func:`window_record`, one JSON object) is built from additive counts
(:class:`WindowCounts`: per-feature bin counts against the model's drift reference, score bin
counts, a latency histogram, events and alerts), so the streaming job (a Beam ``CombineFn``
summing counts per window) and the offline command (:func:`window_stats` over the scored
parquet parts) produce the same records. Record fields:

``window_start``, ``window_end`` (ISO 8601, event time), ``events``, ``alerts``,
``alert_rate``, ``latency_p50_ms``, ``latency_p99_ms`` (from a log-spaced histogram,
about 6 % resolution), ``score_psi`` (None without a score profile), ``max_psi``,
``max_psi_feature``, ``drift`` (``stable``/``moderate``/``significant`` of ``max_psi``),
``reference`` (where the reference came from), then ``psi_<feature>`` per model input.
NaN is written as null.

PSI reading (training/drift.py): < 0.1 stable, 0.1 to 0.25 moderate, >= 0.25 significant.
The command renders ``scores.png``, ``alerts_per_hour.png``, ``latency.png`` and ``drift.png``
and writes ``monitoring.json`` and ``monitoring.md``. Matplotlib is imported only to render.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.spec import Calendar
from streaming.schema import SCORED_COLUMNS
from training.drift import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    REFERENCE_FILE,
    Reference,
    bin_counts,
    bin_index,
    classify,
    load_reference,
    psi_counts,
    reference_profile,
    score_bin_counts,
)

# Latency histogram: 40 log-spaced bins a decade from 0.01 ms to 10^7 ms (bin 0 below, last above).
LATENCY_EDGES_MS = np.geomspace(1e-2, 1e7, 9 * 40 + 1)
REFERENCE_HEAD_SHARE = 0.2  # without a stored reference: the first 20 % of events by event time
PLOTS = ("scores.png", "alerts_per_hour.png", "latency.png", "drift.png")


def latency_counts(latency_ms: np.ndarray) -> np.ndarray:
    """Additive histogram of latencies on :data:`LATENCY_EDGES_MS` (NaN ignored)."""
    values = np.asarray(latency_ms, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    idx = np.searchsorted(LATENCY_EDGES_MS, values, side="right")
    return np.bincount(idx, minlength=len(LATENCY_EDGES_MS) + 1).astype(np.int64)


def latency_quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a :func:`latency_counts` histogram: the geometric middle of its
    bin (the outer edge for the open end bins); NaN if empty."""
    n = int(counts.sum())
    if n == 0:
        return math.nan
    k = int(np.searchsorted(np.cumsum(counts), max(q * n, 1), side="left"))
    if k == 0:
        return float(LATENCY_EDGES_MS[0])
    if k >= len(LATENCY_EDGES_MS):
        return float(LATENCY_EDGES_MS[-1])
    return float(math.sqrt(LATENCY_EDGES_MS[k - 1] * LATENCY_EDGES_MS[k]))


@dataclass
class WindowCounts:
    """Additive per-window counters (``a + b`` is the counts of both batches)."""

    features: np.ndarray  # (features, bins + 1) int64, training/drift.py bin_counts
    scores: np.ndarray | None  # (bins + 1,) int64, or None without a score profile
    latency: np.ndarray  # latency_counts
    events: int = 0
    alerts: int = 0

    @classmethod
    def empty(cls, reference: Reference) -> WindowCounts:
        bins = reference.bins + 1
        return cls(
            np.zeros((len(reference.names), bins), np.int64),
            np.zeros(bins, np.int64) if reference.has_scores else None,
            np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64),
        )

    @classmethod
    def of(
        cls,
        reference: Reference,
        X: np.ndarray,
        scores: np.ndarray,
        alerts: np.ndarray,
        latency_ms: np.ndarray,
    ) -> WindowCounts:
        """Counts of a batch: ``X`` rows × ``reference.names``, one score/alert/latency each."""
        return cls(
            bin_counts(reference, X),
            score_bin_counts(reference, scores) if reference.has_scores else None,
            latency_counts(latency_ms),
            len(scores),
            int(np.asarray(alerts, dtype=bool).sum()),
        )

    @classmethod
    def of_rows(cls, reference: Reference, rows: Sequence[dict]) -> WindowCounts:
        """Counts of scored rows (``streaming/sinks.py`` ``scored_record`` dicts)."""
        if not rows:
            return cls.empty(reference)
        X = np.array([[row[n] for n in reference.names] for row in rows], dtype=np.float64)
        return cls.of(
            reference,
            X,
            np.array([row["score"] for row in rows], dtype=np.float64),
            np.array([bool(row["alert"]) for row in rows]),
            np.array([row["latency_ms"] for row in rows], dtype=np.float64),
        )

    def __add__(self, other: WindowCounts) -> WindowCounts:
        return WindowCounts(
            self.features + other.features,
            None if self.scores is None else self.scores + other.scores,
            self.latency + other.latency,
            self.events + other.events,
            self.alerts + other.alerts,
        )

    @classmethod
    def merge(cls, reference: Reference, parts: Iterable[WindowCounts]) -> WindowCounts:
        total = cls.empty(reference)
        for part in parts:
            total = total + part
        return total


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _iso(value: Any) -> str:
    return pd.Timestamp(value).isoformat()


PERIODIC = frozenset(c.value for c in Calendar)
"""Calendar inputs: periodic by construction, left out of a window's ``max_psi``."""


def window_record(
    reference: Reference,
    counts: WindowCounts,
    window_start: datetime | str | pd.Timestamp,
    window_end: datetime | str | pd.Timestamp,
    source: str = "",
) -> dict:
    """The monitoring record of one window (JSON-ready; fields in the module docstring).

    ``max_psi`` and ``drift`` leave out the calendar inputs (:data:`PERIODIC`): within a window
    shorter than their period (an hour of ``TX_HOUR``) they differ from the training mix by
    construction; their ``psi_<name>`` is still reported."""
    values = psi_counts(reference.proportions_array(), counts.features)
    score = (
        float(psi_counts(np.asarray(reference.score_proportions), counts.scores))
        if counts.scores is not None
        else math.nan
    )
    finite = [
        (v, n)
        for v, n in zip(values, reference.names, strict=True)
        if not math.isnan(v) and n not in PERIODIC
    ]
    max_psi, max_feature = max(finite) if finite else (math.nan, None)
    record: dict[str, Any] = {
        "window_start": _iso(window_start),
        "window_end": _iso(window_end),
        "events": int(counts.events),
        "alerts": int(counts.alerts),
        "alert_rate": counts.alerts / counts.events if counts.events else None,
        "latency_p50_ms": _none_if_nan(latency_quantile(counts.latency, 0.50)),
        "latency_p99_ms": _none_if_nan(latency_quantile(counts.latency, 0.99)),
        "score_psi": _none_if_nan(score),
        "max_psi": _none_if_nan(max_psi),
        "max_psi_feature": max_feature,
        "drift": classify(max_psi) if counts.events else None,
        "reference": source,
    }
    for name, value in zip(reference.names, values, strict=True):
        record[f"psi_{name}"] = _none_if_nan(float(value))
    return record


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Monitoring records -> a DataFrame (window bounds as datetimes, null as NaN)."""
    df = pd.DataFrame.from_records(list(records))
    if df.empty:
        return df
    for col in ("window_start", "window_end"):
        df[col] = pd.to_datetime(df[col])
    for col in df.columns:
        if col.startswith(("psi_", "latency_")) or col in ("alert_rate", "score_psi", "max_psi"):
            df[col] = df[col].astype("float64")
    return df


def read_records(path: str | Path) -> pd.DataFrame:
    """Read ``monitoring.json`` (a JSON array) or the stream's JSON lines into a DataFrame."""
    text = Path(path).read_text().strip()
    if text.startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return records_frame(records)


def window_stats(
    scored: pd.DataFrame,
    reference: Reference,
    features: list[str],
    freq: str = "1h",
    source: str = "",
) -> pd.DataFrame:
    """Per event-time window of ``freq`` (every window from the first event's to the last's,
    empty ones included): the :func:`window_record` fields, one row per window."""
    return records_frame(window_records(scored, reference, features, freq, source))


def window_records(
    scored: pd.DataFrame,
    reference: Reference,
    features: list[str],
    freq: str = "1h",
    source: str = "",
) -> list[dict]:
    """:func:`window_stats` as the list of JSON-ready :func:`window_record` dicts."""
    ref = reference.subset(features)
    if scored.empty:
        return []
    step = pd.Timedelta(freq)
    times = pd.to_datetime(scored["event_time"])
    starts = times.dt.floor(freq)
    first = starts.min()
    codes = ((starts - first) // step).to_numpy(np.int64)
    n_windows = int(codes.max()) + 1
    width = ref.bins + 1

    def per_window(idx: np.ndarray, size: int) -> np.ndarray:
        flat = np.bincount(codes * size + idx, minlength=n_windows * size)
        return flat.reshape(n_windows, size).astype(np.int64)

    X = scored[features].to_numpy(np.float64)
    feature_counts = np.stack(
        [
            per_window(bin_index(np.asarray(cuts, np.float64), X[:, j], ref.bins), width)
            for j, cuts in enumerate(ref.edges)
        ],
        axis=1,
    )  # (windows, features, bins + 1)
    score_counts = None
    if ref.has_scores:
        idx = bin_index(np.asarray(ref.score_edges), scored["score"].to_numpy(float), ref.bins)
        score_counts = per_window(idx, width)
    latency = scored["latency_ms"].to_numpy(np.float64)
    keep = ~np.isnan(latency)
    lat_idx = np.searchsorted(LATENCY_EDGES_MS, latency[keep], side="right")
    n_lat = len(LATENCY_EDGES_MS) + 1
    lat_flat = np.bincount(codes[keep] * n_lat + lat_idx, minlength=n_windows * n_lat)
    lat_counts = lat_flat.reshape(n_windows, n_lat)
    events = np.bincount(codes, minlength=n_windows)
    alerts = np.bincount(codes, weights=scored["alert"].to_numpy(bool), minlength=n_windows)

    records = []
    for w in range(n_windows):
        counts = WindowCounts(
            feature_counts[w],
            None if score_counts is None else score_counts[w],
            lat_counts[w],
            int(events[w]),
            int(alerts[w]),
        )
        start = first + w * step
        records.append(window_record(ref, counts, start, start + step, source))
    return records


# --------------------------------------------------------------------------- plots


def _time_axis(ax: Any, fig: Any) -> None:
    fig.autofmt_xdate()
    ax.grid(alpha=0.3)


def render(scored: pd.DataFrame | None, stats: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write the PNGs of :data:`PLOTS` into ``out_dir``; returns their paths.

    ``scored`` may be None (records from the stream only): ``scores.png`` is then skipped."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    if scored is not None:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        scores = scored["score"].to_numpy(float)
        ax.hist(scores[~np.isnan(scores)], bins=np.linspace(0, 1, 51), log=True, color="C0")
        for t in sorted(pd.unique(scored["threshold"].dropna()))[:3]:
            ax.axvline(t, color="C3", ls="--", label=f"alert threshold {t:.3f}")
        if scored["threshold"].notna().any():
            ax.legend()
        n_alerts = int(scored["alert"].sum())
        ax.set(
            title=f"Score distribution: {len(scored):,} events, {n_alerts:,} alerts",
            xlabel="model score",
            ylabel="events (log scale)",
        )
        save(fig, "scores.png")

    starts = stats["window_start"] if not stats.empty else pd.Series([], dtype="datetime64[ns]")
    freq = stats["window_end"].iloc[0] - stats["window_start"].iloc[0] if not stats.empty else None
    width = freq if freq is not None else pd.Timedelta("1h")
    label = _freq_label(width)

    fig, ax = plt.subplots(figsize=(10, 4.5))
    if not stats.empty:
        ax.bar(starts, stats["alerts"], width=width * 0.9, align="edge", color="C3", label="alerts")
        ax2 = ax.twinx()
        marker = "o" if len(stats) < 50 else None
        rate = stats["alert_rate"] * 100
        ax2.plot(starts + width / 2, rate, color="k", lw=1, marker=marker, label="alert rate")
        ax2.set_ylabel("alert rate (% of events)")
        ax2.set_ylim(bottom=0)
    ax.set(
        title=f"Alerts per {label} window (bars) and alert rate (line)",
        xlabel="window start (event time)",
        ylabel=f"alerts per {label}",
    )
    _time_axis(ax, fig)
    save(fig, "alerts_per_hour.png")

    fig, ax = plt.subplots(figsize=(10, 4.5))
    if not stats.empty:
        marker = "o" if len(stats) < 50 else None
        mid = starts + width / 2
        ax.plot(mid, stats["latency_p50_ms"], marker=marker, label="p50")
        ax.plot(mid, stats["latency_p99_ms"], marker=marker, label="p99")
        if (stats[["latency_p50_ms", "latency_p99_ms"]] > 0).any().any():
            ax.set_yscale("log")
        ax.legend()
    ax.set(
        title=f"Scoring latency per {label} window (receive -> scored row)",
        xlabel="event time (window middle)",
        ylabel="latency (ms)",
    )
    _time_axis(ax, fig)
    save(fig, "latency.png")

    psi_cols = [c for c in stats.columns if c.startswith("psi_")]
    rows = [(c[4:], c) for c in psi_cols]
    if "score_psi" in stats.columns and stats["score_psi"].notna().any():
        rows.insert(0, ("(model score)", "score_psi"))
    matrix = stats[[c for _, c in rows]].to_numpy(float).T if rows else np.zeros((0, len(stats)))
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.28 * len(rows) + 1.8)))
    cmap = ListedColormap(
        ["#1a9850", "#a6d96a", "#fee08b", "#fdae61", "#f46d43", "#a50026"]
    ).with_extremes(bad="#dddddd")
    bounds = [
        0,
        0.05,
        PSI_MODERATE,
        0.175,
        PSI_SIGNIFICANT,
        0.5,
        max(1.0, np.nanmax(matrix, initial=0)),
    ]
    norm = BoundaryNorm(bounds, cmap.N)
    image = ax.imshow(
        np.ma.masked_invalid(matrix), aspect="auto", interpolation="nearest", cmap=cmap, norm=norm
    )
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    if len(stats):
        ticks = np.unique(np.linspace(0, len(stats) - 1, min(len(stats), 12)).round().astype(int))
        ax.set_xticks(ticks, [starts.iloc[i].strftime("%Y-%m-%d %H:%M") for i in ticks])
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    bar = fig.colorbar(image, ax=ax, ticks=[0, PSI_MODERATE, PSI_SIGNIFICANT, 0.5])
    bar.ax.set_yticklabels(
        ["0", f"{PSI_MODERATE} moderate", f"{PSI_SIGNIFICANT} significant", "0.5"]
    )
    bar.set_label("PSI")
    ax.set(
        title=f"Model-input drift (PSI vs training reference) per {label} window\n"
        f"< {PSI_MODERATE} stable, {PSI_MODERATE}-{PSI_SIGNIFICANT} moderate, "
        f">= {PSI_SIGNIFICANT} significant shift; grey: no events",
        xlabel="window start (event time)",
        ylabel="model input",
    )
    save(fig, "drift.png")
    return written


def _freq_label(step: pd.Timedelta) -> str:
    if step == pd.Timedelta("1h"):
        return "hour"
    if step == pd.Timedelta("1D"):
        return "day"
    seconds = int(step.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


# --------------------------------------------------------------------------- command


def read_scored(directory: str | Path) -> pd.DataFrame:
    """The scored sink's ``part-*.parquet`` files of ``directory`` (hidden temporary files of
    parts being written are skipped), concatenated."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such scored-events directory")
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{directory}: no part-*.parquet files (scored events)")
    frames = [pd.read_parquet(p) for p in parts]
    return pd.concat(frames, ignore_index=True)


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
        version_dir = Path(model_dir) / "current"
        if (version_dir / REFERENCE_FILE).exists():
            ref = load_reference(version_dir)
            features = [n for n in ref.names if n in scored.columns]
            missing = [n for n in ref.names if n not in scored.columns]
            if not features:
                raise ValueError(
                    f"the scored events have none of the reference's features ({version_dir})"
                )
            if missing:
                note = f"features of the reference missing from the scored events: {missing}"
            version = version_dir.resolve().name
            return ref.subset(features), features, f"model {version} ({version_dir})", note
        note = f"no {REFERENCE_FILE} in {version_dir}"
    else:
        note = "no --model-dir given"
    if not columns:
        raise ValueError("the scored events have no feature columns")
    ref, source = head_reference(scored, columns)
    return ref, columns, source, note


def write_markdown(stats: pd.DataFrame, path: Path, source: str, top: int = 10) -> Path:
    """``monitoring.md``: the thresholds and the windows with the largest PSI."""
    lines = [
        "# Model monitoring",
        "",
        f"Drift reference: {source}.",
        "",
        f"PSI thresholds: < {PSI_MODERATE} stable, {PSI_MODERATE} to < {PSI_SIGNIFICANT} "
        f"moderate shift, >= {PSI_SIGNIFICANT} significant shift (per feature, per window). "
        "The PSI of a window with few events is biased upwards (about (bins - 1) / events): "
        "read windows of a few hundred events or fewer with care.",
        "",
    ]
    if not stats.empty:
        n = len(stats)
        counts = stats["drift"].value_counts()
        lines += [
            f"{n} windows, {int(stats['events'].sum()):,} events, "
            f"{int(stats['alerts'].sum()):,} alerts; windows by largest PSI: "
            + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("stable", "moderate", "significant")),
            "",
            f"## Windows with the largest PSI (top {min(top, n)})",
            "",
            "| window start | events | alerts | alert rate | max PSI | feature | reading |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        worst = stats.dropna(subset=["max_psi"]).nlargest(top, "max_psi")
        for row in worst.itertuples():
            lines.append(
                f"| {row.window_start:%Y-%m-%d %H:%M} | {row.events:,} | {row.alerts:,} | "
                f"{row.alert_rate:.2%} | {row.max_psi:.3f} | {row.max_psi_feature} | "
                f"{row.drift} |"
            )
        psi_cols = [c for c in stats.columns if c.startswith("psi_")]
        worst_features = stats[psi_cols].max().sort_values(ascending=False).head(top)
        lines += [
            "",
            "## Features by their largest window PSI",
            "",
            "| feature | max PSI | windows >= 0.1 | windows >= 0.25 |",
            "|---|---:|---:|---:|",
        ]
        for col, value in worst_features.items():
            lines.append(
                f"| {col[4:]} | {value:.3f} | {int((stats[col] >= PSI_MODERATE).sum())} | "
                f"{int((stats[col] >= PSI_SIGNIFICANT).sum())} |"
            )
    lines += ["", *(f"![{p[:-4]}]({p})" for p in PLOTS), ""]
    path.write_text("\n".join(lines))
    return path


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``monitor`` sub-command; dispatch with ``args.func(args)``."""
    parser = subparsers.add_parser(
        "monitor",
        help="render drift and alert plots from the scored events",
        description="Read the scored events (the streaming job's parquet parts), group them in "
        "event-time windows and write, per window, the PSI of each model input against the "
        "champion's training reference, the alert rate and latency (monitoring.json, "
        "monitoring.md) with plots: scores, alerts per hour, latency, drift.",
    )
    parser.add_argument("--scored", required=True, metavar="DIR",
                        help="directory of part-*.parquet scored events")  # fmt: skip
    parser.add_argument("--model-dir", default=None, metavar="DIR",
                        help="model registry: the drift reference of its current version "
                        "(else the first 20%% of the events by time)")  # fmt: skip
    parser.add_argument("--freq", default="1h", help="window length (pandas: 1h, 15min, 1D)")
    parser.add_argument("--out", default="out/monitor", metavar="DIR", help="where to write")
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run ``monitor`` and print a summary; 0 on success."""
    summary = run_monitor(args.scored, args.model_dir, args.freq, args.out)
    for key, value in summary.items():
        print(f"  {key:28s} {value}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    """``python -m streaming.monitor ...`` without the full fraudstream CLI."""
    parser = argparse.ArgumentParser(prog="python -m streaming.monitor")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["monitor", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
