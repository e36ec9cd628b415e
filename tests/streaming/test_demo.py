"""`fraudstream demo` in embedded mode on a small history: summary, report, model reuse."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.synthetic import transactions
from streaming.cli import main
from streaming.job.common import TOTALS, stage_cpu_us
from streaming.local.demo import DemoConfig, ensure_model, load_data, same_bits
from streaming.pseudonymise import ENV_KEY


def busy_last_day(n: int = 4_000, events: int = 300, days: int = 60) -> pd.DataFrame:
    """A synthetic history of ``n`` transactions over ``days`` days whose last ``events`` all fall
    on its last day: a demo replaying them stays within one day, so the batch features
    materialized as of its first midnight serve all of it."""
    kind = {"customers": 80, "terminals": 60, "fraud_rate": 0.05}
    quiet = transactions(n=n - events, days=days - 1, **kind)
    busy = transactions(n=events, days=1, seed=8, **kind)
    busy = busy.assign(
        TRANSACTION_ID=busy["TRANSACTION_ID"] + len(quiet),
        TX_DATETIME=busy["TX_DATETIME"] + pd.Timedelta(days=days - 1),
        TX_TIME_SECONDS=busy["TX_TIME_SECONDS"] + (days - 1) * 86_400,
        TX_TIME_DAYS=busy["TX_TIME_DAYS"] + days - 1,
    )
    history = pd.concat([quiet, busy], ignore_index=True)
    assert history["TX_DATETIME"].tail(events).dt.normalize().nunique() == 1
    return history


def test_same_bits_tells_apart_what_equality_would_not():
    a = np.array([[1.0, np.nan], [0.0, 2.0], [1.0, 2.0], [np.nan, 2.0]])
    b = np.array([[1.0, np.nan], [-0.0, 2.0], [1.0, np.nextafter(2.0, 3.0)], [np.inf, 2.0]])
    assert same_bits(a, b).tolist() == [True, False, False, False]


@pytest.mark.slow
def test_the_embedded_demo_scores_every_event_as_offline_and_writes_its_report(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv(ENV_KEY, raising=False)
    history = tmp_path / "tx.parquet"
    busy_last_day().to_parquet(history)
    out = tmp_path / "demo"
    before = stage_cpu_us(TOTALS.counts)  # the runner works in this process: its totals
    args = ["demo", "--input", str(history), "--embedded", "--events", "300",
            "--train-days", "28", "--preset", "enriched", "--out", str(out),
            "--json", str(out / "summary.json")]  # fmt: skip
    assert main(args) == 0
    assert ENV_KEY not in os.environ, "the demo's ephemeral key does not outlive it"
    summary = json.loads((out / "summary.json").read_text())
    assert {"mode", "events", "alerts", "dlq", "latency_ms_p50", "latency_ms_p99", "cp_at_100",
            "model_version", "lookups_per_1000_tx"} <= set(summary)  # fmt: skip
    assert summary["mode"] == "embedded" and summary["events"] == summary["scored"] == 300
    assert summary["features_equal_training"] == 300, "the batch features of the training set"
    assert summary["scores_equal_offline"] == 300 and summary["dlq"] == 0
    assert summary["cp_at_100"] == summary["cp_at_100_offline"]
    assert summary["feature_lookups"] >= 1 and summary["feature_lookup_rows"] >= 1
    assert summary["states_from_store"] == 0, "embedded: the states come from a file"
    cpu = stage_cpu_us(TOTALS.counts)
    timed = {stage for stage, us in cpu.items() if us > before.get(stage, 0)}
    # the event_time ordering's stages and the lookup stage time themselves too
    assert {"lookup", "customer_features", "terminal_features", "join", "score"} <= timed
    report = (out / "report.md").read_text()
    for png in ("scores", "alerts_per_hour", "latency", "drift"):
        assert (out / f"{png}.png").stat().st_size > 0 and f"({png}.png)" in report

    # A second run reuses the model trained for the same data (its first step, as run_demo
    # calls it; the whole demo again would only repeat the above).
    config = DemoConfig(str(history), "enriched", events=300, out=str(out), train_days=28)
    df, _ = load_data(config.input, presets.ENRICHED)
    capsys.readouterr()
    assert ensure_model(df, df["TX_DATETIME"].iloc[-300:].min(), config) == out / "models"
    assert "reusing model v0001" in capsys.readouterr().out
