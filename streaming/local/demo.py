"""``fraudstream demo``: the whole job on real parts, with live progress, a summary and a report.

Emulators mode (the Google Cloud SDK is installed, or ``PUBSUB_EMULATOR_HOST`` and
``BIGTABLE_EMULATOR_HOST`` name running emulators): start the Pub/Sub and Bigtable emulators
(unless running), create this run's topics, apply the Feast repository (emulator profile),
train a model on the history before the replayed slice (or reuse the one trained for the same
data), write the card and terminal states of that history to the Bigtable state table and,
for a preset with batch features, materialize them as of the slice's first midnight; start
``fraudstream run`` as a child process (``--initial_state store``), replay the slice with each
label after its delay, follow the job live, stop everything it started (on Ctrl-C too) and
report.

Embedded mode (no SDK, or ``--embedded``): the same core (``ScoreTransactions``, the Feast
writes and batch-feature lookups on the local sqlite profile, the scored sink) on Beam's
in-process runner, fed from memory, starting from a state file.

The replayed slice is the last ``--events`` transactions. The job starts from the card and
terminal states of the history before it (``fraudstream bootstrap``, keyed by this run's id
key), as a job taking over a live feed would, and looks batch features up in the snapshot the
daily batch job (``streaming.batch.batch_features``) wrote before the slice's day; so its
features must equal the training set's (the backfill of the whole history, batch features
joined point in time) and its scores the offline scores. The daily job does not run during the
replay: a slice that crosses midnight gets the first day's snapshot after it (said at start).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from features.spec import DAY, FeatureSpec
from features.table import read_transactions, validate
from streaming.job.common import TOTALS, parse_totals
from streaming.job.entity_state import DEFAULT_ORDERING
from streaming.job.initial_states import STORE
from streaming.local import job_process as lj
from streaming.schema import read_scored
from training.protocol import card_precision_at_k

if TYPE_CHECKING:
    from streaming.store.feast_store import StoreSettings

EMBEDDED_ORDERING = "event_time"
"""The embedded demo's: its source is one bounded batch, with no arrival order to apply events
in; under ``event_time`` each card's and terminal's events apply in the order the job's default
(``arrival``) sees them on the in-order feed the emulator demo replays, so both modes score
alike."""


@dataclass
class DemoConfig:
    """What ``fraudstream demo`` was asked for (see ``streaming/cli.py``)."""

    input: str
    preset: str = "enriched"
    events: int = 5_000
    rate: float | None = None
    out: str = "out/demo"
    json_path: str | None = None
    embedded: bool = False
    train_days: int = 56


# --------------------------------------------------------------------------- data and model


def load_data(path: str, spec: FeatureSpec) -> tuple[pd.DataFrame, str]:
    """The reference data, or the simulator's history when it is absent (says which)."""
    if Path(path).exists():
        return read_transactions([path], spec), path
    from training.simulator import SimulatorConfig, simulate

    print(f"{path} not found: using the built-in simulator (2,000 cards, 120 days, seed 0)")
    config = SimulatorConfig(customers=2_000, terminals=4_000, days=120)
    return validate(simulate(config), spec), "simulator (2,000 cards, 120 days, seed 0)"


def ensure_model(df: pd.DataFrame, replay_start: pd.Timestamp, config: DemoConfig) -> Path:
    """The registry under ``out/models`` with a champion trained on the days before
    ``replay_start`` whose labels were known then; reused when trained for the same data."""
    from training.registry import Registry, RegistryError
    from training.train import data_fingerprint, run_train

    root = Path(config.out) / "models"
    train_end = (replay_start - 7 * DAY).normalize()
    history = df[df["TX_DATETIME"] < train_end]
    key = f"{config.preset}:{train_end.date()}:{config.train_days}:{data_fingerprint(history)}"
    registry = Registry(root)
    try:
        champion = registry.champion()
    except RegistryError as exc:  # e.g. a registry of an older fraudstream: train anew
        print(f"not reusing the model in {root}: {exc}")
        champion = None
    if champion is not None and champion.meta.get("demo_key") == key:
        print(f"reusing model {champion.version} (trained for this data and window)")
        return root
    path = Path(config.out) / "history.parquet"
    history.to_parquet(path, index=False)
    meta = run_train([str(path)], str(train_end.date()), config.train_days, str(root),
                     config.preset)  # fmt: skip
    registry.update_meta(meta["version"], demo_key=key)
    registry.promote(meta["version"])  # the demo scores with the model it just trained
    return root


# --------------------------------------------------------------------------- live progress


class Progress:
    """A status line: published, scored, alerts, dead letters, latency, model version."""

    def __init__(self, total: int, scored_dir: Path) -> None:
        self.total, self.scored_dir = total, scored_dir
        self.published = 0
        self.alerts: list[dict] = []
        self.dead: list[dict] = []
        self._seen: set[Path] = set()
        self._latency: list[np.ndarray] = []
        self.model = "?"
        self.scored = 0
        self.bar = tqdm(total=total, desc="scored", unit="tx", dynamic_ncols=True)

    def poll(self, topics: lj.Topics | None) -> None:
        if topics is not None:
            self.alerts += [
                json.loads(m.data) for m in lj.drain(topics.subscriptions["alerts"], 0.2)
            ]
            self.dead += [json.loads(m.data) for m in lj.drain(topics.subscriptions["dlq"], 0.2)]
        for part in sorted(set(self.scored_dir.glob("part-*.parquet")) - self._seen):
            self._seen.add(part)
            if pq.read_metadata(part).num_rows == 0:  # a pane without rows has no columns
                continue
            frame = pd.read_parquet(part, columns=["latency_ms", "model_version"])
            self._latency.append(frame["latency_ms"].to_numpy())
            self.scored += len(frame)
            self.model = str(frame["model_version"].iloc[-1])
        latency = np.concatenate(self._latency) if self._latency else np.zeros(1)
        self.bar.n = min(self.scored, self.total)
        self.bar.set_postfix_str(
            f"published {self.published:,} | alerts {len(self.alerts)} | DLQ {len(self.dead)} | "
            f"latency p50 {np.percentile(latency, 50):.0f} ms p99 "
            f"{np.percentile(latency, 99):.0f} ms | model {self.model}"
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- the job's start


def bootstrap_states(history: pd.DataFrame, spec: FeatureSpec, out: Path) -> Path:
    """The states of every card and terminal after ``history``, pseudonymised with this run's
    key (``$FRAUDSTREAM_ID_KEY``), in a file for the job's ``--initial_state``."""
    from streaming.batch.bootstrap import bootstrap
    from streaming.pseudonymise import Pseudonymiser

    path = out / "states.parquet"
    ids = Pseudonymiser.from_env(required=True)
    info = bootstrap(history, spec, path, ids, progress=True)
    print(f"states of {info.entities:,} cards and terminals after {len(history):,} transactions")
    return path


def bootstrap_to_store(history: pd.DataFrame, spec: FeatureSpec, settings: StoreSettings) -> None:
    """The states of every card and terminal after ``history``, pseudonymised with this run's
    key, in the Bigtable state table of ``settings`` (``fraudstream bootstrap --to_store``), for
    the job's ``--initial_state store``."""
    from streaming.batch.bootstrap import bootstrap
    from streaming.pseudonymise import Pseudonymiser
    from streaming.store.bigtable.states import StateTable

    table = StateTable.of(settings.repo_config())
    ids = Pseudonymiser.from_env(required=True)
    info = bootstrap(history, spec, None, ids, progress=True, table=table)
    print(f"states of {info.entities:,} cards and terminals after {len(history):,} transactions "
          f"written to Bigtable {table.where}")  # fmt: skip


def materialize_batch_features(history: pd.DataFrame, spec: FeatureSpec, start: pd.Timestamp,
                               profile: str, repo: Path, out: Path) -> None:  # fmt: skip
    """The daily batch job's run before the slice's first day: ``spec``'s batch features as of
    ``start``'s midnight, computed from ``history`` with this run's id key
    (``$FRAUDSTREAM_ID_KEY``, as the job pseudonymises), written to the offline store of
    ``profile`` in ``repo`` and materialized into its online store."""
    from streaming.batch.batch_features import run_batch_features
    from streaming.pseudonymise import Pseudonymiser

    path = out / "history_before_slice.parquet"
    history.to_parquet(path, index=False)
    as_of = f"{start:%Y-%m-%d}"
    summary = run_batch_features([str(path)], spec.name, as_of=as_of, days=1, profile=profile,
                                 repo=str(repo), materialize=True)  # fmt: skip
    key = Pseudonymiser.from_env(required=True).fingerprint
    if summary["id_key"] != key:  # the job would find none of the entities
        raise RuntimeError(f"batch features keyed by {summary['id_key']}, the job by key {key}")
    rows = ", ".join(
        f"{k.removesuffix('_rows')} {n:,}" for k, n in summary.items() if k.endswith("_rows")
    )
    print(f"batch features as of {as_of} 00:00 materialized into the {profile} online store "
          f"(rows: {rows})")  # fmt: skip


# --------------------------------------------------------------------------- the two modes


@dataclass
class Outcome:
    """What a run of the job gives the summary."""

    alerts: list[dict]
    dead: list[dict]
    totals: dict[str, int]
    """The job process's totals over the run (``streaming.job.common.TOTALS``): store lookups,
    states loaded."""


EMULATOR_ENV = ("PUBSUB_EMULATOR_HOST", "BIGTABLE_EMULATOR_HOST")
"""When both are set, the demo uses the emulators they name (started by someone else)."""


def emulators_in_env() -> bool:
    """Whether the environment names running Pub/Sub and Bigtable emulators to use."""
    return all(os.environ.get(name) for name in EMULATOR_ENV)


def _start_emulators(state: Path) -> list[str]:
    """Point the client libraries at the emulators: those the environment names, else those of
    ``state``, started when not running. Returns the names started here (to stop at the end)."""
    from streaming.local import emulators as emu

    if emulators_in_env():
        where = ", ".join(f"{name}={os.environ[name]}" for name in EMULATOR_ENV)
        print(f"using the running emulators of the environment ({where})")
        return []
    running = {name for name, info in emu.status(state).items() if info is not None}
    started = [name for name in emu.NAMES if name not in running]
    infos = emu.up(state_dir=state)
    os.environ.update(emu.env_for(infos))
    return started


def _run_emulators(feed: pd.DataFrame, events: pd.DataFrame, history: pd.DataFrame,
                   models: Path, spec: FeatureSpec, config: DemoConfig,
                   progress: Progress) -> Outcome:  # fmt: skip
    from streaming.local import emulators as emu
    from streaming.store.feast_store import StoreSettings, apply_repo, scratch_repo

    out = Path(config.out)
    started = _start_emulators(out / "emulators")
    job = None
    try:
        topics = lj.Topics.create("demo")
        repo = scratch_repo(out / f"feature_repo-{uuid.uuid4().hex[:6]}", "fraudstream_demo")
        apply_repo("emulator", repo)
        bootstrap_to_store(history, spec, StoreSettings("emulator", str(repo)))
        if spec.lookups:
            start = events["TX_DATETIME"].min()
            materialize_batch_features(history, spec, start, "emulator", repo, out)
        extra = ["--initial_state", STORE, "--ordering", DEFAULT_ORDERING]
        args = lj.job_args(topics, models, spec.name, progress.scored_dir, repo, extra)
        job = lj.start(args, out / "job.log")
        print(f"job started (log: {out / 'job.log'}); replaying {len(events):,} transactions")
        alerts, dead = _follow(job, topics, feed, events, spec, config, progress)
    finally:
        if job is not None:
            lj.stop(job)
        if started:
            emu.down(started, out / "emulators")
    return Outcome(alerts, dead, parse_totals((out / "job.log").read_text()))


IN_ORDER_GROUP = 100
"""Messages the replay publishes before it waits until Pub/Sub has accepted them. Each topic's
messages go out in order under one ordering key (:data:`ORDERING_KEY`), but transactions and
labels are two topics, sent concurrently: waiting after each group keeps one topic from running
more than a group ahead of the other."""

ORDERING_KEY = "fraudstream-demo"
"""The replay's Pub/Sub ordering key: without one the client sends a topic's batches
concurrently and a later batch can overtake an earlier one, so the job would score those
transactions without the ones they overtook."""


def _follow(job: subprocess.Popen, topics: lj.Topics, feed: pd.DataFrame, events: pd.DataFrame,
            spec: FeatureSpec, config: DemoConfig,
            progress: Progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Replay ``feed`` (a thread) while following the job until every event of the slice is
    scored (or nothing moved for 120 s after the replay); the alerts and dead letters."""
    from streaming.local.replay import Publisher, replay

    publisher = Publisher(lj.PROJECT, ordering_key=ORDERING_KEY)

    def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
        publisher(topic, data, attrs)
        progress.published += 1
        if progress.published % IN_ORDER_GROUP == 0:
            publisher.flush()

    failed: list[BaseException] = []

    def publish_feed() -> None:
        tx, labels = topics.topic_id("tx"), topics.topic_id("labels")
        try:
            replay(feed, publish, tx, labels, spec.label_delay, rate=config.rate,
                   progress=False, seen=len(feed) - len(events),
                   trailing_labels=False)  # fmt: skip
            publisher.flush()
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    feeder = threading.Thread(target=publish_feed, daemon=True)
    feeder.start()
    idle_since, last = time.monotonic(), -1
    while progress.scored < len(events):
        if failed:
            raise RuntimeError(f"publishing the replay failed: {failed[0]!r}") from failed[0]
        if job.poll() is not None:
            raise RuntimeError(f"the job stopped (status {job.returncode}); see job.log")
        progress.poll(topics)
        if progress.scored != last:
            idle_since, last = time.monotonic(), progress.scored
        elif time.monotonic() - idle_since > 120 and not feeder.is_alive():
            print(f"\nno progress for 120 s: {progress.scored:,} of {len(events):,} scored")
            break
        time.sleep(1)
    time.sleep(3)
    progress.poll(topics)
    return progress.alerts, progress.dead


def _run_embedded(feed: pd.DataFrame, events: pd.DataFrame, history: pd.DataFrame,
                  models: Path, spec: FeatureSpec, config: DemoConfig,
                  progress: Progress) -> Outcome:  # fmt: skip
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from streaming.job.ids import PseudonymiseIds
    from streaming.job.initial_states import InitialStates
    from streaming.job.pipeline import ScoreTransactions
    from streaming.job.scoring import BoosterHandler
    from streaming.job.sinks import WriteFeatures, WriteScored
    from streaming.local.replay import messages
    from streaming.store.feast_store import StoreSettings, apply_repo, scratch_repo, shared_store
    from streaming.store.lookup import shared_lookup_reader

    out = Path(config.out)
    states = bootstrap_states(history, spec, out)
    repo = scratch_repo(out / f"feature_repo-{uuid.uuid4().hex[:6]}", "demo")
    apply_repo("local", repo)
    settings = StoreSettings("local", str(repo))
    lookup = None
    if spec.lookups:
        materialize_batch_features(history, spec, events["TX_DATETIME"].min(), "local", repo, out)
        lookup = functools.partial(shared_lookup_reader, spec.name, settings)
    payloads: dict[str, list[bytes]] = {"tx": [], "label": []}
    seen = len(feed) - len(events)
    for kind, data, _, _ in messages(feed, spec.label_delay, seen, trailing_labels=False):
        payloads[kind].append(data)
    _COLLECTED.clear()
    progress.published = len(payloads["tx"]) + len(payloads["label"])
    print("embedded mode: Beam's in-process runner, sqlite online store, in-memory source")
    before = dict(TOTALS.counts)  # the runner works in this process: its totals are ours
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        inputs = {
            "transactions": p | "Transactions" >> beam.Create(payloads["tx"], reshuffle=False),
            "labels": p | "Labels" >> beam.Create(payloads["label"], reshuffle=False),
        }
        core = ScoreTransactions(spec, BoosterHandler(models, spec.name),
                                 pseudonymise=PseudonymiseIds(), ordering=EMBEDDED_ORDERING,
                                 initial=InitialStates(str(states), spec),
                                 lookup=lookup)  # fmt: skip
        scored = inputs | core
        store = functools.partial(shared_store, spec.name, settings)
        _ = scored["features"] | WriteFeatures(spec, store)
        _ = scored["scored"] | WriteScored(spec.names, directory=str(progress.scored_dir))
        _ = scored["alerts"] | "KeepAlerts" >> beam.Map(_collect, "alerts")
        _ = scored["dead_letter"] | "KeepDead" >> beam.Map(_collect, "dead")
    progress.poll(None)
    totals = {name: n - before.get(name, 0) for name, n in TOTALS.counts.items()}
    return Outcome(_COLLECTED.get("alerts", []), _COLLECTED.get("dead", []), totals)


_COLLECTED: dict[str, list] = {}


def _collect(element: dict, name: str) -> None:
    """Keep an output of the in-process run (a module global: the runner pickles functions by
    reference, so a bound ``list.append`` would fill a copy)."""
    _COLLECTED.setdefault(name, []).append(element)


# --------------------------------------------------------------------------- summary


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two float64 matrices of one shape, whether they are equal bit for bit (a NaN
    equal to any NaN)."""
    a, b = np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64)
    same = (a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))
    return same.all(axis=1)


def summarise(df: pd.DataFrame, events: pd.DataFrame, scored: pd.DataFrame, outcome: Outcome,
              models: Path, spec: FeatureSpec, mode: str) -> dict[str, Any]:  # fmt: skip
    """The demo's summary: counts, alert precision, CP@100 streamed and offline, the scored
    rows whose features and scores equal the training set's (the backfill of the whole history
    ``df``, whose last rows are ``events``), store lookups and states loaded, latency."""
    from training import model as model_lib
    from training.registry import Registry

    champion = Registry(models, create=False).load()
    truth = events.set_index("TRANSACTION_ID")
    scored = scored.drop_duplicates("transaction_id").set_index("transaction_id")
    scored = scored.loc[scored.index.intersection(truth.index)]
    rows = truth.loc[scored.index]
    alert_ids = [a["transaction_id"] for a in outcome.alerts]
    frauds = int(truth.loc[[i for i in alert_ids if i in truth.index], "TX_FRAUD"].sum())
    days = rows["TX_DATETIME"].dt.normalize().to_numpy()
    streamed_cp = card_precision_at_k(
        days, scored["customer_id"].to_numpy(), rows["TX_FRAUD"].to_numpy(),
        scored["score"].to_numpy())  # fmt: skip
    training = backfill(df, spec)[spec.names].to_numpy(np.float64)[len(df) - len(events) :]
    training = training[truth.index.get_indexer(scored.index)]  # the scored rows' training rows
    looked_up = training[:, len(spec.stream_names) :]
    unlabelled = [n for n in spec.names if n not in spec.label_names]
    unlabelled_at = [spec.names.index(n) for n in unlabelled]
    offline = model_lib.predict(champion.booster, training.astype(np.float32))
    offline_cp = card_precision_at_k(days, rows["CUSTOMER_ID"].to_numpy(),
                                     rows["TX_FRAUD"].to_numpy(), offline)  # fmt: skip
    latency = scored["latency_ms"].to_numpy()
    lookups = outcome.totals.get("feature_lookups", 0)
    n_alerts = len(outcome.alerts)
    return {
        "mode": mode,
        "events": len(events),
        "scored": len(scored),
        "alerts": n_alerts,
        "dlq": len(outcome.dead),
        "alert_precision": round(frauds / n_alerts, 4) if n_alerts else None,
        "frauds_in_slice": int(events["TX_FRAUD"].sum()),
        "cp_at_100": round(streamed_cp, 4),
        "cp_at_100_offline": round(offline_cp, 4),
        "scores_equal_offline": int((scored["score"].to_numpy() == offline).sum()),
        "features_equal_training": int(same_bits(scored[spec.names].to_numpy(), training).sum()),
        # all but the label features: with the transactions delivered in order, every row
        "features_equal_training_but_labels": int(
            same_bits(scored[unlabelled].to_numpy(), training[:, unlabelled_at]).sum()
        ),
        # the looked-up columns alone: they do not depend on the order Pub/Sub delivers events in
        "lookups_equal_training": (
            int(same_bits(scored[spec.lookup_names].to_numpy(), looked_up).sum())
            if spec.lookups
            else None
        ),
        "feature_lookups": lookups,
        "feature_lookup_rows": outcome.totals.get("feature_lookup_rows", 0),
        "lookups_per_1000_tx": (
            round(1000 * lookups / len(scored), 2) if spec.lookups and len(scored) else None
        ),
        "states_from_store": outcome.totals.get("states_from_store", 0),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 1) if len(latency) else None,
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 1) if len(latency) else None,
        "model_version": champion.version,
        "threshold": champion.threshold,
        "preset": spec.name,
    }


def run_demo(config: DemoConfig) -> int:
    """The demo end to end; 0 when every replayed transaction was scored."""

    spec = presets.get(config.preset)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    df, source = load_data(config.input, spec)
    events = df.iloc[-config.events :].reset_index(drop=True)
    start = events["TX_DATETIME"].min()
    print(f"data: {source}; replaying {len(events):,} transactions from {start}")
    models = ensure_model(df, start, config)
    saved_env = dict(os.environ)  # the demo's settings below are undone when it ends
    try:
        return _run(config, spec, df, events, source, models, out)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _run(config: DemoConfig, spec: FeatureSpec, df: pd.DataFrame, events: pd.DataFrame,
         source: str, models: Path, out: Path) -> int:  # fmt: skip
    """The demo after its model is ready (``run_demo`` restores the environment after it)."""
    from streaming.local.emulators import gcloud_available
    from streaming.pseudonymise import ENV_KEY, Pseudonymiser

    if not os.environ.get(ENV_KEY):
        os.environ[ENV_KEY] = secrets.token_hex(32)  # this run only; never written anywhere
        print(f"ids pseudonymised with an ephemeral key ({Pseudonymiser.from_env().fingerprint})")
    reason = None if config.embedded or emulators_in_env() else gcloud_available()
    mode = "embedded" if config.embedded or reason else "emulators"
    if reason and not config.embedded:
        print(f"{reason}: running the embedded mode instead")
    days = events["TX_DATETIME"].dt.normalize().nunique()
    if spec.lookups and days > 1:
        print(f"the slice spans {days} days: the batch features of its first midnight serve all "
              "of it (the daily job does not run during the demo), so the lookups of its later "
              "days differ from the training set's")  # fmt: skip
    scored_dir = out / f"scored-{uuid.uuid4().hex[:6]}"
    history = df.iloc[: len(df) - len(events)]
    # the feed: the slice, and the labels due during it for the history's last days
    pending = history["TX_DATETIME"] >= history["TX_DATETIME"].max() - spec.label_delay - DAY
    feed = df.iloc[int(np.argmax(pending.to_numpy())) if len(history) else 0 :]
    progress = Progress(len(events), scored_dir)
    try:
        run = _run_emulators if mode == "emulators" else _run_embedded
        outcome = run(feed, events, history, models, spec, config, progress)
    finally:
        progress.close()
    scored = read_scored(scored_dir)
    if scored.empty:
        print(f"\nno transaction was scored: see {out / 'job.log'}")
        return 1
    summary = summarise(df, events, scored, outcome, models, spec, mode)
    summary["source"] = source
    report(summary, scored_dir, models, out)
    print()
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"  {key:{width}s} {value}")
    if config.json_path:
        Path(config.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_path).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nreport: {out / 'report.md'}")
    return 0 if summary["scored"] == len(events) else 1


def report(summary: dict, scored_dir: Path, models: Path, out: Path) -> None:
    """``out/report.md``: the summary table, the monitoring windows and the PNGs (score
    histogram, alerts per hour, latency, drift; written by ``fraudstream monitor``'s code)."""
    from streaming.monitoring.command import run_monitor

    monitoring = run_monitor(scored_dir, models, "1h", out)
    lines = ["# fraudstream demo", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "## Monitoring (1 h event-time windows)", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in monitoring.items() if k != "wrote"]
    lines += ["", "Windows with the largest drift: [monitoring.md](monitoring.md).", ""]
    for name in ("scores", "alerts_per_hour", "latency", "drift"):
        if (out / f"{name}.png").exists():
            lines.append(f"![{name}]({name}.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
