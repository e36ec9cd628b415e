"""`fraudstream demo` in embedded mode on a small history: summary, report, model reuse."""

from __future__ import annotations

import json
import os

import pytest

from features.synthetic import transactions
from streaming.cli import main
from streaming.pseudonymise import ENV_KEY


@pytest.mark.slow
def test_the_embedded_demo_scores_every_event_as_offline_and_writes_its_report(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv(ENV_KEY, raising=False)
    history = tmp_path / "tx.parquet"
    transactions(n=4_000, customers=80, terminals=60, days=60, fraud_rate=0.05).to_parquet(history)
    out = tmp_path / "demo"
    args = ["demo", "--input", str(history), "--embedded", "--events", "300",
            "--train-days", "28", "--preset", "baseline", "--out", str(out),
            "--json", str(out / "summary.json")]  # fmt: skip
    assert main(args) == 0
    assert ENV_KEY not in os.environ, "the demo's ephemeral key does not outlive it"
    summary = json.loads((out / "summary.json").read_text())
    assert {"mode", "events", "alerts", "dlq", "latency_ms_p50", "latency_ms_p99", "cp_at_100",
            "model_version"} <= set(summary)  # fmt: skip
    assert summary["mode"] == "embedded" and summary["events"] == summary["scored"] == 300
    assert summary["scores_equal_offline"] == 300 and summary["dlq"] == 0
    assert summary["cp_at_100"] == summary["cp_at_100_offline"]
    report = (out / "report.md").read_text()
    for png in ("scores", "alerts_per_hour", "latency", "drift"):
        assert (out / f"{png}.png").stat().st_size > 0 and f"({png}.png)" in report

    capsys.readouterr()
    assert main(args) == 0  # a second run reuses the model trained for the same data
    assert "reusing model v0001" in capsys.readouterr().out
