"""`fraudstream demo` on the emulators: the job starts from states in Bigtable, looks its batch
features up in the Bigtable online store, and the features it scored with equal the training
set's (the backfill, batch features joined point in time) bit for bit."""

from __future__ import annotations

import json

import pytest

from streaming.cli import main
from streaming.pseudonymise import ENV_KEY
from tests.streaming.test_demo import busy_last_day

EVENTS = 300


@pytest.mark.emulator
@pytest.mark.slow
def test_the_demo_on_the_emulators_scores_with_the_training_sets_features(
    emulators, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv(ENV_KEY, raising=False)
    history = tmp_path / "tx.parquet"
    busy_last_day(events=EVENTS).to_parquet(history)
    out = tmp_path / "demo"
    args = ["demo", "--input", str(history), "--events", str(EVENTS), "--train-days", "28",
            "--preset", "enriched", "--out", str(out),
            "--json", str(out / "summary.json")]  # fmt: skip
    assert main(args) == 0, (out / "job.log").read_text()[-3000:]
    printed = capsys.readouterr().out
    assert "using the running emulators of the environment" in printed  # the session's
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "emulators"
    assert summary["scored"] == summary["events"] == EVENTS
    # The looked-up features do not depend on delivery order: every row, bit for bit. The
    # replay publishes each topic under an ordering key, so every transaction reaches the job in
    # order and every feature computed from transactions alone is exact too. Labels come through
    # a second subscription and can race the transactions: they move only the label features
    # (in this history, a few rows even if every label came after every transaction).
    assert summary["lookups_equal_training"] == EVENTS, "the looked-up features the job used"
    assert summary["features_equal_training_but_labels"] == EVENTS
    assert summary["features_equal_training"] >= 0.95 * EVENTS
    assert summary["scores_equal_offline"] >= 0.95 * EVENTS
    lookups = summary["feature_lookups"]
    assert lookups >= 1 and summary["lookups_per_1000_tx"] == round(1000 * lookups / EVENTS, 2)
    assert summary["states_from_store"] > 0, "cards and terminals started from Bigtable"
