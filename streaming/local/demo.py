"""``fraudstream demo``: the whole job on real parts, with live progress, a summary and a report.

Emulators mode (the Google Cloud SDK is installed): start the Pub/Sub and Bigtable emulators
(unless running), create this run's topics, apply the Feast repository (emulator profile),
train a model on the history before the replayed slice (or reuse the one trained for the same
data), start ``fraudstream run`` as a child process, replay the slice with each label after
its delay, follow the job live, stop everything it started (on Ctrl-C too) and report.

Embedded mode (no SDK, or ``--embedded``): the same core (``ScoreTransactions``, the Feast
writes on the local sqlite profile, the scored sink) on Beam's in-process runner, fed from
memory.

The replayed slice is the last ``--events`` transactions. The job starts from the card and
terminal states of the history before it (``fraudstream bootstrap``, keyed by this run's id
key), as a job taking over a live feed would, so its scores must equal the offline scores of
the whole history's backfill.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from features.spec import DAY, FeatureSpec
from features.table import read_transactions, validate
from streaming.job.entity_state import DEFAULT_ORDERING
from streaming.local import job_process as lj
from streaming.schema import read_scored
from training.protocol import card_precision_at_k

EMBEDDED_ORDERING = "event_time"
"""The embedded demo's: its source is one bounded batch, with no arrival order to apply events
in; under ``event_time`` each card's and terminal's events apply in the order the job's default
(``arrival``) sees them on the in-order feed the emulator demo replays, so both modes score
alike."""


@dataclass
class DemoConfig:
    """What ``fraudstream demo`` was asked for (see ``streaming/cli.py``)."""

    input: str
    preset: str = "default"
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
            frame = pd.read_parquet(part, columns=["latency_ms", "model_version"])
            self._seen.add(part)
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


# --------------------------------------------------------------------------- the two modes


def bootstrap_states(history: pd.DataFrame, spec: FeatureSpec, out: Path) -> Path:
    """The states of every card and terminal after ``history``, pseudonymised with this run's
    key (``$FRAUDSTREAM_ID_KEY``), for the job's ``--initial_state``."""
    from streaming.batch.bootstrap import bootstrap
    from streaming.pseudonymise import Pseudonymiser

    path = out / "states.parquet"
    ids = Pseudonymiser.from_env(required=True)
    info = bootstrap(history, spec, path, ids, progress=True)
    print(f"states of {info.entities:,} cards and terminals after {len(history):,} transactions")
    return path


def _run_emulators(feed: pd.DataFrame, events: pd.DataFrame, models: Path, spec: FeatureSpec,
                   config: DemoConfig, states: Path,
                   progress: Progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
    from streaming.local import emulators as emu
    from streaming.local.replay import Publisher, replay
    from streaming.store.feast_store import apply_repo, scratch_repo

    out = Path(config.out)
    state = out / "emulators"
    running = {name for name, info in emu.status(state).items() if info is not None}
    started = [name for name in emu.NAMES if name not in running]
    infos = emu.up(state_dir=state)
    os.environ.update(emu.env_for(infos))
    job = None
    try:
        topics = lj.Topics.create("demo")
        repo = scratch_repo(out / f"feature_repo-{uuid.uuid4().hex[:6]}", "fraudstream_demo")
        apply_repo("emulator", repo)
        extra = ["--initial_state", str(states), "--ordering", DEFAULT_ORDERING]
        args = lj.job_args(topics, models, spec.name, progress.scored_dir, repo, extra)
        job = lj.start(args, out / "job.log")
        print(f"job started (log: {out / 'job.log'}); replaying {len(events):,} transactions")
        publisher = Publisher(lj.PROJECT)

        def publish(topic: str, data: bytes, attrs: dict[str, str]) -> None:
            publisher(topic, data, attrs)
            progress.published += 1

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
    finally:
        if job is not None:
            lj.stop(job)
        if started:
            emu.down(started, state)


def _run_embedded(feed: pd.DataFrame, events: pd.DataFrame, models: Path, spec: FeatureSpec,
                  config: DemoConfig, states: Path,
                  progress: Progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
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

    repo = scratch_repo(Path(config.out) / f"feature_repo-{uuid.uuid4().hex[:6]}", "demo")
    apply_repo("local", repo)
    payloads: dict[str, list[bytes]] = {"tx": [], "label": []}
    seen = len(feed) - len(events)
    for kind, data, _, _ in messages(feed, spec.label_delay, seen, trailing_labels=False):
        payloads[kind].append(data)
    _COLLECTED.clear()
    progress.published = len(payloads["tx"]) + len(payloads["label"])
    print("embedded mode: Beam's in-process runner, sqlite online store, in-memory source")
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        inputs = {
            "transactions": p | "Transactions" >> beam.Create(payloads["tx"], reshuffle=False),
            "labels": p | "Labels" >> beam.Create(payloads["label"], reshuffle=False),
        }
        core = ScoreTransactions(spec, BoosterHandler(models, spec.name),
                                 pseudonymise=PseudonymiseIds(), ordering=EMBEDDED_ORDERING,
                                 initial=InitialStates(str(states), spec))  # fmt: skip
        out = inputs | core
        store = functools.partial(shared_store, spec.name, StoreSettings("local", str(repo)))
        _ = out["features"] | WriteFeatures(spec, store)
        _ = out["scored"] | WriteScored(spec.names, directory=str(progress.scored_dir))
        _ = out["alerts"] | "KeepAlerts" >> beam.Map(_collect, "alerts")
        _ = out["dead_letter"] | "KeepDead" >> beam.Map(_collect, "dead")
    progress.poll(None)
    return _COLLECTED.get("alerts", []), _COLLECTED.get("dead", [])


_COLLECTED: dict[str, list] = {}


def _collect(element: dict, name: str) -> None:
    """Keep an output of the in-process run (a module global: the runner pickles functions by
    reference, so a bound ``list.append`` would fill a copy)."""
    _COLLECTED.setdefault(name, []).append(element)


# --------------------------------------------------------------------------- summary


def summarise(df: pd.DataFrame, events: pd.DataFrame, scored: pd.DataFrame, alerts: list[dict],
              dead: list[dict], models: Path, spec: FeatureSpec,
              mode: str) -> dict[str, Any]:  # fmt: skip
    """The demo's summary: counts, alert precision, CP@100 streamed and offline (the backfill
    of the whole history ``df``, whose last rows are ``events``), latency."""
    from training import model as model_lib
    from training.registry import Registry

    champion = Registry(models, create=False).load()
    truth = events.set_index("TRANSACTION_ID")
    scored = scored.drop_duplicates("transaction_id").set_index("transaction_id")
    scored = scored.loc[scored.index.intersection(truth.index)]
    rows = truth.loc[scored.index]
    alert_ids = [a["transaction_id"] for a in alerts]
    frauds = int(truth.loc[[i for i in alert_ids if i in truth.index], "TX_FRAUD"].sum())
    days = rows["TX_DATETIME"].dt.normalize().to_numpy()
    streamed_cp = card_precision_at_k(
        days, scored["customer_id"].to_numpy(), rows["TX_FRAUD"].to_numpy(),
        scored["score"].to_numpy())  # fmt: skip
    X = backfill(df, spec)[spec.names].to_numpy(np.float32)[len(df) - len(events) :]
    offline = pd.Series(model_lib.predict(champion.booster, X), index=events["TRANSACTION_ID"])
    offline = offline.loc[scored.index].to_numpy()
    offline_cp = card_precision_at_k(days, rows["CUSTOMER_ID"].to_numpy(),
                                     rows["TX_FRAUD"].to_numpy(), offline)  # fmt: skip
    latency = scored["latency_ms"].to_numpy()
    return {
        "mode": mode,
        "events": len(events),
        "scored": len(scored),
        "alerts": len(alerts),
        "dlq": len(dead),
        "alert_precision": round(frauds / len(alerts), 4) if alerts else None,
        "frauds_in_slice": int(events["TX_FRAUD"].sum()),
        "cp_at_100": round(streamed_cp, 4),
        "cp_at_100_offline": round(offline_cp, 4),
        "scores_equal_offline": int((scored["score"].to_numpy() == offline).sum()),
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
    reason = None if config.embedded else gcloud_available()
    mode = "embedded" if config.embedded or reason else "emulators"
    if reason and not config.embedded:
        print(f"{reason}: running the embedded mode instead")
    scored_dir = out / f"scored-{uuid.uuid4().hex[:6]}"
    history = df.iloc[: len(df) - len(events)]
    states = bootstrap_states(history, spec, out)
    # the feed: the slice, and the labels due during it for the history's last days
    pending = history["TX_DATETIME"] >= history["TX_DATETIME"].max() - spec.label_delay - DAY
    feed = df.iloc[int(np.argmax(pending.to_numpy())) if len(history) else 0 :]
    progress = Progress(len(events), scored_dir)
    try:
        run = _run_emulators if mode == "emulators" else _run_embedded
        alerts, dead = run(feed, events, models, spec, config, states, progress)
    finally:
        progress.close()
    scored = read_scored(scored_dir)
    if scored.empty:
        print(f"\nno transaction was scored: see {out / 'job.log'}")
        return 1
    summary = summarise(df, events, scored, alerts, dead, models, spec, mode)
    summary["source"] = source
    report(summary, scored_dir, models, out)
    print()
    for key, value in summary.items():
        print(f"  {key:24s} {value}")
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
