"""The stream's feature lookup (preset ``enriched``): what it costs in end-to-end latency and
how many Bigtable reads it makes.

In one invocation, on one Pub/Sub and one Bigtable emulator started here, the job runs on the
local runner with preset ``default`` and with ``enriched`` (``default`` plus the batch features
that ``EnrichFromFeatureStore`` looks up), each on the same replayed slice at the same rate, with
the Bigtable feature store on in both (so the runs differ by the lookup stage and the model's
width only). ``rounds`` runs of each, alternating (``default, enriched, enriched, default,
...``), after a priming run that is not measured: the first job on fresh emulators is the
slowest (in trials its p99 was up to 1.8 times the next runs'), which would count against one
preset.

- **World.** The slice is the first transactions of the last day ``D`` of the reference data
  (``../shared/data``) or, without it, of a synthetic history. Both models (XGBoost,
  :data:`TREES` trees) are trained on the same rows, the :data:`TRAIN_DAYS` days before ``D``,
  with ``features.backfill`` (``enriched``'s columns are ``default``'s plus the lookups, joined
  point in time). The snapshot as of ``D`` (``features.batch.snapshots`` of the history before
  ``D``) is written into the Bigtable emulator's batch views, keyed by the pseudonymised ids the
  job uses, with our online store's ``write_arrays`` (the stream is measured, not the loader).
- **Replay.** A warm-up of ``warm`` transactions published at once (the job's first bundles
  load the kernels, the model, Feast and the reader) and ``settle`` more at ``rate`` events/s
  (while the lookup stage scans the batch views into its cache, in the background), then the
  measured transactions at ``rate``. Labels arrive as they would: the replay starts just after
  the last transaction before ``D`` (``replay(..., seen=...)``), so the labels of the
  transactions of a week earlier interleave with the slice (about one per transaction; the job
  never saw those transactions) and none trail after the last transaction.
- **Latency** (as ``bench.pipeline``): the threshold is 0, so every transaction alerts; an
  alert's latency is its Pub/Sub publish time minus the time its transaction was handed to the
  publisher (one machine, one clock), measured transactions only, pooled over a preset's runs.
  ``lookup_p99_ratio`` is ``enriched``'s p99 over ``default``'s (goal <= 1.10).
- **Reads at steady state** = over the measured phase (after the warm-up): the difference
  between the job's ``fraudstream totals:`` line as logged once the warm-up is scored and its
  last line, per 1,000 measured transactions: ``feature_lookups`` (ReadRows calls, one per view
  scanned included, goal <= 10) and ``feature_lookup_rows`` (rows read). The local runner tears
  the stage down after every bundle, which logs the totals, so the line is exact once a bundle
  has ended after the last read. The scan reads every stored row (``lookup_snapshot_rows``),
  more than the warm-up's own reads can (``2 * (warm + settle)`` ids): an ``enriched`` run whose
  warm-up totals show fewer rows than the snapshot has not counted its scan yet and fails (a
  longer ``settle`` is the cure). ``lookup_warmup_*`` are the warm-up's reads, scan included.
- **Check.** The enriched runs' scored lookup columns are compared with the training join's
  (``features.batch.lookup_columns`` over the same snapshot): ``lookup_values_as_training`` is
  the share of measured transactions that agree (1.0 when the reads are right).

Run alone: ``python -m bench.lookup [--data PATH] [--rate R] [--seconds S] [--rounds N]``
(about 7.5 minutes with the defaults on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from features import presets
from features.backfill import backfill
from features.batch import DAY_NS, lookup_columns, lookup_entities, midnight, snapshots
from features.synthetic import transactions
from features.table import event_times_ns, read_transactions, validate
from streaming.job.common import parse_totals
from streaming.local import emulators as emu
from streaming.local import job_process as lj
from streaming.local.replay import Publisher, replay
from streaming.pseudonymise import ENV_KEY, Pseudonymiser
from streaming.schema import ScoredCounter, read_scored
from streaming.store.feast_store import apply_repo, scratch_repo
from streaming.store.names import batch_view_name
from training import model as models
from training.registry import Registry, model_meta

DEFAULT, ENRICHED = presets.DEFAULT, presets.ENRICHED
PRESETS = (DEFAULT.name, ENRICHED.name)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/transactions.parquet"
TRAIN_DAYS = 7
TREES = 50
WARM = 400
SETTLE = 600
RATE = 200.0
SECONDS = 20.0
ROUNDS = 3
Metrics = dict[str, float | int | str | None]


@dataclass(frozen=True)
class World:
    """The replayed slice, what precedes it, and the snapshot the stream looks up."""

    source: str
    """Where the transactions come from (the reference data's path, or ``synthetic``)."""
    day: pd.Timestamp
    """The slice's midnight: the as-of time of the snapshot in the store."""
    history: pd.DataFrame
    """Every transaction before ``day`` (validated)."""
    feed: pd.DataFrame
    """What the replay reads: the transactions of the label delay (and a day) before ``day``,
    then the slice."""
    seen: int
    """Transactions of ``feed`` before the slice (delivered already: only their labels due
    during the slice are replayed)."""
    snapshot: dict[str, pd.DataFrame]
    """Per entity name, the batch view rows as of ``day`` (clear ids)."""

    @property
    def slice(self) -> pd.DataFrame:
        return self.feed.iloc[self.seen :]


def load_world(data: Path | None, n: int) -> World:
    """The slice of ``n`` transactions from the midnight of the last day of ``data`` (a
    transactions parquet; ``None`` or missing: a synthetic history)."""
    if data is not None and Path(data).exists():
        df, source = read_transactions([data], ENRICHED), str(data)
    else:
        per_day = max(4_000, 2 * n)
        df = transactions(n=100 * per_day, customers=5_000, terminals=10_000, days=100)
        df, source = validate(df, ENRICHED), "synthetic"
    times = event_times_ns(df)
    day = int(midnight(times.max()))
    before = times < day
    if np.count_nonzero(~before) < n:
        raise ValueError(
            f"the last day of {source} has {np.count_nonzero(~before)} transactions, fewer "
            f"than the {n} the rate and duration need: lower --rate or --seconds"
        )
    history = df[before].reset_index(drop=True)
    delay = int(ENRICHED.label_delay.total_seconds() * 1e9) + DAY_NS
    recent = df[before & (times >= day - delay)]
    feed = pd.concat([recent, df[~before].iloc[:n]], ignore_index=True)
    snapshot = snapshots(history, ENRICHED, (day, day))
    return World(source, pd.Timestamp(day), history, feed, len(recent), snapshot)


def train_models(world: World, root: Path) -> dict[str, Path]:
    """Per preset, a registry whose champion is trained on the same rows (the
    :data:`TRAIN_DAYS` days before the slice) with the same parameters."""
    if ENRICHED.stream_names != DEFAULT.names:
        raise ValueError("preset enriched no longer extends default: the comparison is void")
    first = world.day.value - TRAIN_DAYS * DAY_NS
    tables = snapshots(world.history, ENRICHED, (first, world.day.value))
    features = backfill(world.history, ENRICHED, tables)
    rows = (event_times_ns(world.history) >= first).nonzero()[0]
    y = world.history["TX_FRAUD"].to_numpy()[rows]
    out = {}
    for spec in (DEFAULT, ENRICHED):
        X = features[spec.names].to_numpy(np.float32)[rows]
        booster = models.train(X, y, models.Params(TREES), device="cpu", desc=spec.name)
        threshold = float(np.quantile(models.predict(booster, X), 0.97))
        registry = Registry(root / spec.name)
        registry.promote(registry.save(booster, model_meta(spec, threshold)))
        out[spec.name] = Path(registry.root)
    return out


def load_snapshot(store: Any, world: World, ids: Pseudonymiser) -> int:
    """Write the snapshot of the slice's day into the online store (Feast ``store``, our
    Bigtable online store) under the job's pseudonymised ids; returns the rows written."""
    from streaming.store.bigtable.codec import row_keys

    online = store._get_provider().online_store  # Feast has no public accessor
    batches = []
    for entity in lookup_entities(ENRICHED):
        table = world.snapshot[entity.name]
        keys = ids.pseudonymise_array(entity.name, table[entity.key].to_numpy(np.int64))
        stamps = table["event_timestamp"].to_numpy("datetime64[us]").astype(np.int64)
        values = table[ENRICHED.lookup_stored_names(entity)].to_numpy(np.float64)
        view = store.get_feature_view(batch_view_name(ENRICHED, entity))
        batches.append((view, row_keys([entity.key], [keys.tolist()]), stamps, values))
    online.write_arrays(store.config, batches)
    return sum(len(keys) for _, keys, _, _ in batches)


@dataclass(frozen=True)
class Run:
    """What one job run measured."""

    preset: str
    latency_ms: np.ndarray
    """Publish -> alert of each measured transaction that alerted."""
    published: dict[str, int]
    """Messages of the measured phase, per kind (``tx``, ``label``)."""
    warm_totals: dict[str, int]
    end_totals: dict[str, int]
    scored: pd.DataFrame
    """The measured transactions' scored rows."""

    def measured(self, total: str) -> int:
        """How much a ``fraudstream totals`` count grew during the measured phase."""
        return self.end_totals.get(total, 0) - self.warm_totals.get(total, 0)


def run_job(
    preset: str,
    world: World,
    models_dir: Path,
    repo: Path,
    tmp: Path,
    rate: float,
    warm: int,
    settle: int,
    scan_rows: int = 0,
    job_flags: tuple[str, ...] = (),
) -> Run:
    """One job of ``preset`` on the emulators: warm-up (``warm`` transactions at once, ``settle``
    at ``rate`` events/s), measured phase at ``rate``, stop. ``scan_rows`` > 0: the warm-up
    totals must show that many rows read (the lookup stage's scan), else RuntimeError.
    ``job_flags``: more ``fraudstream run`` options."""
    topics = lj.Topics.create(f"bench-lookup-{preset}")
    scored = tmp / f"scored-{preset}-{uuid.uuid4().hex[:6]}"
    extra = ["--device", "cpu", "--threshold", "0", "--max_lateness_hours", str(24 * 90)]
    extra += job_flags
    args = lj.job_args(topics, models_dir, preset, scored, repo, extra)
    log = tmp / f"{preset}-{uuid.uuid4().hex[:6]}.log"
    job = lj.start(args, log)
    sent: dict[int, float] = {}
    publisher = Publisher(lj.PROJECT)
    tx, labels = topics.topic_id("tx"), topics.topic_id("labels")

    def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        if topic == tx:
            sent[int(attrs["id"])] = time.time()
        publisher(topic, data, attrs)

    def feed(upto: int, seen: int, pace: float | None) -> dict[str, int]:
        """Replay the transactions of ``world.feed`` after ``seen`` up to ``upto``."""
        counts = replay(
            world.feed.iloc[:upto],
            publish,
            tx,
            labels,
            ENRICHED.label_delay,
            rate=pace,
            progress=False,
            seen=seen,
            trailing_labels=False,
        )
        publisher.flush()
        return counts

    scored_rows = ScoredCounter(scored)
    try:
        feed(world.seen + warm, world.seen, None)
        lj.wait_for(scored_rows, warm, job, log)
        feed(world.seen + warm + settle, world.seen + warm, rate)
        lj.wait_for(scored_rows, warm + settle, job, log)
        warm_totals = parse_totals(log.read_text())
        if warm_totals.get("feature_lookup_rows", 0) < scan_rows:
            raise RuntimeError(
                f"{preset}: the lookup stage's scan of {scan_rows} rows is not in the totals "
                f"at the end of the warm-up ({warm_totals}): raise --settle"
            )
        lj.drain(topics.subscriptions["alerts"], wait_s=2)
        sent.clear()
        published = feed(len(world.feed), world.seen + warm + settle, rate)
        lj.wait_for(scored_rows, len(world.slice), job, log)
        time.sleep(2)
        alerts = lj.drain(topics.subscriptions["alerts"], wait_s=5)
    finally:
        lj.stop(job)
    latency = []
    for message in alerts:
        txid = json.loads(message.data)["transaction_id"]
        if txid in sent:
            latency.append((message.publish_time.timestamp() - sent[txid]) * 1e3)
    rows = read_scored(str(scored))
    rows = rows[rows["transaction_id"].isin(list(sent))]
    end_totals = parse_totals(log.read_text())
    return Run(preset, np.array(latency), published, warm_totals, end_totals, rows)


def as_training(world: World, run: Run, measured: pd.DataFrame) -> float:
    """Share of the measured transactions whose scored lookup columns equal the training
    join's over the same snapshot (NaN equal to NaN)."""
    expected = pd.DataFrame(
        lookup_columns(measured, ENRICHED, world.snapshot),
        columns=ENRICHED.lookup_names,
        index=measured["TRANSACTION_ID"].to_numpy(),
    )
    got = run.scored.drop_duplicates("transaction_id").set_index("transaction_id")
    got = got.reindex(expected.index)[ENRICHED.lookup_names]
    same = np.isclose(got.to_numpy(float), expected.to_numpy(), rtol=1e-9, equal_nan=True)
    return float(same.all(axis=1).mean())


def reads(runs: list[Run], transactions: int) -> Metrics:
    """Store reads of ``runs`` (``enriched``'s): per 1,000 of the ``transactions`` measured in
    each run at steady state (and transactions per read, where there were reads), and per run
    during the warm-up (the scan included)."""
    lookups = sum(run.measured("feature_lookups") for run in runs)
    rows = sum(run.measured("feature_lookup_rows") for run in runs)
    measured = transactions * len(runs)
    warm_lookups = sum(run.warm_totals.get("feature_lookups", 0) for run in runs)
    warm_rows = sum(run.warm_totals.get("feature_lookup_rows", 0) for run in runs)
    out: Metrics = {
        "lookup_reads_per_1k_tx": round(1e3 * lookups / measured, 1),
        "lookup_rows_read_per_1k_tx": round(1e3 * rows / measured, 1),
    }
    if lookups:
        out["lookup_tx_per_read"] = round(measured / lookups, 1)
    out["lookup_warmup_reads_per_run"] = round(warm_lookups / len(runs), 1)
    out["lookup_warmup_rows_read_per_run"] = round(warm_rows / len(runs), 1)
    return out


def stored_share(world: World, measured: pd.DataFrame) -> float:
    """Share of the measured transactions whose card and terminal both have a snapshot row."""
    found = np.ones(len(measured), bool)
    for entity in lookup_entities(ENRICHED):
        known = world.snapshot[entity.name][entity.key]
        found &= measured[entity.key].isin(known).to_numpy()
    return float(found.mean())


def bench_lookup(
    data: Path | None = DEFAULT_DATA,
    rate: float = RATE,
    seconds: float = SECONDS,
    rounds: int = ROUNDS,
    warm: int = WARM,
    settle: int = SETTLE,
    prime: bool = True,
    job_flags: tuple[str, ...] = (),
) -> Metrics:
    """Start the emulators, run both presets ``rounds`` times, stop them. Keys
    ``lookup_*``: see the module doc. ``prime``: a first job, not measured, warms the
    emulators and the caches of the machine. ``job_flags``: more ``fraudstream run`` options
    for every job."""
    reason = emu.gcloud_available(("pubsub", "bigtable"))
    if reason:
        print(f"bench: lookup skipped: {reason}", file=sys.stderr)
        return {}
    measured_n = int(rate * seconds / 2)  # about one label per transaction
    world = load_world(data, warm + settle + measured_n)
    key = secrets.token_hex(32)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp_name:
        tmp = Path(tmp_name)
        model_dirs = train_models(world, tmp / "models")
        with (
            emu.running("pubsub", tmp / "emulators"),
            emu.running("bigtable", tmp / "emulators"),
            mock.patch.dict(os.environ, {ENV_KEY: key}),
        ):
            repo = scratch_repo(tmp / "repo", f"bench_lookup_{uuid.uuid4().hex[:8]}")
            store = apply_repo("emulator", repo)
            snapshot_rows = load_snapshot(store, world, Pseudonymiser.from_env(required=True))
            if snapshot_rows <= 2 * (warm + settle):
                raise ValueError(
                    f"the snapshot's {snapshot_rows} rows do not tell the scan from the "
                    f"warm-up's reads (up to {2 * (warm + settle)}): lower --warm or --settle"
                )
            if prime:
                print("bench: lookup, priming run (not measured)", file=sys.stderr, flush=True)
                job = (DEFAULT.name, world, model_dirs[DEFAULT.name], repo, tmp, rate, warm, settle)
                run_job(*job, job_flags=job_flags)
            for r in range(rounds):
                for preset in PRESETS if r % 2 == 0 else PRESETS[::-1]:
                    print(f"bench: lookup, {preset} (round {r + 1})", file=sys.stderr, flush=True)
                    scan = snapshot_rows if preset == ENRICHED.name else 0
                    job = (preset, world, model_dirs[preset], repo, tmp, rate, warm, settle, scan)
                    runs.append(run_job(*job, job_flags=job_flags))
    measured = world.slice.iloc[warm + settle :]
    return summarise(world, runs, measured, rate, snapshot_rows)


def summarise(
    world: World, runs: list[Run], measured: pd.DataFrame, rate: float, snapshot_rows: int
) -> Metrics:
    """The ``lookup_*`` figures of ``runs`` (latencies pooled per preset)."""
    out: Metrics = {
        "lookup_data": f"{Path(world.source).name} {world.day.date()}",
        "lookup_rate_eps": rate,
        "lookup_rounds": len(runs) // 2,
        "lookup_transactions_measured": len(measured),
        "lookup_labels_measured": runs[0].published["label"],
        "lookup_snapshot_rows": snapshot_rows,
    }
    p99 = {}
    for preset in PRESETS:
        latency = np.concatenate([r.latency_ms for r in runs if r.preset == preset])
        out[f"lookup_alerts_measured_{preset}"] = len(latency)
        out[f"lookup_e2e_p50_ms_{preset}"] = round(float(np.percentile(latency, 50)), 1)
        p99[preset] = float(np.percentile(latency, 99))
        out[f"lookup_e2e_p99_ms_{preset}"] = round(p99[preset], 1)
    out["lookup_p99_ratio"] = round(p99[ENRICHED.name] / p99[DEFAULT.name], 3)
    out["lookup_e2e_p99_ms_by_run"] = ", ".join(
        f"{r.preset} {np.percentile(r.latency_ms, 99):.1f}" for r in runs
    )
    enriched = [r for r in runs if r.preset == ENRICHED.name]
    out.update(reads(enriched, len(measured)))
    out["lookup_with_stored_values"] = round(stored_share(world, measured), 3)
    out["lookup_values_as_training"] = round(
        min(as_training(world, run, measured) for run in enriched), 4
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="transactions parquet")
    parser.add_argument("--rate", type=float, default=RATE, help="events/s, labels included")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="measured phase")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs of each preset")
    parser.add_argument("--warm", type=int, default=WARM, help="warm-up transactions at once")
    parser.add_argument("--settle", type=int, default=SETTLE, help="warm-up transactions at rate")
    args = parser.parse_args(argv)
    result = bench_lookup(
        Path(args.data), args.rate, args.seconds, args.rounds, args.warm, args.settle
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
