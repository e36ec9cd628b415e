"""Training, the registry's champion/challenger gate, the report, and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.synthetic import transactions
from streaming.cli import main
from training.registry import Registry, RegistryError
from training.train import alert_threshold, run_train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tx.parquet"
    transactions(n=6_000, customers=60, terminals=40, days=60, fraud_rate=0.05).to_parquet(path)
    return str(path)


def test_first_model_is_promoted_and_an_equal_challenger_is_not(history, tmp_path):
    models = tmp_path / "models"
    first = run_train([history], "2018-05-28", 56, str(models), preset="baseline")
    assert first["promotion"]["decision"] == "promoted"
    second = run_train([history], "2018-05-28", 56, str(models), preset="baseline")
    assert second["promotion"]["decision"] == "kept champion"
    assert second["champion_metrics"]["ap"] == pytest.approx(second["metrics"]["ap"])
    registry = Registry(models)
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.load().version == "v0001"  # current still points at the champion
    meta = json.loads((models / "v0002" / "meta.json").read_text())
    assert meta["features"] == registry.load("v0002").features
    assert meta["train_start"] == "2018-04-02" and meta["validation_end"] == "2018-05-27"
    for name in ("curves.png", "scores.png", "importance.png"):
        image = (models / "v0002" / name).read_bytes()
        assert image.startswith(PNG) and len(image) > 5_000
    assert "![scores](scores.png)" in (models / "v0002" / "report.md").read_text()


def test_a_better_challenger_replaces_a_worse_champion(history, tmp_path):
    from features import presets
    from features.backfill import backfill
    from features.table import read_transactions
    from training import model as models_

    spec = presets.BASELINE
    df = read_transactions([history], spec)
    X = backfill(df, spec)[spec.names].to_numpy(np.float32)
    shuffled = np.random.default_rng(0).permutation(df["TX_FRAUD"].to_numpy())
    bad = models_.train(X, shuffled, models_.Params(n_estimators=20))
    registry = Registry(tmp_path / "models")
    meta = {"preset": spec.name, "features": spec.names, "spec_fingerprint": spec.fingerprint()}
    registry.promote(registry.save(bad, meta))
    result = run_train([history], "2018-05-28", 56, str(tmp_path / "models"), preset="baseline")
    assert result["metrics"]["ap"] > result["champion_metrics"]["ap"]
    assert result["promotion"]["decision"] == "promoted"
    assert "vs champion v0001" in result["promotion"]["reason"]
    assert registry.load().version == "v0002"
    with pytest.raises(RegistryError, match="trained on spec baseline"):
        registry.load().check_spec(presets.DEFAULT)


def test_threshold_alerts_about_the_requested_cards_per_day():
    import pandas as pd

    days = pd.to_datetime(["2018-08-08"] * 300 + ["2018-08-09"] * 300)
    df = pd.DataFrame({"TX_DATETIME": days, "CUSTOMER_ID": np.tile(np.arange(300), 2)})
    scores = np.random.default_rng(0).random(600)
    threshold, rate = alert_threshold(df, scores, cards_per_day=50)
    assert 45 <= rate <= 55 and 0 < threshold < 1


def test_clear_errors(history, tmp_path, capsys):
    not_a_registry = tmp_path / "stuff"
    not_a_registry.mkdir()
    (not_a_registry / "notes.txt").write_text("hello")
    args = ["train", "--input", history, "--model-dir", str(not_a_registry)]
    assert main([*args, "--train-end", "2018-05-28", "--train-days", "56"]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    models = str(tmp_path / "models")
    args = ["train", "--input", history, "--model-dir", models]
    assert main([*args, "--train-end", "2019-01-01", "--train-days", "56"]) == 2
    assert "the input covers 2018-04-01 to 2018-05-30" in capsys.readouterr().err
    assert main([*args, "--train-end", "2018-05-28", "--train-days", "7"]) == 2
    assert "train_days must be >= 21" in capsys.readouterr().err
    gap = tmp_path / "gap.parquet"  # nothing in the validation week (2018-05-21 to 05-27)
    df = transactions(n=6_000, customers=60, terminals=40, days=60, fraud_rate=0.05)
    df[(df["TX_DATETIME"] < "2018-05-21") | (df["TX_DATETIME"] >= "2018-05-28")].to_parquet(gap)
    args = ["train", "--input", str(gap), "--model-dir", models]
    assert main([*args, "--train-end", "2018-05-28", "--train-days", "56"]) == 2
    assert "no transactions to use for validation from 2018-05-21 to 2018-05-27" in (
        capsys.readouterr().err
    )
    no_fraud = tmp_path / "nofraud.parquet"
    transactions(n=2_000, days=60, fraud_rate=0.0).to_parquet(no_fraud)
    args = ["train", "--input", str(no_fraud), "--model-dir", models]
    assert main([*args, "--train-end", "2018-05-28", "--train-days", "56"]) == 2
    assert "single class" in capsys.readouterr().err
