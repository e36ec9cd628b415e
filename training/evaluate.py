"""``fraudstream evaluate``: the handbook protocol on stream-computed features.

Training features come from the backfill (the batch path); test-week features from the
incremental path, fed event by event in arrival order with every label arriving after the
delay. Hyperparameters are chosen on a validation split that ends inside the training window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from features.spec import DAY, FeatureSpec
from features.stream import stream_features
from training import model as models
from training.feedback import FeedbackReplay, scorer
from training.files import read_transactions
from training.protocol import Split, card_precision_at_k, in_window, metrics, scored_rows

PUBLISHED = [  # EVALUATION.md: model, AUC ROC, AP, CP@100
    ("logistic regression (handbook ch. 3)", 0.871, 0.606, 0.291),
    ("decision tree, depth 2 (ch. 3)", 0.763, 0.496, 0.241),
    ("random forest (ch. 3)", 0.867, 0.658, 0.287),
    ("XGBoost, default settings (ch. 3)", 0.862, 0.639, 0.273),
    ("best tuned models (ch. 5-7), best of each column", 0.879, 0.694, 0.305),
]
VALIDATION_SHIFT_DAYS = 14  # the validation split's test week is the training week


def delayed_label_ceiling(df: pd.DataFrame, test: np.ndarray, delay_days: int = 7) -> float | None:
    """CP@100 of a perfect ranker blind to frauds at terminals compromised < delay days ago.

    Analysis only (reads ``TX_FRAUD_SCENARIO``, never a model input): the simulator's second
    scenario compromises a terminal for 28 days, and until its first fraud is ``delay`` days
    old no label-delayed feature can see it. None when the column is absent.
    """
    if "TX_FRAUD_SCENARIO" not in df:
        return None
    first = df[df["TX_FRAUD_SCENARIO"] == 2].groupby("TERMINAL_ID")["TX_DATETIME"].min()
    rows = df[test]
    age = rows["TX_DATETIME"] - rows["TERMINAL_ID"].map(first)
    hidden = (rows["TX_FRAUD_SCENARIO"] == 2) & (age < pd.Timedelta(days=delay_days))
    labels = rows["TX_FRAUD"].to_numpy()
    tiebreak = np.random.default_rng(0).random(len(rows)) * 1e-9
    visible = labels * ~hidden.to_numpy() + tiebreak
    days = rows["TX_DATETIME"].dt.normalize().to_numpy()
    return card_precision_at_k(days, rows["CUSTOMER_ID"].to_numpy(), labels, visible)


def stream_test_features(df: pd.DataFrame, spec: FeatureSpec, end: pd.Timestamp) -> pd.DataFrame:
    """Features of every transaction before ``end`` by the incremental path (labels delayed)."""
    history = df[(df["TX_DATETIME"] < end).to_numpy()].reset_index(drop=True)
    with tqdm(total=2 * len(history), desc="stream", unit="ev", unit_scale=True) as bar:
        return stream_features(history, spec, batch_size=4_096, progress=bar.update)


def fit_and_score(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, params: models.Params, desc: str
) -> np.ndarray:
    return models.predict(models.train(train_x, train_y, params, desc=desc), test_x)


def tune(
    df: pd.DataFrame, X: np.ndarray, split: Split, grid: tuple[models.Params, ...]
) -> tuple[models.Params, list[dict]]:
    """The grid point with the best validation AP (then CP@100) on a split inside training time."""
    val = split.shifted(VALIDATION_SHIFT_DAYS)
    train = in_window(df["TX_DATETIME"], val.train_start, val.train_end)
    test = scored_rows(df, val)
    y = df["TX_FRAUD"].to_numpy()
    results = []
    for i, params in enumerate(grid):
        scores = fit_and_score(X[train], y[train], X[test], params, f"tune {i + 1}/{len(grid)}")
        results.append({"params": asdict(params), **metrics(df[test], scores)})
    best = max(range(len(grid)), key=lambda i: (results[i]["ap"], results[i]["cp_at_100"]))
    return grid[best], results


def evaluate_feedback(
    df: pd.DataFrame, split: Split, spec: FeatureSpec, first: xgb.Booster, params: models.Params
) -> dict:
    """The same week when investigators return the labels of each day's 100 alerted cards.

    ``first`` (the main model, on ``spec``) drives the feedback until the training window ends;
    a model on the ``feedback`` preset is then trained on the replayed features and drives it
    through the delay and test weeks, where it is scored.
    """
    fb_spec = presets.FEEDBACK
    history = df[(df["TX_DATETIME"] < split.test_end).to_numpy()].reset_index(drop=True)
    replay = FeedbackReplay(history, fb_spec)
    replay.run_until(split.train_end, scorer(first, [fb_spec.names.index(n) for n in spec.names]))
    train = in_window(history["TX_DATETIME"], split.train_start, split.train_end)
    y = history["TX_FRAUD"].to_numpy()
    booster = models.train(replay.features[train], y[train], params, desc="feedback model")
    replay.run_until(split.test_end, scorer(booster, list(range(len(fb_spec.names)))))
    test = scored_rows(history, split)
    return {
        **metrics(history[test], models.predict(booster, replay.features[test])),
        "preset": fb_spec.name,
        "feedback_labels": replay.feedback_labels,
        "features": fb_spec.names,
    }


def evaluate(
    df: pd.DataFrame,
    spec: FeatureSpec,
    train_start: str,
    train_days: int,
    grid: tuple[models.Params, ...] = models.GRID,
    feedback: bool = True,
) -> dict:
    """Run the protocol; returns the JSON-ready result."""
    split = Split.build(train_start, train_days)
    split.check_data(df["TX_DATETIME"])
    if len(grid) > 1:
        split.shifted(VALIDATION_SHIFT_DAYS).check_data(df["TX_DATETIME"])
    t0 = time.perf_counter()
    table = backfill(df, spec)
    X = table[spec.names].to_numpy(np.float32)
    y = df["TX_FRAUD"].to_numpy()
    params, tuning = tune(df, X, split, grid) if len(grid) > 1 else (grid[0], [])
    train = in_window(df["TX_DATETIME"], split.train_start, split.train_end)
    booster = models.train(X[train], y[train], params, desc="final model")
    streamed = stream_test_features(df, spec, split.test_end)
    history = (df["TX_DATETIME"] < split.test_end).to_numpy()
    test = scored_rows(df, split)
    test_x = streamed.loc[test[history], spec.names].to_numpy(np.float32)
    identical = np.array_equal(test_x, X[test], equal_nan=True)
    scores = models.predict(booster, test_x)
    result = {
        **metrics(df[test], scores),
        "train_start": str(split.train_start.date()),
        "train_end": str(split.train_end.date()),
        "train_days": split.train_days,
        "test_start": str(split.test_start.date()),
        "test_end": str((split.test_end - DAY).date()),
        "n_train": int(train.sum()),
        "n_train_fraud": int(y[train].sum()),
        "n_test": int(test.sum()),
        "features": spec.names,
        "preset": spec.name,
        "spec_fingerprint": spec.fingerprint(),
        "model": {"kind": "xgboost", "device": booster.attr("device"), "params": asdict(params)},
        "test_features": "incremental (streaming) path, labels after the delay",
        "test_features_equal_backfill": bool(identical),
        "tuning": tuning,
        "cp_at_100_ceiling_delayed_labels": delayed_label_ceiling(df, test),
    }
    if feedback and not spec.lookups:  # the feedback preset has no batch features
        result["feedback"] = evaluate_feedback(df, split, spec, booster, params)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def render(result: dict) -> str:
    """The result beside the published table."""
    lines = [f"{'model':55s} {'AUC ROC':>8s} {'AP':>8s} {'CP@100':>8s}"]
    lines += [f"{name:55s} {auc:8.3f} {ap:8.3f} {cp:8.3f}" for name, auc, ap, cp in PUBLISHED]
    ours = (
        f"fraudstream {result['preset']} + XGBoost, {result['train_days']} days of training "
        f"(from {result['train_start']})"
    )
    lines.append(f"{ours:55s} {result['auc']:8.3f} {result['ap']:8.3f} {result['cp_at_100']:8.3f}")
    for name, other in result.get("compared", {}).items():
        label = f"  preset {name}, same protocol"
        lines.append(
            f"{label:55s} {other['auc']:8.3f} {other['ap']:8.3f} {other['cp_at_100']:8.3f}"
        )
    if "feedback" in result:
        fb = result["feedback"]
        name = "  same week + investigator feedback (100 cards/day)"
        lines.append(f"{name:55s} {fb['auc']:8.3f} {fb['ap']:8.3f} {fb['cp_at_100']:8.3f}")
    if result.get("cp_at_100_ceiling_delayed_labels") is not None:
        lines.append(
            f"CP@100 ceiling for any model on 7-day-delayed labels (perfect ranking, blind to "
            f"terminals compromised < 7 days ago): {result['cp_at_100_ceiling_delayed_labels']:.3f}"
        )
    lines.append(
        f"test {result['test_start']}..{result['test_end']}: {result['n_test']:,} "
        f"transactions; train {result['n_train']:,} ({result['n_train_fraud']:,} fraud); "
        f"test features stream == backfill: {result['test_features_equal_backfill']}"
    )
    return "\n".join(lines)


def run_evaluate(
    inputs: list[str],
    train_start: str,
    train_days: int,
    preset: str,
    json_path: str | None,
    tune_grid: bool = True,
    feedback: bool = True,
    compare: Sequence[str] = (),
    naive_time_zone: str = "UTC",
) -> dict:
    """Evaluate ``preset``, and each preset of ``compare`` beside it (same data, split and
    tuning; their metrics under ``compared``)."""
    spec = presets.get(preset)
    df = read_transactions(inputs, spec, naive_time_zone=naive_time_zone)
    grid = models.GRID if tune_grid else models.GRID[:1]
    result = evaluate(df, spec, train_start, train_days, grid, feedback=feedback)
    result["compared"] = {}
    for name in compare:
        other = presets.get(name)
        table = read_transactions(inputs, other, naive_time_zone=naive_time_zone)
        theirs = evaluate(table, other, train_start, train_days, grid, feedback=False)
        keep = ("auc", "ap", "cp_at_100", "spec_fingerprint", "test_features_equal_backfill")
        result["compared"][name] = {k: theirs[k] for k in keep} | {"params": theirs["model"]}
    print(render(result))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
