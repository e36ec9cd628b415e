"""A model's report: ROC and PR curves, score histograms, feature importance (gain and SHAP)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import xgboost as xgb
from sklearn.metrics import precision_recall_curve, roc_curve

from training.model import contributions

TOP_FEATURES = 15


def _save(fig: plt.Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_report(
    out_dir: Path,
    booster: xgb.Booster,
    features: list[str],
    X: np.ndarray,
    y: np.ndarray,
    scores: np.ndarray,
    meta: dict,
) -> Path:
    """Write PNGs and ``report.md`` for validation rows ``X``/``y`` scored ``scores``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {}

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    fpr, tpr, _ = roc_curve(y, scores)
    ax[0].plot(fpr, tpr)
    ax[0].plot([0, 1], [0, 1], ls="--", c="grey")
    ax[0].set(
        title=f"ROC (AUC {meta['metrics']['auc']:.3f})",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    precision, recall, _ = precision_recall_curve(y, scores)
    ax[1].plot(recall, precision)
    ax[1].set(
        title=f"Precision-recall (AP {meta['metrics']['ap']:.3f})",
        xlabel="recall",
        ylabel="precision",
    )
    images["curves"] = _save(fig, out_dir / "curves.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 51)
    ax.hist(scores[y == 0], bins=bins, alpha=0.6, label="legitimate", log=True)
    ax.hist(scores[y == 1], bins=bins, alpha=0.6, label="fraud", log=True)
    ax.axvline(meta["threshold"], c="k", ls="--", label=f"alert threshold {meta['threshold']:.3f}")
    ax.set(title="Score distribution (validation week)", xlabel="score", ylabel="transactions")
    ax.legend()
    images["scores"] = _save(fig, out_dir / "scores.png")

    gain = booster.get_score(importance_type="gain")
    gains = np.array([gain.get(f"f{i}", 0.0) for i in range(len(features))])
    sample = np.random.default_rng(0).choice(len(X), size=min(len(X), 5_000), replace=False)
    shap = np.abs(contributions(booster, X[sample])[:, :-1]).mean(axis=0)
    fig, ax = plt.subplots(2, 1, figsize=(9, 10))
    for axis, values, title in ((ax[0], gains, "gain"), (ax[1], shap, "mean |SHAP|")):
        top = np.argsort(values)[::-1][:TOP_FEATURES][::-1]
        axis.barh([features[i] for i in top], values[top])
        axis.set(title=f"Feature importance ({title})")
        axis.tick_params(axis="y", labelsize=7)
    images["importance"] = _save(fig, out_dir / "importance.png")

    m = meta["metrics"]
    lines = [
        f"# Model {meta['version']}",
        "",
        f"Trained on {meta['train_start']} .. {meta['train_end']} "
        f"({meta['n_train']:,} transactions, {meta['n_train_fraud']:,} fraud), "
        f"preset `{meta['preset']}` ({len(features)} features), "
        f"device {meta['device']}. Validated on {meta['validation_start']} .. "
        f"{meta['validation_end']} ({meta['n_validation']:,} transactions).",
        "",
        "| AUC ROC | AP | CP@100 | alert threshold | alerted cards/day |",
        "|---|---|---|---|---|",
        f"| {m['auc']:.3f} | {m['ap']:.3f} | {m['cp_at_100']:.3f} | {meta['threshold']:.4f} | "
        f"{meta['threshold_cards_per_day']:.1f} |",
        "",
        f"Promotion: {meta['promotion']['decision']} — {meta['promotion']['reason']}",
        "",
        f"![curves]({images['curves']})",
        f"![scores]({images['scores']})",
        f"![importance]({images['importance']})",
        "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
