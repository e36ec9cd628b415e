"""Pipeline benchmarks on the local runner, against the emulators.

- ``pipeline_vs_passthrough``: events/s of the whole job (features, Bigtable writes, scoring,
  alerts, scored sink) over a pass-through job (read both subscriptions, write one topic) on
  the same runner, same patches, same events, in the same run.
- ``e2e_p99_ms_at_200eps``: publish -> alert latency at 200 events/s (transactions and labels)
  with the threshold at 0, so every transaction alerts: the alert's Pub/Sub publish time minus
  the time its transaction was handed to the publisher (one machine, one clock).

Each job runs in its own process (``streaming.local.job_process``) with the job's defaults
(``--ordering arrival``) and is warmed up first (its first bundles load Numba kernels, the model
and Feast). Run alone: ``python -m bench.pipeline``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import numpy as np
import pandas as pd

from features import presets
from features.backfill import backfill
from features.synthetic import transactions
from features.table import validate
from streaming.job.options import FraudstreamOptions
from streaming.job.pipeline import read_pubsub
from streaming.local import emulators as emu
from streaming.local import job_process as lj
from streaming.local.launch import run_local
from streaming.local.replay import Publisher, replay
from streaming.pseudonymise import ENV_KEY
from streaming.schema import count_scored
from streaming.store.feast_store import apply_repo, scratch_repo
from training import model as models
from training.registry import Registry

SPEC = presets.BASELINE
Metrics = dict[str, float | int | str | None]


def build_passthrough(p: beam.Pipeline, options) -> None:
    """Read both subscriptions, write every payload to ``--alerts_topic``: the reference."""
    opts = options.view_as(FraudstreamOptions)
    tx = read_pubsub(p, "ReadTransactions", opts.transactions_subscription, None)
    labels = read_pubsub(p, "ReadLabels", opts.labels_subscription, None)
    _ = (tx, labels) | beam.Flatten() | "Write" >> beam.io.WriteToPubSub(opts.alerts_topic)


def world(root: Path, n: int = 12_000) -> tuple[pd.DataFrame, Path]:
    """Recent synthetic transactions (Feast's TTL is wall-clock) and a model trained on them."""
    df = transactions(n=n, customers=800, terminals=600, days=60, fraud_rate=0.03)
    start = pd.Timestamp.now().floor("D") - pd.Timedelta(days=61)
    df["TX_DATETIME"] += start - df["TX_DATETIME"].min().floor("D")
    df = validate(df, SPEC)
    X = backfill(df, SPEC)[SPEC.names].to_numpy(np.float32)
    booster = models.train(X, df["TX_FRAUD"].to_numpy(), models.Params(50), device="cpu")
    registry = Registry(root / "models")
    meta = {"preset": SPEC.name, "features": SPEC.names, "spec_fingerprint": SPEC.fingerprint(),
            "threshold": float(np.quantile(models.predict(booster, X), 0.97))}  # fmt: skip
    registry.promote(registry.save(booster, meta))
    return df, registry.root


def _wait(count: Callable[[], int], target: int, timeout_s: float, job) -> float:
    """Poll ``count`` until it reaches ``target``; returns the time it did (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while (n := count()) < target:
        if job.poll() is not None:
            raise RuntimeError(f"the job exited with {job.returncode} (see its log)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} of {target} outputs after {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic()


class _Counter:
    """Counts messages arriving on a subscription (drained and acknowledged as they come)."""

    def __init__(self, subscription: str) -> None:
        self.subscription, self.n = subscription, 0

    def __call__(self) -> int:
        self.n += len(lj.drain(self.subscription, wait_s=1.0))
        return self.n


def _throughput(kind: str, df: pd.DataFrame, models_dir: Path, tmp: Path, warm: int) -> float:
    """Events/s (transactions + labels) of one job over ``df`` after ``warm`` transactions."""
    topics = lj.Topics.create(f"bench-{kind}")
    scored = tmp / f"scored-{kind}"
    if kind == "full":
        repo = scratch_repo(tmp / "repo", f"bench_{uuid.uuid4().hex[:8]}")
        apply_repo("emulator", repo)
        args = lj.job_args(topics, models_dir, SPEC.name, scored, repo, ["--device", "cpu"])
        args += ["--max_lateness_hours", str(24 * 90)]  # redelivered stragglers still count
        job = lj.start(args, tmp / f"{kind}.log")
        outputs: Callable[[], int] = lambda: count_scored(scored)  # noqa: E731
        per_tx = 1
    else:
        args = ["--transactions_subscription", topics.subscriptions["tx"],
                "--labels_subscription", topics.subscriptions["labels"],
                "--alerts_topic", topics.topics["alerts"]]  # fmt: skip
        job = lj.start(args, tmp / f"{kind}.log", ("bench.pipeline", "passthrough"))
        outputs = _Counter(topics.subscriptions["alerts"])
        per_tx = 2  # a transaction and its label
    try:
        publish = Publisher(lj.PROJECT)
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        head, rest = df.iloc[:warm], df.iloc[warm:]
        replay(head, publish, tx, labels, SPEC.label_delay)
        publish.flush()
        _wait(outputs, per_tx * len(head), 300, job)
        t0 = time.monotonic()
        replay(rest, publish, tx, labels, SPEC.label_delay)
        publish.flush()
        done = _wait(outputs, per_tx * len(df), 600, job)
    finally:
        lj.stop(job)
    return 2 * len(rest) / (done - t0)


def _latency(df: pd.DataFrame, models_dir: Path, tmp: Path, rate: float, warm: int) -> Metrics:
    """Publish -> alert latency percentiles at ``rate`` events/s, every transaction alerting."""
    topics = lj.Topics.create("bench-latency")
    extra = ["--device", "cpu", "--threshold", "0", "--max_lateness_hours", str(24 * 90)]
    scored = tmp / f"scored-latency-{rate:g}"
    args = lj.job_args(topics, models_dir, SPEC.name, scored, None, extra)
    job = lj.start(args, tmp / f"latency-{rate:g}.log")
    sent: dict[int, float] = {}
    publisher = Publisher(lj.PROJECT)

    def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        if topic == tx:
            sent[int(attrs["id"])] = time.time()
        publisher(topic, data, attrs)

    try:
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        replay(df.iloc[:warm], publish, tx, labels, SPEC.label_delay)
        publisher.flush()
        _wait(lambda: count_scored(scored), warm, 300, job)
        lj.drain(topics.subscriptions["alerts"], wait_s=2)
        sent.clear()
        replay(df.iloc[warm:], publish, tx, labels, SPEC.label_delay, rate=rate)
        publisher.flush()
        _wait(lambda: count_scored(scored), len(df), 300, job)
        time.sleep(2)
        alerts = lj.drain(topics.subscriptions["alerts"], wait_s=5)
    finally:
        lj.stop(job)
    latency = np.array(
        [
            (m.publish_time.timestamp() - sent[json.loads(m.data)["transaction_id"]]) * 1e3
            for m in alerts
            if json.loads(m.data)["transaction_id"] in sent
        ]
    )
    tag = f"{rate:g}eps"
    return {
        f"e2e_alerts_measured_at_{tag}": len(latency),
        f"e2e_p50_ms_at_{tag}": round(float(np.percentile(latency, 50)), 1),
        f"e2e_p99_ms_at_{tag}": round(float(np.percentile(latency, 99)), 1),
    }


def bench_pipeline(events: int = 6_000, rate: float = 200.0, seconds: float = 30.0) -> Metrics:
    """All pipeline figures; starts and stops its own emulators."""
    reason = emu.gcloud_available()
    if reason:
        print(f"bench: pipeline skipped: {reason}", file=sys.stderr)
        return {}
    import os

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        infos = emu.up(state_dir=tmp / "emulators")
        env = emu.env_for(infos) | {ENV_KEY: secrets.token_hex(32)}  # ids are pseudonymised
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            n_latency = int(rate * seconds / 2)
            df, models_dir = world(tmp, n=max(events // 2, n_latency) + 400)
            warm = 400
            measured = df.iloc[: warm + events // 2]
            full = _throughput("full", measured, models_dir, tmp, warm)
            print(f"bench: pipeline {full:.1f} events/s", file=sys.stderr)
            passthrough = _throughput("passthrough", measured, models_dir, tmp, warm)
            print(f"bench: pass-through {passthrough:.1f} events/s", file=sys.stderr)
            latency = _latency(df.iloc[: warm + n_latency], models_dir, tmp, rate, warm)
            half = _latency(df.iloc[: warm + n_latency // 2], models_dir, tmp, rate / 2, warm)
        finally:
            emu.down(state_dir=tmp / "emulators")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return {
        "pipeline_events_per_s": round(full, 1),
        "passthrough_events_per_s": round(passthrough, 1),
        "pipeline_vs_passthrough": round(full / passthrough, 3),
        "pipeline_ordering": FraudstreamOptions([]).ordering,
        **latency,
        **half,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["passthrough"]:
        run_local(argv[1:], build_fn=build_passthrough)
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=6_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(json.dumps(bench_pipeline(args.events, args.rate, args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
