"""``fraudstream train`` / ``retrain``: a new model version, gated against the champion.

For a window ``[end - N days, end)`` the challenger is trained on ``[end - N, end - 14)`` and
validated on ``[end - 7, end)`` exactly as the evaluation protocol tests (a 7-day delay, known
compromised cards removed). It is promoted to ``current`` only if its validation AP beats the
champion's on the same week. The booster saved is the validated one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict

import numpy as np
import pandas as pd

from features import presets
from features.backfill import backfill
from features.spec import FeatureSpec
from training import model as models
from training.drift import reference_profile, save_reference
from training.files import read_transactions
from training.protocol import DAY, Split, in_window, metrics, scored_rows
from training.registry import META_FILE, MODEL_FILE, Registry, RegistryError, to_json
from training.report import write_report

log = logging.getLogger(__name__)
LABEL_DELAY_DAYS = 7


def data_fingerprint(df: pd.DataFrame) -> str:
    """A hash of the rows a model saw (ids, times, amounts, labels)."""
    digest = hashlib.sha256()
    for col in ("TRANSACTION_ID", "TX_DATETIME", "TX_AMOUNT", "TX_FRAUD"):
        digest.update(np.ascontiguousarray(df[col].to_numpy()).tobytes())
    return digest.hexdigest()[:16]


def alert_threshold(
    df: pd.DataFrame, scores: np.ndarray, cards_per_day: int
) -> tuple[float, float]:
    """Score threshold alerting about ``cards_per_day`` cards a day, and the rate it gives."""
    frame = pd.DataFrame(
        {
            "day": df["TX_DATETIME"].dt.normalize().to_numpy(),
            "card": df["CUSTOMER_ID"].to_numpy(),
            "score": scores,
        }
    )
    per_card = frame.groupby(["day", "card"])["score"].max().reset_index()
    kth = per_card.groupby("day")["score"].apply(
        lambda s: np.sort(s.to_numpy())[::-1][min(cards_per_day, len(s)) - 1]
    )
    threshold = float(np.median(kth))
    rate = float((per_card["score"] >= threshold).groupby(per_card["day"]).sum().mean())
    return threshold, rate


def _validate_window(df: pd.DataFrame, split: Split) -> None:
    split.check_data(df["TX_DATETIME"])


def _check_rows(rows: np.ndarray, start: pd.Timestamp, end: pd.Timestamp, what: str) -> None:
    """Raise ``ValueError`` naming the days if ``rows`` selects none: a gap in the input."""
    if not rows.any():
        raise ValueError(
            f"no transactions to use for {what} from {start.date()} to {(end - DAY).date()} "
            "(a gap in the input?): choose another --train-end or --train-days"
        )


def champion_metrics(
    registry: Registry, df: pd.DataFrame, val: np.ndarray, spec: FeatureSpec, X: np.ndarray
) -> dict | None:
    """The champion's metrics on the validation rows, or None.

    ``X`` holds ``spec``'s features of ``df``: reused when the champion has the same spec,
    recomputed with the champion's own spec otherwise.
    """
    try:
        champion = registry.champion()
    except RegistryError as exc:
        log.warning("champion unusable, challenger wins by default: %s", exc)
        return None
    if champion is None:
        return None
    own = presets.get(champion.meta["preset"])
    champion.check_spec(own)
    if own != spec:
        X = backfill(df, own)[own.names].to_numpy(np.float32)
    return {
        "version": champion.version,
        **metrics(df[val], models.predict(champion.booster, X[val])),
    }


def run_train(
    inputs: list[str],
    train_end: str,
    train_days: int,
    model_dir: str,
    preset: str = "default",
    cards_per_day: int = 100,
    params: models.Params | None = None,
    naive_time_zone: str = "UTC",
) -> dict:
    """Train, validate, gate, save and report one version; returns its metadata."""
    registry = Registry(model_dir)
    spec: FeatureSpec = presets.get(preset)
    df = read_transactions(inputs, spec, naive_time_zone=naive_time_zone)
    end = pd.Timestamp(train_end).normalize()
    if train_days < 21:
        raise ValueError(
            f"train_days must be >= 21 (14 to train, a delay week, a validation "
            f"week), got {train_days}"
        )
    split = Split.build(end - 3 * 7 * DAY, train_days - 14)  # validation week = [end - 7, end)
    _validate_window(df, split)
    df = df[(df["TX_DATETIME"] < end).to_numpy()].reset_index(drop=True)
    X = backfill(df, spec)[spec.names].to_numpy(np.float32)
    y = df["TX_FRAUD"].to_numpy()
    train = in_window(df["TX_DATETIME"], split.train_start, split.train_end)
    val = scored_rows(df, split)
    _check_rows(train, split.train_start, split.train_end, "training")
    _check_rows(val, split.test_start, split.test_end, "validation")
    params = params or models.Params()
    booster = models.train(X[train], y[train], params)
    scores = models.predict(booster, X[val])
    challenger = metrics(df[val], scores)
    champion = champion_metrics(registry, df, val, spec, X)
    wins = champion is None or challenger["ap"] > champion["ap"]
    reason = (
        "no champion yet"
        if champion is None
        else f"validation AP {challenger['ap']:.4f} vs champion {champion['version']} "
        f"{champion['ap']:.4f}"
    )
    threshold, rate = alert_threshold(df[val], scores, cards_per_day)
    meta = {
        "preset": spec.name,
        "features": spec.names,
        "spec_fingerprint": spec.fingerprint(),
        "train_start": str(split.train_start.date()),
        "train_end": str((split.train_end - DAY).date()),
        "validation_start": str(split.test_start.date()),
        "validation_end": str((split.test_end - DAY).date()),
        "n_train": int(train.sum()),
        "n_train_fraud": int(y[train].sum()),
        "n_validation": int(val.sum()),
        "data_fingerprint": data_fingerprint(df[train]),
        "device": booster.attr("device"),
        "params": asdict(params),
        "metrics": challenger,
        "champion_metrics": champion,
        "threshold": threshold,
        "threshold_objective": f"about {cards_per_day} alerted cards a day",
        "threshold_cards_per_day": rate,
        "promotion": {"decision": "promoted" if wins else "kept champion", "reason": reason},
    }
    with registry.writing(meta) as path:
        booster.save_model(path / MODEL_FILE)
        (path / META_FILE).write_text(to_json(meta))
        # the drift reference of the streaming job's monitoring: training inputs, and the
        # validation scores (out of sample, like the scores the stream will produce)
        save_reference(reference_profile(X[train], spec.names, scores=scores), path)
        write_report(path, booster, spec.names, X[val], y[val], scores, meta)
        (path / "decision.json").write_text(json.dumps(meta["promotion"], indent=2) + "\n")
    if wins:
        registry.promote(meta["version"])
    print(
        f"model {meta['version']} ({spec.name}, device {meta['device']}): "
        f"AUC {challenger['auc']:.3f} AP {challenger['ap']:.3f} "
        f"CP@100 {challenger['cp_at_100']:.3f} on "
        f"{meta['validation_start']}..{meta['validation_end']}; threshold {threshold:.4f} "
        f"(~{rate:.0f} cards/day)"
    )
    report = registry.uri(meta["version"], "report.md")
    print(f"{meta['promotion']['decision']}: {reason}; report: {report}")
    return meta


def newest_train_end(inputs: list[str], preset: str, naive_time_zone: str = "UTC") -> str:
    """The newest window end whose labels are all known: the day after the data, minus the delay."""
    df = read_transactions(inputs, presets.get(preset), naive_time_zone=naive_time_zone)
    last = df["TX_DATETIME"].max().normalize() + DAY
    return str((last - LABEL_DELAY_DAYS * DAY).date())
