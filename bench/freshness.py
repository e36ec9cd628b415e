"""Feature freshness through Feast: from a transaction's publish to its card's updated features
being readable with ``FeatureStore.get_online_features`` on the Bigtable emulator.

One job (``fraudstream run``, preset ``default``, the job's defaults, the Bigtable feature store
on) runs on the local runner against one Pub/Sub and one Bigtable emulator started here. Beside
it a reader process polls the store the way a serving team would: the plain Feast SDK on the
applied repository (which configures our online store), one ``get_online_features`` call per
poll for one feature of the card view, asking for every card that has a transaction published
and not yet seen. It runs at a lower CPU priority than the job (:data:`READER_NICENESS`), and
is started with ``spawn``: a program calling :func:`bench_freshness` keeps its own start-up under
``if __name__ == "__main__":``.

- **World.** The pipeline benchmark's live stream (:func:`bench.pipeline.world`): synthetic
  transactions at one density over the last days up to now (Feast's ttl is wall-clock, so every
  stored card row is live), the replay starting after a week and a day of history so that the
  labels of a week earlier interleave with it, and a ``default`` model trained on them.
- **Replay.** ``warm`` transactions published at once (the job's first bundles load the kernels,
  the model and Feast), then the measured ones with their labels at ``rate`` events/s (labels
  interleaved, none trailing after the last transaction).
- **Seen.** The job writes a card's row with the event time of the transaction it reflects as
  the row's event timestamp (Bigtable cell time, ms). A transaction is seen at the end of the
  first poll whose row for its card has an event timestamp at or after the transaction's event
  time. That is exact for a transaction whose event time is after every earlier transaction of
  its card (:func:`exact`); the others (equal times) are not measured. A later transaction of
  the same card is published later and written no earlier, so it never makes an earlier one
  look fresher than it is.
- **Freshness** = seen minus the time the transaction was handed to the publisher (one
  machine, one clock). The reader starts a poll every ``interval_s`` (default
  :data:`INTERVAL_S`) while a transaction is pending and sleeps otherwise, so a figure is late
  by up to one interval plus one read (``freshness_poll_*``: the measured interval and read;
  ``freshness_reader_*``: its polls per second and its share of one core).
- **Breakdown.** The alerts that fire at the model's threshold (about 3 %) carry the job's own
  timings, so for those transactions ``freshness_breakdown_*`` splits the freshness into the
  pull (publish -> parsed), the job's features (parsed -> assembled) and the store (assembled
  -> seen through Feast: the bundle's end, the write, the poll); see :func:`breakdown`.

Run alone: ``python -m bench.freshness [--rate R] [--seconds S] [--interval-ms MS]`` (about
1.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from bench.pipeline import SPEC, World, world
from features.table import event_times_ns
from streaming.local import emulators as emu
from streaming.local import job_process as lj
from streaming.local.replay import Publisher, replay
from streaming.pseudonymise import ENV_KEY, Pseudonymiser
from streaming.schema import ScoredCounter
from streaming.store.names import view_name

CARD = next(e for e in SPEC.entities if e.key == "CUSTOMER_ID")
FEATURE = SPEC.entity_names(CARD)[0]
"""The one feature the reader asks for (the row, and its event timestamp, is read whole)."""
RATE = 200.0
SECONDS = 30.0
WARM = 400
INTERVAL_S = 0.010
READER_NICENESS = 10
"""How far below the job's CPU priority the reader runs (``os.nice``)."""
PRESENT = 1  # feast.serving FieldStatus.PRESENT
BREAKDOWN = ("pull", "features", "store", "alert", "freshness")
Metrics = dict[str, float | int | str | None]


# ---------------------------------------------------------------------- pure logic


def exact(df: pd.DataFrame) -> np.ndarray:
    """Per transaction of ``df`` (feed order), whether its card's row timestamp tells it apart:
    its event time is after that of every earlier transaction of its card in the feed."""
    times = pd.Series(event_times_ns(df), index=df.index)
    before = (
        times.groupby(df["CUSTOMER_ID"].to_numpy())
        .cummax()
        .groupby(df["CUSTOMER_ID"].to_numpy())
        .shift(1)
    )
    return (before.isna() | (times > before)).to_numpy()


class Tracker:
    """Transactions waiting to be seen in their card's row, and when each was seen."""

    def __init__(self) -> None:
        self.pending: dict[int, list[tuple[int, int]]] = {}
        """Card key -> (transaction id, event time in ms) not yet seen."""
        self.seen: dict[int, float] = {}
        """Transaction id -> the time (s) of the poll that first saw it."""

    def add(self, txid: int, card: int, time_ms: int) -> None:
        self.pending.setdefault(card, []).append((txid, time_ms))

    def cards(self) -> list[int]:
        """The cards with a transaction pending, to read in the next poll."""
        return list(self.pending)

    def observe(self, cards: Iterable[int], stamps_ms: Iterable[int | None], at: float) -> int:
        """Record a poll that read ``cards`` with row event times ``stamps_ms`` (None: no live
        row), ended at ``at``: a pending transaction at or before its card's stamp is seen.
        Returns how many were newly seen."""
        newly = 0
        for card, stamp in zip(cards, stamps_ms, strict=True):
            waiting = self.pending.get(card)
            if stamp is None or not waiting:
                continue
            still = []
            for txid, time_ms in waiting:
                if time_ms <= stamp:
                    self.seen.setdefault(txid, at)
                    newly += 1
                else:
                    still.append((txid, time_ms))
            if still:
                self.pending[card] = still
            else:
                del self.pending[card]
        return newly


def freshness_ms(sent: dict[int, float], seen: dict[int, float]) -> np.ndarray:
    """Seen minus sent (ms) of every transaction in both, in ``sent``'s order."""
    return np.array([(seen[t] - s) * 1e3 for t, s in sent.items() if t in seen])


def breakdown(
    sent: dict[int, float], seen: dict[int, float], alerts: list[tuple[int, float, dict]]
) -> Metrics:
    """Where the time goes, medians over the measured transactions that alerted and were seen.

    ``alerts``: (transaction id, Pub/Sub publish time in s, alert body). Per transaction, from
    the alert's ``processing_latency_ms`` (parsed -> alert stage) and ``feature_age_ms``
    (features assembled -> alert stage): ``pull`` = publish -> parsed, ``features`` = parsed ->
    features assembled, ``store`` = features assembled -> seen through Feast; the three add up
    to the freshness. The alert stage's time is known only up to the alert's own trip to
    Pub/Sub, which ``pull`` includes and ``store`` lacks (so ``pull`` is at most, ``store`` at
    least, what it says). ``alert`` is publish -> alert published."""
    rows = []
    for txid, published, body in alerts:
        if txid not in sent or txid not in seen:
            continue
        alert = (published - sent[txid]) * 1e3
        fresh = (seen[txid] - sent[txid]) * 1e3
        processing, age = body["processing_latency_ms"], body["feature_age_ms"]
        rows.append((alert - processing, processing - age, fresh - alert + age, alert, fresh))
    out: Metrics = {"freshness_breakdown_alerts": len(rows)}
    if rows:
        medians = np.median(np.array(rows), axis=0)
        for name, value in zip(BREAKDOWN, medians, strict=True):
            out[f"freshness_breakdown_{name}_p50_ms"] = round(float(value), 1)
    return out


def summarise(
    sent: dict[int, float], seen: dict[int, float], rate: float, polls: np.ndarray
) -> Metrics:
    """The ``freshness_*`` figures at ``rate``; ``polls``: (start, end) of each poll (s)."""
    tag = f"{rate:g}eps"
    fresh = freshness_ms(sent, seen)
    out: Metrics = {
        f"freshness_measured_at_{tag}": len(fresh),
        f"freshness_unseen_at_{tag}": len(sent) - len(fresh),
    }
    if len(fresh):
        out[f"freshness_p50_ms_at_{tag}"] = round(float(np.percentile(fresh, 50)), 1)
        out[f"freshness_p99_ms_at_{tag}"] = round(float(np.percentile(fresh, 99)), 1)
        out[f"freshness_max_ms_at_{tag}"] = round(float(fresh.max()), 1)
    if len(polls) > 1:
        read = (polls[:, 1] - polls[:, 0]) * 1e3
        gap = np.diff(polls[:, 0]) * 1e3
        gap = gap[gap < 1e3]  # idle stretches (nothing pending) are not intervals
        out["freshness_poll_read_p50_ms"] = round(float(np.percentile(read, 50)), 2)
        out["freshness_poll_read_p99_ms"] = round(float(np.percentile(read, 99)), 2)
        if len(gap):
            out["freshness_poll_interval_p50_ms"] = round(float(np.percentile(gap, 50)), 2)
            out["freshness_poll_interval_p99_ms"] = round(float(np.percentile(gap, 99)), 2)
    return out


# ---------------------------------------------------------------------- the reader process


def stamps_from(response: Any, feature: str = FEATURE) -> list[int | None]:
    """Event time (ms) of each row of a ``get_online_features`` response, None where the
    feature is not present (no row, or an expired one)."""
    proto = response.proto
    column = proto.results[list(proto.metadata.feature_names.val).index(feature)]
    return [
        ts.seconds * 1_000 + ts.nanos // 1_000_000 if status == PRESENT else None
        for ts, status in zip(column.event_timestamps, column.statuses, strict=True)
    ]


def read_cards(
    repo: str, requests: Any, results: Any, interval_s: float, drain_s: float, niceness: int
) -> None:
    """The reader (a child process): poll the card view through Feast for the transactions
    that ``requests`` announces (``(txid, card key, event time ms)``) until it sends None, then
    for up to ``drain_s`` more while any is pending. Puts ``"ready"`` on ``results`` once the
    store answers, then one dict: ``seen``, ``polls`` ((start, end) per poll), ``cpu_s``,
    ``wall_s`` (the reader's CPU and wall time from the first transaction to the end).

    Runs ``niceness`` steps below the job's priority: a serving team reads from machines of its
    own, and here the reader shares the job's cores, so where both want one the job wins (the
    reader's polls slow down instead, which the poll figures show)."""
    from streaming.store.feast_store import StoreSettings

    os.nice(niceness)

    store = StoreSettings("emulator", repo).feature_store()
    features = [f"{view_name(SPEC, CARD)}:{FEATURE}"]

    def poll(cards: list[int]) -> list[int | None]:
        response = store.get_online_features(features=features, entity_rows={CARD.key: cards})
        return stamps_from(response)

    poll([0])  # loads the registry and opens the online store's client
    results.put("ready")
    tracker, polls = Tracker(), []
    cpu0 = wall0 = 0.0  # from the first transaction announced
    stop_at: float | None = None
    while stop_at is None or (tracker.pending and time.time() < stop_at):
        try:
            while True:
                item = requests.get(block=not tracker.pending and stop_at is None, timeout=0.5)
                if item is None:
                    stop_at = time.time() + drain_s
                    break
                if not wall0:
                    cpu0, wall0 = time.process_time(), time.monotonic()
                tracker.add(*item)
        except queue.Empty:
            pass
        if not tracker.pending:
            continue
        cards = tracker.cards()
        start = time.time()
        stamps = poll(cards)
        end = time.time()
        tracker.observe(cards, stamps, end)
        polls.append((start, end))
        pause = start + interval_s - time.time()
        if pause > 0:
            time.sleep(pause)
    results.put(
        {
            "seen": tracker.seen,
            "polls": polls,
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0,
        }
    )


# ---------------------------------------------------------------------- the run


def measure(
    world: World,
    repo: Path,
    tmp: Path,
    rate: float,
    warm: int,
    interval_s: float,
) -> Metrics:
    """One job and one reader over ``world``'s replay: warm-up, measured phase at ``rate``,
    stop."""
    df, start = world.df, world.seen
    ids = Pseudonymiser.from_env(required=True)
    cards = ids.customers(df["CUSTOMER_ID"].to_numpy(np.int64)).tolist()
    times_ms = (event_times_ns(df) // 1_000_000).tolist()
    txids = df["TRANSACTION_ID"].tolist()
    measured = exact(df)
    measured[: start + warm] = False
    announce = {
        t: (t, c, m) for t, c, m, ok in zip(txids, cards, times_ms, measured, strict=True) if ok
    }

    topics = lj.Topics.create("bench-freshness")
    scored = tmp / f"scored-{uuid.uuid4().hex[:6]}"
    extra = ["--device", "cpu", "--max_lateness_hours", str(24 * 90)]
    log = tmp / f"freshness-{uuid.uuid4().hex[:6]}.log"
    job = lj.start(lj.job_args(topics, world.models_dir, SPEC.name, scored, repo, extra), log)
    spawn = multiprocessing.get_context("spawn")  # no fork of this process's gRPC clients
    requests, results = spawn.Queue(), spawn.Queue()
    reader = spawn.Process(
        target=read_cards,
        args=(str(repo), requests, results, interval_s, 30.0, READER_NICENESS),
        daemon=True,
    )
    reader.start()
    publisher = Publisher(lj.PROJECT)
    tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
    sent: dict[int, float] = {}
    live = False

    def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        txid = int(attrs["id"])
        if live and topic == tx and txid in announce:
            sent[txid] = time.time()
            publisher(topic, data, attrs)
            requests.put(announce[txid])
        else:
            publisher(topic, data, attrs)

    delay = SPEC.label_delay
    try:
        if results.get(timeout=120) != "ready":
            raise RuntimeError("the reader did not start")
        replay(
            df.iloc[: start + warm],
            publish,
            tx,
            labels,
            delay,
            progress=False,
            seen=start,
            trailing_labels=False,
        )
        publisher.flush()
        scored_rows = ScoredCounter(scored)
        lj.wait_for(scored_rows, warm, job, log, 300)
        live = True
        replay(
            df,
            publish,
            tx,
            labels,
            delay,
            rate=rate,
            progress=False,
            seen=start + warm,
            trailing_labels=False,
        )
        publisher.flush()
        lj.wait_for(scored_rows, len(df) - start, job, log, 300)
        requests.put(None)
        read = results.get(timeout=120)
        time.sleep(2)
        alerts = lj.drain(topics.subscriptions["alerts"], wait_s=5)
    finally:
        lj.stop(job)
        reader.join(10)
        if reader.is_alive():
            reader.terminate()
    seen, polls = read["seen"], np.array(read["polls"]).reshape(-1, 2)
    out = summarise(sent, seen, rate, polls)
    wall = max(read["wall_s"], 1e-9)  # 0 only when no transaction was announced
    out["freshness_reader_cpu_share"] = round(read["cpu_s"] / wall, 3)
    out["freshness_reader_polls_per_s"] = round(len(polls) / wall, 1)
    bodies = [(json.loads(m.data), m.publish_time.timestamp()) for m in alerts]
    out.update(breakdown(sent, seen, [(b["transaction_id"], t, b) for b, t in bodies]))
    return out


def bench_freshness(
    rate: float = RATE, seconds: float = SECONDS, warm: int = WARM, interval_s: float = INTERVAL_S
) -> Metrics:
    """Start the emulators, run the job and the reader, stop them. Keys ``freshness_*`` (see
    the module doc): ``freshness_p50_ms_at_<rate>eps``, ``freshness_p99_ms_at_<rate>eps`` and
    ``freshness_measured_at_<rate>eps`` among them."""
    reason = emu.gcloud_available(("pubsub", "bigtable"))
    if reason:
        print(f"bench: freshness skipped: {reason}", file=sys.stderr)
        return {}
    from streaming.store.feast_store import apply_repo, scratch_repo

    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp_name:
        tmp = Path(tmp_name)
        live = world(tmp, warm + int(rate * seconds / 2))
        with (
            emu.running("pubsub", tmp / "emulators"),
            emu.running("bigtable", tmp / "emulators"),
            mock.patch.dict(os.environ, {ENV_KEY: secrets.token_hex(32)}),
        ):
            repo = scratch_repo(tmp / "repo", f"bench_freshness_{uuid.uuid4().hex[:8]}")
            apply_repo("emulator", repo)
            out = measure(live, repo, tmp, rate, warm, interval_s)
    return {"freshness_rate_eps": rate, "freshness_interval_ms": interval_s * 1e3, **out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=RATE, help="events/s, labels included")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="measured phase")
    parser.add_argument("--warm", type=int, default=WARM, help="warm-up transactions at once")
    parser.add_argument(
        "--interval-ms", type=float, default=INTERVAL_S * 1e3, help="the reader's poll interval"
    )
    args = parser.parse_args(argv)
    result = bench_freshness(args.rate, args.seconds, args.warm, args.interval_ms / 1e3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
