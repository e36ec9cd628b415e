"""The monitoring report: plots (scores, alerts per hour, latency, drift) and markdown.

Matplotlib is imported only to render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.drift import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
)

PLOTS = ("scores.png", "alerts_per_hour.png", "latency.png", "drift.png")


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
