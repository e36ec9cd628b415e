"""The streaming job: Pub/Sub transactions and labels -> features -> scores -> alerts (+ DLQ).

Only wiring lives here; every stage is a composite in ``streaming/transforms*.py`` or
``streaming/scoring.py``. :class:`ScoreTransactions` is the core, from payloads to alerts and
dead letters, testable without Pub/Sub.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from features import presets
from features.incremental import Status
from features.spec import FeatureSpec
from streaming.bootstrap import InitialStates
from streaming.feature_store import PROFILES, REPO, shared_store
from streaming.local_runner import freeze_startup_objects, is_local, tune_local_runner
from streaming.schema import parse_label, parse_transaction, transaction_json
from streaming.scoring import BoosterHandler, Score
from streaming.sinks import MonitorWindows, WriteFeatures, WriteScored
from streaming.transforms import (
    Alerts,
    Clock,
    ParseAndValidate,
    PseudonymiseIds,
    dead_letter,
    to_message,
)
from streaming.transforms_features import (
    ORDERINGS,
    EntityChain,
    EntityFeatures,
    JoinFeatures,
)

if TYPE_CHECKING:
    from streaming.pseudonymise import Pseudonymiser

log = logging.getLogger(__name__)


class FraudstreamOptions(PipelineOptions):
    """Command-line options of the streaming job (``fraudstream run --help`` lists them)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        io = "Pub/Sub: a subscription (projects/P/subscriptions/S) or a topic (projects/P/topics/T)"
        parser.add_argument("--transactions_subscription", help=io)
        parser.add_argument("--transactions_topic", help="used when no subscription is given")
        parser.add_argument("--labels_subscription", help="fraud labels; see streaming/schema.py")
        parser.add_argument("--labels_topic")
        parser.add_argument("--alerts_topic", help="alerts, JSON with the attribute `dedupe`")
        parser.add_argument("--dlq_topic", help="dead letters: payload, error, stage, time")
        parser.add_argument("--model_dir", help="model registry directory; `current` scores")
        parser.add_argument("--preset", default="default", help="feature preset of the model")
        parser.add_argument("--threshold", type=float, default=None, help="override the model's")
        parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        parser.add_argument("--scoring_batch_size", type=int, default=512)
        parser.add_argument(
            "--model_poll_s", type=float, default=10.0, help="how often `current` is re-checked"
        )
        parser.add_argument("--max_lateness_hours", type=float, default=24.0)
        parser.add_argument(
            "--ordering",
            default="arrival",
            choices=ORDERINGS,
            help="arrival: score each transaction as it arrives (lowest latency); event_time: "
            "apply each card's and terminal's events in event-time order once the watermark "
            "passes them (exact for any delivery order, adds the watermark's delay)",
        )
        parser.add_argument(
            "--initial_state",
            help="card and terminal states to start from (`fraudstream bootstrap`): each "
            "entity's state is loaded from it when the job first sees the entity",
        )
        parser.add_argument(
            "--feature_store",
            default="none",
            choices=("none", "feast"),
            help="write fresh entity features to the Feast online store (`feast`)",
        )
        parser.add_argument(
            "--feature_store_profile",
            default="emulator",
            choices=PROFILES,
            help="feature_repo profile: local (sqlite), emulator (Bigtable emulator), gcp",
        )
        parser.add_argument("--feature_repo", default=str(REPO), help="the applied Feast repo")
        parser.add_argument("--scored_dir", help="scored events as parquet files (local runs)")
        parser.add_argument("--scored_table", help="scored events to BigQuery: project:dataset.t")
        parser.add_argument(
            "--monitoring_topic",
            help="per-window drift (PSI) and alert-rate records, JSON (see streaming/monitor.py)",
        )
        parser.add_argument("--monitoring_window_s", type=int, default=3600)
        parser.add_argument(
            "--pseudonymise_ids",
            default="on",
            choices=("on", "off"),
            help="keyed pseudonyms for card and terminal ids (key: $FRAUDSTREAM_ID_KEY or "
            "--id_key_secret); off keeps clear ids everywhere",
        )
        parser.add_argument(
            "--id_key_secret", help="Secret Manager version of the id key (read on workers)"
        )
        parser.add_argument(
            "--clear_ids_in_alerts",
            action="store_true",
            help="alerts also carry clear ids (customer_id_clear, terminal_id_clear)",
        )


class ScoreTransactions(beam.PTransform):
    """``{"transactions": payloads, "labels": payloads}`` -> ``{"alerts", "dead_letter",
    "scored", "features"}``: parse, entity features, join, score, alert (``features``: the
    accepted :class:`~streaming.transforms_features.FeatureRow` of each transaction).

    Redelivered transactions are caught by the entity states (status ``DUPLICATE``), late ones
    beyond the allowed lateness too (``TOO_LATE``): both go to the dead-letter output with that
    reason, so every valid transaction is scored once.

    ``ordering``: ``event_time`` (the default here: exact for any delivery order, batch runs
    included) waits for the watermark; ``arrival`` (the streaming job's default) scores each
    transaction as it arrives (:mod:`streaming.transforms_features` has both contracts)."""

    def __init__(
        self,
        spec: FeatureSpec,
        handler: BoosterHandler,
        max_lateness: timedelta = timedelta(days=1),
        clock: Clock = time.time,
        pseudonymise: PseudonymiseIds | None = None,
        ordering: str = "event_time",
        initial: InitialStates | None = None,
    ) -> None:
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, not {ordering!r}")
        self.spec, self.handler, self.max_lateness, self.clock = spec, handler, max_lateness, clock
        self.pseudonymise, self.ordering, self.initial = pseudonymise, ordering, initial

    def expand(self, inputs):
        txs = inputs["transactions"] | "ParseTransactions" >> ParseAndValidate(
            parse_transaction, "parse_transactions", self.clock
        )
        labels = inputs["labels"] | "ParseLabels" >> ParseAndValidate(
            parse_label, "parse_labels", self.clock
        )
        # No dedupe stage: the entity states catch redelivered transactions, and applying a
        # label twice sets the same value (a zero delta).
        events = (txs.records, labels.records) | "Events" >> beam.Flatten()
        if self.pseudonymise is not None:
            events = events | "PseudonymiseIds" >> self.pseudonymise
        if self.ordering == "arrival":
            rows = events | "EntityFeatures" >> EntityChain(
                self.spec, self.max_lateness, self.clock, self.initial
            )
        else:
            blocks = [
                events
                | f"{e.name.capitalize()}Features"
                >> EntityFeatures(self.spec, e, self.max_lateness, self.initial)
                for e in self.spec.entities
            ]
            rows = (
                blocks
                | "EntityBlocks" >> beam.Flatten()
                | "JoinFeatures" >> JoinFeatures(self.spec, self.clock)
            )
        accepted, rejected = rows | "SplitRejected" >> beam.Partition(
            lambda row, _: 0 if row.accepted else 1, 2
        )
        scored = accepted | "Score" >> Score(self.handler)
        alerts = scored | "Alerts" >> Alerts(self.spec.names, self.clock)
        refused = rejected | "RejectedToDeadLetter" >> beam.Map(_rejected, self.clock)
        dead = (txs.dead_letter, labels.dead_letter, refused) | "DeadLetters" >> beam.Flatten()
        return {"alerts": alerts, "dead_letter": dead, "scored": scored, "features": accepted}


def _rejected(row, clock: Clock) -> dict:
    """The dead letter of a transaction the entity states refused (its status is the reason)."""
    return dead_letter(transaction_json(row.tx), Status(row.status).name, "features", clock)


def _read(p: beam.Pipeline, label: str, subscription: str | None, topic: str | None):
    if not (subscription or topic):
        raise ValueError(f"{label}: give a subscription or a topic")
    return p | label >> beam.io.ReadFromPubSub(
        subscription=subscription,
        topic=topic if not subscription else None,
        timestamp_attribute="event_time",  # set by `fraudstream replay`; event time, not arrival
    )


def build(p: beam.Pipeline, options: PipelineOptions) -> dict:
    """Wire the job on ``p``: ReadTransactions/ReadLabels -> ScoreTransactions -> writes.

    A local run checks at launch what its workers (this machine) will need: the model, the
    applied Feast repository, the id key. A remote run (Dataflow) reads those on its workers,
    so the launching machine need not have them; it must then name the key's Secret Manager
    version (``$FRAUDSTREAM_ID_KEY`` does not reach the workers).
    """
    opts = options.view_as(FraudstreamOptions)
    if not opts.model_dir:
        raise ValueError("--model_dir is required")
    local = is_local(options.view_as(StandardOptions).runner)
    pseudonymise, id_key = None, ""  # id_key: the key's fingerprint, where known at launch
    if opts.pseudonymise_ids == "on":
        id_key = launch_pseudonymiser(opts.id_key_secret).fingerprint if local else None
        if not local and not opts.id_key_secret:
            raise ValueError(
                "--id_key_secret is required on a remote runner (the workers read the id key "
                "from Secret Manager), or pass --pseudonymise_ids off"
            )
        pseudonymise = PseudonymiseIds(opts.id_key_secret, opts.clear_ids_in_alerts)
    elif opts.clear_ids_in_alerts:
        raise ValueError("--clear_ids_in_alerts needs --pseudonymise_ids on (ids are clear)")
    spec = presets.get(opts.preset)
    initial = _initial_states(opts.initial_state, spec, id_key) if opts.initial_state else None
    handler = BoosterHandler(
        opts.model_dir,
        opts.preset,
        threshold=opts.threshold,
        max_batch_size=opts.scoring_batch_size,
        device=opts.device,
        poll_s=opts.model_poll_s,
    )
    if local:
        handler.load_model()  # fail now, with the registry's reason, not on a worker
    inputs = {
        "transactions": _read(
            p, "ReadTransactions", opts.transactions_subscription, opts.transactions_topic
        ),
        "labels": _read(p, "ReadLabels", opts.labels_subscription, opts.labels_topic),
    }
    lateness = timedelta(hours=opts.max_lateness_hours)
    core = ScoreTransactions(
        spec, handler, lateness, pseudonymise=pseudonymise, ordering=opts.ordering, initial=initial
    )
    out = inputs | "ScoreTransactions" >> core
    if opts.alerts_topic:
        _ = (
            out["alerts"]
            | "AlertMessages" >> beam.Map(_pubsub_message)
            | "WriteAlerts" >> beam.io.WriteToPubSub(opts.alerts_topic, with_attributes=True)
        )
    if opts.dlq_topic:
        _ = (
            out["dead_letter"]
            | "DeadLetterMessages" >> beam.Map(lambda d: json.dumps(d).encode())
            | "WriteDLQ" >> beam.io.WriteToPubSub(opts.dlq_topic)
        )
    if opts.feature_store == "feast":
        writer = functools.partial(
            shared_store, spec.name, opts.feature_store_profile, opts.feature_repo
        )
        if local:
            writer()  # fail now if the repository is not applied or disagrees with the spec
        _ = out["features"] | "WriteFeatures" >> WriteFeatures(spec, writer)
    if opts.monitoring_topic:
        _ = (
            out["scored"]
            | "MonitorWindows" >> _monitor(opts, spec)
            | "MonitoringMessages" >> beam.Map(lambda r: json.dumps(r).encode())
            | "WriteMonitoring" >> beam.io.WriteToPubSub(opts.monitoring_topic)
        )
    if opts.scored_dir or opts.scored_table:
        _ = out["scored"] | "WriteScored" >> WriteScored(
            spec.names, directory=opts.scored_dir, table=opts.scored_table
        )
    return out


def _monitor(opts: FraudstreamOptions, spec: FeatureSpec) -> MonitorWindows:
    """The monitoring stage against the champion's training reference (read at launch)."""
    from pathlib import Path

    from training.drift import load_reference
    from training.registry import CURRENT

    current = Path(opts.model_dir) / CURRENT
    try:
        reference = load_reference(current)
    except FileNotFoundError as exc:
        raise ValueError(
            f"--monitoring_topic: the model at {current} has no drift reference ({exc}); "
            "retrain it with this version (`fraudstream train` saves one)"
        ) from exc
    return MonitorWindows(
        spec.names, reference, opts.monitoring_window_s, source=os.path.realpath(current)
    )


def _initial_states(path: str, spec: FeatureSpec, id_key: str | None) -> InitialStates:
    """Check a state file at launch: written for this spec and, where the id key's fingerprint
    is known here (``""``: clear ids), with this job's ids. Workers check the spec again."""
    initial = InitialStates(path, spec)
    info = initial.info()
    info.check(spec, id_key)
    log.info("initial states: %d entities up to %s from %s", info.entities, info.end_ns, path)
    return initial


def launch_pseudonymiser(secret: str | None) -> Pseudonymiser:
    """The id key this machine launches with (``$FRAUDSTREAM_ID_KEY`` or the Secret Manager
    version ``secret``); fails with what to do when none is configured."""
    from streaming.pseudonymise import ENV_KEY, ENV_KEY_SECRET, Pseudonymiser

    env = {ENV_KEY_SECRET: secret} if secret else None
    try:
        ids = Pseudonymiser.from_env(required=True, environ=env)
    except ValueError as exc:
        raise ValueError(
            f"{exc} (e.g. `export {ENV_KEY}=$(openssl rand -hex 32)`), or --id_key_secret; "
            "or pass --pseudonymise_ids off to keep clear card and terminal ids"
        ) from exc
    log.info("pseudonymising ids with key %s", ids.fingerprint)
    return ids


def _pubsub_message(alert: dict) -> beam.io.PubsubMessage:
    data, attributes = to_message(alert)
    return beam.io.PubsubMessage(data, attributes)


def run(
    argv: Sequence[str] | None = None,
    build_fn: Callable[[beam.Pipeline, PipelineOptions], object] = build,
) -> None:
    """Entry point: parse options, build (``build_fn``) and run the streaming job until it is
    stopped.

    Without ``--runner`` the job runs on the ``BundleBasedDirectRunner`` (the DirectRunner
    would first try to download the Prism runner), with the local Pub/Sub read tuned
    (:mod:`streaming.local_runner`). Ctrl-C or SIGTERM cancels a local run.
    """
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "BundleBasedDirectRunner"
    local = is_local(standard.runner)
    if local:
        tune_local_runner()
    p = beam.Pipeline(options=options)
    build_fn(p, options)
    if local:
        freeze_startup_objects()  # after build: imports, the model and Feast are loaded
    result = p.run()
    if not local:
        return  # Dataflow: the job runs on; `gcloud dataflow jobs cancel` or drain stops it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        log.info("stopping the pipeline")
        result.cancel()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
