"""The evaluate command end to end on a small synthetic history."""

from __future__ import annotations

import json

from features.synthetic import transactions
from streaming.cli import main
from training import evaluate as ev
from training.model import Params

KEYS = {
    "auc",
    "ap",
    "cp_at_100",
    "train_start",
    "train_days",
    "n_train",
    "n_test",
    "features",
    "model",
}


def test_evaluate_writes_the_protocol_result(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tx.parquet"
    transactions(n=8_000, customers=300, terminals=50, days=60, fraud_rate=0.002).to_parquet(path)
    small = (Params(n_estimators=30), Params(n_estimators=30, max_depth=3))
    monkeypatch.setattr(ev.models, "GRID", small)
    out = tmp_path / "result.json"
    args = ["evaluate", "--input", str(path), "--train-start", "2018-05-01", "--train-days", "14"]
    assert main([*args, "--preset", "default", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result.keys() >= KEYS
    assert result["train_start"] == "2018-04-24" and result["test_start"] == "2018-05-15"
    assert result["test_features_equal_backfill"] is True
    assert result["feedback"]["feedback_labels"] > 0 and result["feedback"]["auc"] > 0.8
    assert len(result["tuning"]) == 2 and result["auc"] > 0.8  # amounts > 220 are fraud
    printed = capsys.readouterr().out
    assert "best tuned models" in printed and "fraudstream default" in printed
    assert main([*args[:-4], "--train-start", "2018-05-20", "--no-tune"]) == 2
    assert "the split needs data from" in capsys.readouterr().err


def test_evaluate_compares_a_preset_with_lookups_beside_another(tmp_path, capsys):
    """``--preset enriched --compare default``: both under one protocol; the batch features'
    test-week values come from the stream's path like the rest."""
    path = tmp_path / "tx.parquet"
    transactions(n=6_000, customers=200, terminals=50, days=60, fraud_rate=0.002).to_parquet(path)
    out = tmp_path / "result.json"
    args = ["evaluate", "--input", str(path), "--train-start", "2018-05-01", "--train-days",
            "14", "--no-tune", "--preset", "enriched", "--compare", "default", "--json",
            str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "enriched" and "feedback" not in result
    assert result["test_features_equal_backfill"] is True
    assert set(result["compared"]) == {"default"}
    assert result["compared"]["default"]["test_features_equal_backfill"] is True
    assert "preset default, same protocol" in capsys.readouterr().out
