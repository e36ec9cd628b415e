"""End to end on the real emulators: `fraudstream run` (a separate process, the local runner)
reads Pub/Sub, writes alerts and dead letters to Pub/Sub, features to Bigtable through Feast,
and every score to parquet. A few thousand events are replayed with malformed messages and
redelivered duplicates mixed in.

Exactness of features and scores is the no-skew proof's job (``test_pipeline.py``, with
controlled watermarks); here the DirectRunner's watermark is the wall clock, so the order of
a key's events is the order Pub/Sub delivers them.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.backfill import backfill
from features.synthetic import transactions
from features.table import validate
from streaming.job.common import parse_totals
from streaming.job.parse import dead_letter
from streaming.local import job_process as lj
from streaming.local.replay import Publisher, replay
from streaming.pseudonymise import ENV_KEY, Pseudonymiser
from streaming.schema import ScoredCounter, read_scored
from streaming.store.feast_store import FeastFeatureStore, apply_repo, scratch_repo
from streaming.store.names import stored_entities
from training import model as models
from training.registry import Registry, model_meta

SPEC = presets.BASELINE
N_TX = 2_500
ALERT_KEYS = {
    "transaction_id", "customer_id", "terminal_id", "score", "threshold", "model_version",
    "reasons", "features", "feature_age_ms", "event_time", "processing_latency_ms",
}  # fmt: skip
BAD = [
    b"{not json",
    b"\xff\xfe\x00",
    json.dumps({"TRANSACTION_ID": 10**7}).encode(),
    json.dumps({"TRANSACTION_ID": 10**7 + 1, "TX_DATETIME": "2018-04-05T00:00:00",
                "CUSTOMER_ID": 1, "TERMINAL_ID": 2, "TX_AMOUNT": -5.0}).encode(),
    json.dumps({"TRANSACTION_ID": "x ", "TX_DATETIME": "2018-04-05T00:00:00",
                "CUSTOMER_ID": 1, "TERMINAL_ID": 2, "TX_AMOUNT": 5.0}).encode(),
    b'{"TRANSACTION_ID": 10000002, "TX_DATETIME": "2018-04-05T00:00:00", "CUSTOMER_ID": 1, '
    b'"TERMINAL_ID": 2, "TX_AMOUNT": NaN}',
    json.dumps({"TRANSACTION_ID": 10**7 + 3, "TX_DATETIME": "yesterday",
                "CUSTOMER_ID": 1, "TERMINAL_ID": 2, "TX_AMOUNT": 5.0}).encode(),
    b"[]",
]  # fmt: skip
N_DUPLICATES = 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> tuple[Path, pd.DataFrame, float]:
    df = transactions(n=N_TX, customers=60, terminals=50, days=30, fraud_rate=0.04)
    # recent event times: the online store expires features by wall-clock age (Feast's TTL)
    start = pd.Timestamp.now().floor("D") - pd.Timedelta(days=31)
    df["TX_DATETIME"] += start - df["TX_DATETIME"].min().floor("D")
    df = validate(df, SPEC)
    X = backfill(df, SPEC)[SPEC.names].to_numpy(np.float32)
    booster = models.train(X, df["TX_FRAUD"].to_numpy(), models.Params(30))
    threshold = float(np.quantile(models.predict(booster, X), 0.95))  # about 5 % alert
    root = tmp_path_factory.mktemp("models")
    registry = Registry(root)
    meta = model_meta(SPEC, threshold)
    registry.promote(registry.save(booster, meta))
    return root, df, threshold


@pytest.mark.slow
def test_the_job_on_the_emulators(emulators, unique_name, model_dir, tmp_path, monkeypatch):
    root, df, threshold = model_dir
    key = secrets.token_bytes(32)
    monkeypatch.setenv(ENV_KEY, key.hex())  # the job's environment: ids are pseudonymised
    ids = Pseudonymiser(key)
    topics = lj.Topics.create("e2e")
    repo = scratch_repo(tmp_path / "repo", f"e2e_{unique_name('p').split('-')[1]}")
    apply_repo("emulator", repo)
    scored_dir = tmp_path / "scored"
    # Pub/Sub may redeliver a message long after its neighbours (a pull that timed out leaves
    # its messages leased until their ack deadline); with the wall clock as watermark such an
    # event is late for its entities. Accept a month of lateness: every event counts here.
    extra = ["--device", "cpu", "--max_lateness_hours", str(24 * 40), "--clear_ids_in_alerts"]
    extra += ["--scored_flush_s", "1"]  # the scored files sooner: the test waits on them
    args = lj.job_args(topics, root, SPEC.name, scored_dir, repo, extra)
    job = lj.start(args, tmp_path / "job.log")
    try:
        publish = Publisher(lj.PROJECT)
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        assert replay(df, publish, tx, labels, SPEC.label_delay) == {"tx": N_TX, "label": N_TX}
        for bad in BAD:
            publish(tx, bad, {})
        replay(df.head(N_DUPLICATES), publish, tx, labels, SPEC.label_delay)  # redeliveries
        publish.flush()
        deadline, scored_rows = time.monotonic() + 240, ScoredCounter(scored_dir)
        while scored_rows() < N_TX and time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)  # the last alerts and dead letters are on their way to Pub/Sub
    finally:
        assert lj.stop(job) == 0, "the job stops cleanly on Ctrl-C"

    scored = read_scored(scored_dir)
    dead = [json.loads(m.data) for m in lj.drain(topics.subscriptions["dlq"])]
    reasons = sorted(d["error"] for d in dead if d["stage"] == "features")
    assert len(scored) == N_TX, f"every valid transaction is scored once; refused: {reasons}"
    assert set(scored["transaction_id"]) == set(df["TRANSACTION_ID"])
    by_id = df.set_index("TRANSACTION_ID")
    expected_customers = ids.customers(
        by_id.loc[scored["transaction_id"], "CUSTOMER_ID"].to_numpy()
    )
    np.testing.assert_array_equal(scored["customer_id"].to_numpy(), expected_customers)
    assert not set(scored["customer_id"]) & set(df["CUSTOMER_ID"]), "no clear id is stored"

    alerts = [json.loads(m.data) for m in lj.drain(topics.subscriptions["alerts"])]
    alert_ids = [a["transaction_id"] for a in alerts]
    assert alerts, "some transactions score above the threshold"
    assert len(alert_ids) == len(set(alert_ids)), "no duplicate alerts"
    assert set(alert_ids) == set(scored.loc[scored["alert"], "transaction_id"])
    for alert in alerts:
        assert set(alert) == ALERT_KEYS | {"customer_id_clear", "terminal_id_clear"}
        clear = by_id.loc[alert["transaction_id"]]
        assert alert["customer_id_clear"] == clear["CUSTOMER_ID"]
        assert alert["customer_id"] == ids.customer(int(clear["CUSTOMER_ID"]))
        assert alert["terminal_id"] == ids.terminal(int(clear["TERMINAL_ID"]))
        assert alert["score"] >= alert["threshold"] == pytest.approx(threshold)
        assert len(alert["reasons"]) == 3 and set(alert["features"]) == set(SPEC.names)

    parse_errors = [d for d in dead if d["stage"] == "parse_transactions"]
    assert sorted(d["payload"] for d in parse_errors) == sorted(
        _as_dead_letter_payload(b) for b in BAD
    )
    assert all(d["error"] for d in parse_errors)
    assert [d["error"] for d in dead if d["stage"] == "features"] == ["DUPLICATE"] * N_DUPLICATES
    assert len(dead) == len(BAD) + N_DUPLICATES

    # The job's totals line counts its Bigtable writes: every accepted row, in few calls.
    totals = parse_totals((tmp_path / "job.log").read_text())
    assert 0 < totals["bigtable_mutate_rows"] < N_TX
    assert totals["bigtable_rows_mutated"] >= len(set(scored["customer_id"]))

    # Each customer's and terminal's newest features are readable from Bigtable, as scored.
    store = FeastFeatureStore.open(SPEC, "emulator", repo)
    ordered = scored.sort_values(["event_time", "transaction_id"])
    for entity in stored_entities(SPEC):
        column = entity.key.lower()
        tied = ordered.duplicated([column, "event_time"], keep=False)
        last = ordered.drop_duplicates(column, keep="last")
        last = last[~tied[last.index]]  # same-time events: either may be the stored one
        keys = {e.key: np.zeros(len(last), np.int64) for e in stored_entities(SPEC)}
        keys[entity.key] = last[column].to_numpy(np.int64)
        rows = store.read(keys)
        assert rows.found[entity.name].all()
        names = SPEC.entity_names(entity)
        got = rows.values[:, [rows.columns.index(n) for n in names]]
        np.testing.assert_array_equal(got, last[names].to_numpy())


def _as_dead_letter_payload(payload: bytes) -> str:
    return dead_letter(payload, "", "")["payload"]


@pytest.mark.slow
@pytest.mark.chaos
def test_the_job_rides_out_a_bigtable_restart(
    emulators, emulator_state_dir, unique_name, model_dir, tmp_path, monkeypatch
):
    """The Bigtable emulator is killed and restarted (empty) mid-stream: the feature writes
    wait it out (retries with backoff) and no transaction is lost."""
    from streaming.local import emulators as emu

    root, df, _ = model_dir
    monkeypatch.setenv(ENV_KEY, secrets.token_hex(32))
    topics = lj.Topics.create("restart")
    repo = scratch_repo(tmp_path / "repo", f"rs_{unique_name('p').split('-')[1]}")
    apply_repo("emulator", repo)
    scored_dir = tmp_path / "scored"
    extra = ["--device", "cpu", "--max_lateness_hours", str(24 * 40), "--scored_flush_s", "1"]
    job = lj.start(lj.job_args(topics, root, SPEC.name, scored_dir, repo, extra), tmp_path / "log")
    half = len(df) // 2
    try:
        publish = Publisher(lj.PROJECT)
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        replay(df.iloc[:half], publish, tx, labels, SPEC.label_delay, progress=False)
        publish.flush()
        _wait_scored(job, scored_dir, half // 2, tmp_path / "log")
        emu.restart("bigtable", emulator_state_dir)  # mid-stream: writes in flight retry
        replay(df.iloc[half:], publish, tx, labels, SPEC.label_delay, progress=False)
        publish.flush()
        _wait_scored(job, scored_dir, len(df), tmp_path / "log")
    finally:
        assert lj.stop(job) == 0, (tmp_path / "log").read_text()[-3000:]
    scored = read_scored(scored_dir)
    assert sorted(scored["transaction_id"]) == sorted(df["TRANSACTION_ID"]), "none lost, none twice"
    # the restarted emulator came back empty: what was written after it is readable
    store = FeastFeatureStore.open(SPEC, "emulator", repo)
    last = scored.sort_values(["event_time", "transaction_id"]).tail(50)
    keys = {e.key: last[e.key.lower()].to_numpy(np.int64) for e in stored_entities(SPEC)}
    assert store.read(keys).found["customer"].all()


def _wait_scored(job, scored_dir: Path, n: int, log: Path, timeout_s: float = 240) -> None:
    deadline, scored_rows = time.monotonic() + timeout_s, ScoredCounter(scored_dir)
    while scored_rows() < n:
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{scored_rows()} of {n} scored"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.chaos
def test_a_pubsub_restart_stops_the_job_loudly(
    emulators, emulator_state_dir, model_dir, tmp_path, monkeypatch
):
    """The Pub/Sub emulator keeps nothing across a restart: the job's subscriptions are gone.
    It cannot recover, so it stops with exit status 1 and says why (no silent stall)."""
    from streaming.local import emulators as emu

    root, df, _ = model_dir
    monkeypatch.setenv(ENV_KEY, secrets.token_hex(32))
    topics = lj.Topics.create("pubsub-restart")
    scored_dir, log = tmp_path / "scored", tmp_path / "log"
    extra = ["--device", "cpu", "--scored_flush_s", "1"]
    job = lj.start(lj.job_args(topics, root, SPEC.name, scored_dir, None, extra), log)
    try:
        publish = Publisher(lj.PROJECT)
        replay(df.iloc[:200], publish, topics.topic_id("tx"), topics.topic_id("labels"),
               SPEC.label_delay, progress=False)  # fmt: skip
        publish.flush()
        _wait_scored(job, scored_dir, 100, log)
        emu.restart("pubsub", emulator_state_dir)
        job.wait(120)
    finally:
        lj.stop(job)
    assert job.returncode == 1
    # whichever notices first: the read (subscription gone) or a write (topic gone)
    failure = re.search(r"fraudstream run: the pipeline failed: (.*)", log.read_text())
    assert failure, log.read_text()[-3000:]
    assert re.search(r"does not exist any more|Topic not found", failure.group(1))
