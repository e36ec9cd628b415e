"""The job as Dataflow would run it, on the emulators: every input and output a ``gs://``,
Pub/Sub or Bigtable name, the job started from an empty working directory with nothing in its
environment but the emulator hosts and the id key (Secret Manager has no emulator).

``fraudstream train`` writes and promotes the model on ``gs://``, ``fraudstream bootstrap``
writes the states there, the Feast registry is a ``gs://`` object, and a model promoted on
``gs://`` while the job runs scores the transactions that come after it.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.synthetic import transactions
from features.table import validate
from streaming.cli import main
from streaming.local import job_process as lj
from streaming.local.replay import Publisher, replay
from streaming.pseudonymise import ENV_KEY, Pseudonymiser
from streaming.schema import ScoredCounter, read_scored
from streaming.store.feast_store import FeastFeatureStore, StoreSettings, apply_repo
from streaming.store.names import stored_entities

SPEC = presets.BASELINE
N_TX = 2_000
HISTORY_SHARE = 0.6
FEED_HOURS = 6
"""The fed transactions' span: few hourly windows, so few scored files, each a few requests
to the GCS emulator (spread over the 12 days they would have, they took two minutes)."""


def _history() -> pd.DataFrame:
    """Transactions over the last 30 days (the online store expires features by age); the
    last ``1 - HISTORY_SHARE`` of them, the feed, squeezed in order into its last
    :data:`FEED_HOURS` hours."""
    df = transactions(n=N_TX, customers=50, terminals=40, days=30, fraud_rate=0.05)
    fed = df["TX_DATETIME"].iloc[int(len(df) * HISTORY_SHARE) :]
    end, span = fed.iloc[-1], fed.iloc[-1] - fed.iloc[0]
    squeezed = end - (end - fed) * (pd.Timedelta(hours=FEED_HOURS) / span)
    df.loc[fed.index, "TX_DATETIME"] = squeezed.dt.floor("s")
    start = pd.Timestamp.now().floor("D") - pd.Timedelta(days=31)
    df["TX_DATETIME"] += start - df["TX_DATETIME"].min().floor("D")
    return validate(df, SPEC)


def _wait(condition, timeout_s: float, job, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.mark.slow
def test_the_job_with_every_input_remote(
    emulators, gcs_emulator, gcs_bucket, tmp_path, monkeypatch
):
    df = _history()
    cut = int(len(df) * HISTORY_SHARE)
    history, feed = df.iloc[:cut], df.iloc[cut:]
    source, everything = tmp_path / "history.parquet", tmp_path / "all.parquet"
    history.to_parquet(source)
    df.to_parquet(everything)  # the model's training data (its quality is not the point)
    bucket = f"gs://{gcs_bucket}"
    key = secrets.token_bytes(32).hex()
    monkeypatch.setenv(ENV_KEY, key)

    # Operators' side: model, states and Feast registry on gs://.
    end = (df["TX_DATETIME"].max().normalize() + pd.Timedelta(days=1)).date()
    train = ["train", "--input", str(everything), "--model-dir", f"{bucket}/models",
             "--preset", SPEC.name, "--train-end", str(end)]  # fmt: skip
    assert main([*train, "--train-days", "21"]) == 0
    assert main(["promote", "--model_dir", f"{bucket}/models", "--version", "v0001"]) == 0
    states = f"{bucket}/states/{SPEC.name}.parquet"
    assert main(["bootstrap", "--input", str(source), "--output", states,
                 "--preset", SPEC.name]) == 0  # fmt: skip
    settings = StoreSettings("emulator", registry=f"{bucket}/feast/registry.db")
    apply_repo(settings)

    topics = lj.Topics.create("remote")
    args = [
        "--transactions_subscription", topics.subscriptions["tx"],
        "--labels_subscription", topics.subscriptions["labels"],
        "--alerts_topic", topics.topics["alerts"],
        "--dlq_topic", topics.topics["dlq"],
        "--model_dir", f"{bucket}/models",
        "--model_poll_s", "1",
        "--preset", SPEC.name,
        "--initial_state", states,
        "--scored_dir", f"{bucket}/scored",
        "--scored_flush_s", "1",
        "--feature_store", "feast",
        "--feature_store_profile", "emulator",
        "--feast_registry", settings.registry,
        "--device", "cpu",
        "--max_lateness_hours", str(24 * 40),
    ]  # fmt: skip
    env = {
        "PUBSUB_EMULATOR_HOST": emulators["pubsub"].address,
        "BIGTABLE_EMULATOR_HOST": emulators["bigtable"].address,
        "STORAGE_EMULATOR_HOST": f"http://{gcs_emulator.address}",
        ENV_KEY: key,
    }
    empty = tmp_path / "empty-cwd"
    empty.mkdir()
    log = tmp_path / "job.log"
    job = lj.start(args, log, env=env, cwd=empty)
    scored_dir = f"{bucket}/scored"
    scored_rows = ScoredCounter(scored_dir)
    first, second = feed.iloc[: len(feed) // 2], feed.iloc[len(feed) // 2 :]
    try:
        publish = Publisher(lj.PROJECT)
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        replay(first, publish, tx, labels, SPEC.label_delay, progress=False)
        publish.flush()
        _wait(lambda: scored_rows() >= len(first), 240, job, log, "the first half")

        # A model promoted on gs:// while the job runs scores what comes after it.
        assert main([*train, "--train-days", "28"]) == 0  # a longer window: v0002
        assert main(["promote", "--model_dir", f"{bucket}/models", "--version", "v0002"]) == 0
        time.sleep(3)  # the job polls the pointer every second
        replay(second, publish, tx, labels, SPEC.label_delay, progress=False)
        publish.flush()
        _wait(lambda: scored_rows() >= len(feed), 240, job, log, "the second half")
        time.sleep(3)  # the last alerts are on their way to Pub/Sub
    finally:
        assert lj.stop(job) == 0, log.read_text()[-3000:]
    assert list(empty.iterdir()) == [], "the job wrote nothing to its working directory"

    scored = read_scored(scored_dir)
    assert len(scored) == len(feed), "every valid transaction is in the scored files once"
    assert sorted(scored["transaction_id"]) == sorted(feed["TRANSACTION_ID"])
    versions = scored.set_index("transaction_id")["model_version"]
    assert set(versions.loc[first["TRANSACTION_ID"]]) == {"v0001"}
    assert set(versions.loc[second["TRANSACTION_ID"].iloc[-100:]]) == {"v0002"}

    alerts = [json.loads(m.data) for m in lj.drain(topics.subscriptions["alerts"])]
    assert alerts, "some transactions alert"
    assert {a["model_version"] for a in alerts} == {"v0001", "v0002"}
    ids = Pseudonymiser(bytes.fromhex(key))
    by_id = df.set_index("TRANSACTION_ID")
    for alert in alerts[:20]:
        clear = int(by_id.loc[alert["transaction_id"], "CUSTOMER_ID"])
        assert alert["customer_id"] == ids.customer(clear)

    # Features in Bigtable, through Feast with the gs:// registry: the newest of each card.
    store = FeastFeatureStore.open(SPEC, settings)
    customers = scored.sort_values(["event_time", "transaction_id"]).drop_duplicates(
        "customer_id", keep="last"
    )
    keys = {e.key: np.zeros(len(customers), np.int64) for e in stored_entities(SPEC)}
    keys["CUSTOMER_ID"] = customers["customer_id"].to_numpy(np.int64)
    assert store.read(keys).found["customer"].all()
