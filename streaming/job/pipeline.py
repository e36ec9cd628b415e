"""The streaming job: Pub/Sub transactions and labels -> features -> scores -> alerts (+ DLQ).

Only wiring lives here; every stage is a composite in a module of :mod:`streaming.job`.
:class:`ScoreTransactions` is the core, from payloads to alerts and dead letters, testable
without Pub/Sub.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions
from apache_beam.runners.runner import PipelineResult

from features import presets
from features.incremental import Status
from features.spec import DEFAULT_MAX_LATENESS, FeatureSpec
from streaming.job.alerts import Alerts, to_message
from streaming.job.arrival import EntityChain, chain_key
from streaming.job.common import Clock
from streaming.job.enrich import EnrichFromFeatureStore
from streaming.job.entity_state import DEFAULT_ORDERING, ORDERINGS, FeatureRow
from streaming.job.event_time import EntityFeatures
from streaming.job.ids import PseudonymiseIds
from streaming.job.initial_states import STORE, InitialStates
from streaming.job.join import JoinFeatures
from streaming.job.options import FraudstreamOptions, is_local
from streaming.job.parse import DEAD_LETTER, ParseAndValidate, dead_letter
from streaming.job.scoring import BoosterHandler, Score
from streaming.job.sinks import WriteFeatures, WriteScored
from streaming.monitoring.stage import MonitorWindows
from streaming.pubsub_schemas import SchemaDecoder, topic_schema
from streaming.schema import (
    DEFAULT_CONTRACT,
    WireContract,
    parse_label,
    parse_transaction,
    transaction_json,
)
from streaming.store.feast_store import StoreSettings, shared_store
from streaming.store.lookup import LookupReader, shared_lookup_reader

if TYPE_CHECKING:
    from streaming.pseudonymise import Pseudonymiser


log = logging.getLogger(__name__)


class ScoreTransactions(beam.PTransform):
    """``{"transactions": payloads, "labels": payloads}`` -> ``{"alerts", "dead_letter",
    "scored", "features"}``: parse, entity features, join, score, alert. ``scored`` and
    ``features`` carry lists: a batch's :class:`~streaming.job.scoring.Scored` rows, and its
    accepted :class:`~streaming.job.entity_state.FeatureRow` (a transaction in one list only);
    ``alerts`` and ``dead_letter`` a dict per element.

    Redelivered transactions are caught by the entity states (status ``DUPLICATE``), late ones
    beyond the allowed lateness too (``TOO_LATE``): both go to the dead-letter output with that
    reason, so every valid transaction is scored once.

    ``ordering``: ``arrival`` (the default) scores each transaction as it arrives;
    ``event_time`` waits for the watermark and is exact for any delivery order, batch runs
    included (:mod:`streaming.job.arrival`, :mod:`streaming.job.event_time`).

    ``lookup``: opens the reader of the spec's batch features (required when the spec has
    lookups): transactions go through :class:`EnrichFromFeatureStore` before the entity
    states, and their rows carry the looked-up values.

    ``schemas``: the inputs are ``PubsubMessage``s (read with attributes), decoded by their
    Pub/Sub schema where they have one (:mod:`streaming.pubsub_schemas`)."""

    def __init__(
        self,
        spec: FeatureSpec,
        handler: BoosterHandler,
        max_lateness: timedelta = DEFAULT_MAX_LATENESS,
        clock: Clock = time.time,
        pseudonymise: PseudonymiseIds | None = None,
        ordering: str = DEFAULT_ORDERING,
        initial: InitialStates | None = None,
        contract: WireContract = DEFAULT_CONTRACT,
        lookup: Callable[[], LookupReader] | None = None,
        schemas: SchemaDecoder | None = None,
    ) -> None:
        super().__init__()
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, not {ordering!r}")
        if spec.lookups and lookup is None:
            raise ValueError(
                f"preset {spec.name!r} looks up batch features: give the feature store to read "
                "them from (--feature_store feast)"
            )
        self.spec, self.handler, self.max_lateness, self.clock = spec, handler, max_lateness, clock
        self.pseudonymise, self.ordering, self.initial = pseudonymise, ordering, initial
        self.contract, self.lookup, self.schemas = contract, lookup, schemas

    def expand(self, inputs):
        # arrival ordering: parsed events go keyed straight to the entity chain, unless they
        # are enriched from the feature store first
        keyed = self.ordering == "arrival" and not self.spec.lookups
        key = chain_key(self.spec) if keyed else None
        txs = inputs["transactions"] | "ParseTransactions" >> ParseAndValidate(
            functools.partial(parse_transaction, contract=self.contract),
            "parse_transactions",
            self.clock,
            self.pseudonymise,
            key,
            self.schemas,
        )
        labels = inputs["labels"] | "ParseLabels" >> ParseAndValidate(
            functools.partial(parse_label, contract=self.contract),
            "parse_labels",
            self.clock,
            self.pseudonymise,
            key,
            self.schemas,
        )
        # No dedupe stage: the entity states catch redelivered transactions, and applying a
        # label twice sets the same value (a zero delta).
        events = (txs.records, labels.records) | "Events" >> beam.Flatten()
        if self.spec.lookups:
            events = events | "EnrichFromFeatureStore" >> EnrichFromFeatureStore(
                self.spec, self.lookup, self.clock
            )
        # From here on an element is a list of rows (a bundle's, or up to a scoring batch):
        # each step after the entity states costs the runner an element per batch.
        if self.ordering == "arrival":
            batches = events | "EntityFeatures" >> EntityChain(
                self.spec, self.max_lateness, self.clock, self.initial, keyed
            )
        else:
            blocks = [
                events
                | f"{e.name.capitalize()}Features"
                >> EntityFeatures(self.spec, e, self.max_lateness, self.initial)
                for e in self.spec.entities
            ]
            batches = (
                blocks
                | "EntityBlocks" >> beam.Flatten()
                | "JoinFeatures" >> JoinFeatures(self.spec, self.clock)
                | "BatchRows"
                >> beam.BatchElements(min_batch_size=1, max_batch_size=self.handler.max_batch_size)
            )
        split = batches | "SplitRejected" >> beam.ParDo(_SplitRejected(self.clock)).with_outputs(
            DEAD_LETTER, main="accepted"
        )
        scored = split.accepted | "Score" >> Score(self.handler)
        alerts = scored | "Alerts" >> Alerts(self.spec.names, self.clock)
        dead_letters = (txs.dead_letter, labels.dead_letter, split[DEAD_LETTER])
        dead = dead_letters | "DeadLetters" >> beam.Flatten()
        return {"alerts": alerts, "dead_letter": dead, "scored": scored, "features": split.accepted}


class _SplitRejected(beam.DoFn):
    """A list of feature rows -> the list of its accepted ones (main output, when any) and the
    dead letter of each refused one (tag ``dead_letter``, its status as the reason)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def process(self, rows: list[FeatureRow]):
        accepted = []
        for row in rows:
            if row.accepted:
                accepted.append(row)
                continue
            reason = Status(row.status).name
            letter = dead_letter(transaction_json(row.tx), reason, "features", self.clock)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        if accepted:
            yield accepted


def read_pubsub(
    p: beam.Pipeline,
    label: str,
    subscription: str | None,
    topic: str | None,
    with_attributes: bool = False,
):
    """Payloads (``bytes``) of a subscription or topic; ``PubsubMessage``s ``with_attributes``."""
    if not (subscription or topic):
        raise ValueError(f"{label}: give a subscription or a topic")
    return p | label >> beam.io.ReadFromPubSub(
        subscription=subscription,
        topic=topic if not subscription else None,
        with_attributes=with_attributes,
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
    if opts.scored_flush_s < 1:
        flush = opts.scored_flush_s
        raise ValueError(f"--scored_flush_s must be at least 1 (seconds), got {flush}")
    cache_mb = options.view_as(WorkerOptions).max_cache_memory_usage_mb
    if cache_mb:
        log.warning(
            "--max_cache_memory_usage_mb %s: Beam weighs every state write of this job by "
            "walking all loaded modules (about 2 ms a write); leave the cache off (0)",
            cache_mb,
        )
    local = is_local(options.view_as(StandardOptions).runner)
    if local and not opts.pubsub_schemas:
        _check_schema_topics(opts)
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
    initial = _initial_states(opts, spec, id_key, local) if opts.initial_state else None
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
    schemas = opts.pubsub_schemas
    inputs = {
        "transactions": read_pubsub(
            p, "ReadTransactions", opts.transactions_subscription, opts.transactions_topic, schemas
        ),
        "labels": read_pubsub(
            p, "ReadLabels", opts.labels_subscription, opts.labels_topic, schemas
        ),
    }
    lateness = timedelta(hours=opts.max_lateness_hours)
    contract = WireContract(opts.naive_time_zone, opts.strict_fields)
    lookup = None
    if spec.lookups:
        if opts.feature_store != "feast":
            raise ValueError(
                f"preset {spec.name!r} looks up batch features in the Feast store: pass "
                "--feature_store feast (and the store's settings)"
            )
        lookup = functools.partial(shared_lookup_reader, spec.name, store_settings(opts))
        if local:
            lookup()  # fail now if the batch views are not applied or disagree with the spec
    core = ScoreTransactions(
        spec,
        handler,
        lateness,
        pseudonymise=pseudonymise,
        ordering=opts.ordering,
        initial=initial,
        contract=contract,
        lookup=lookup,
        schemas=SchemaDecoder() if schemas else None,
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
        writer = functools.partial(shared_store, spec.name, store_settings(opts))
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
            spec.names,
            directory=opts.scored_dir,
            table=opts.scored_table,
            flush_s=opts.scored_flush_s,
        )
    return out


def _check_schema_topics(opts: FraudstreamOptions) -> None:
    """A local launch without ``--pubsub_schemas`` refuses an input whose topic has a Pub/Sub
    schema in ``BINARY`` encoding (every message would be a dead letter) and warns of one in
    ``JSON``; a lookup that fails (no permission to read the topic) says nothing."""
    inputs = (opts.transactions_subscription or opts.transactions_topic,
              opts.labels_subscription or opts.labels_topic)  # fmt: skip
    for path in filter(None, inputs):
        try:
            found = topic_schema(path)
        except Exception as exc:  # best effort: the job reports what it reads
            log.debug("%s: its topic's schema is not known (%s)", path, exc)
            continue
        if found is None:
            continue
        schema, encoding = found
        message = (f"{path} reads a topic with the Pub/Sub schema {schema} in {encoding} "
                   "encoding: run the job with --pubsub_schemas")  # fmt: skip
        if encoding == "BINARY":
            raise ValueError(f"{message} (without it every message is a dead letter)")
        log.warning("%s (Avro's JSON encoding of a union, for one, is not plain JSON)", message)


def _monitor(opts: FraudstreamOptions, spec: FeatureSpec) -> MonitorWindows:
    """The monitoring stage against the champion's training reference (read at launch)."""
    from training.drift import load_reference
    from training.registry import Registry

    current = Registry(opts.model_dir, create=False).champion_uri()
    if current is None:
        raise ValueError(f"--monitoring_topic: no champion in {opts.model_dir}")
    try:
        reference = load_reference(current)
    except FileNotFoundError as exc:
        raise ValueError(
            f"--monitoring_topic: the model at {current} has no drift reference ({exc}); "
            "retrain it with this version (`fraudstream train` saves one)"
        ) from exc
    return MonitorWindows(spec.names, reference, opts.monitoring_window_s, source=current)


def store_settings(opts: Any) -> StoreSettings:
    """The Feast store of the job's options alone (``FraudstreamOptions``, or any namespace with
    the same attributes, as the ``bootstrap`` command's)."""
    return StoreSettings(
        opts.feature_store_profile,
        opts.feature_repo,
        registry=opts.feast_registry,
        bigtable_project=opts.bigtable_project,
        bigtable_instance=opts.bigtable_instance,
    )


def _initial_states(
    opts: FraudstreamOptions, spec: FeatureSpec, id_key: str | None, local: bool
) -> InitialStates:
    """The job's initial states, checked at launch: written for this spec and, where the id
    key's fingerprint is known here (``""``: clear ids), with this job's ids. A state file is
    checked on any runner; the Bigtable state store (``store``) on a local runner only (a
    remote launcher may not reach it). Workers check the spec again."""
    store = store_settings(opts) if opts.initial_state == STORE else None
    initial = InitialStates(opts.initial_state, spec, store)
    if initial.in_store and not local:
        return initial
    info = initial.check(id_key)
    log.info("initial states: %d entities up to %s from %s", info.entities, info.end_ns,
             initial.describe())  # fmt: skip
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


def pipeline_options(argv: Sequence[str] | None = None) -> PipelineOptions:
    """The job's options from ``argv``: always streaming; without ``--runner``, the
    ``BundleBasedDirectRunner`` (the DirectRunner would first try to download the Prism runner).
    """
    options = PipelineOptions(argv)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if standard.runner is None:
        standard.runner = "BundleBasedDirectRunner"
    return options


def run(
    argv: Sequence[str] | None = None,
    build_fn: Callable[[beam.Pipeline, PipelineOptions], object] = build,
) -> PipelineResult:
    """Build (``build_fn``) and submit the job; returns without waiting for it.

    On Dataflow the job runs on until it is drained or cancelled. Local runs go through
    :func:`streaming.local.launch.run_local`, which tunes the local runner first and waits.
    """
    p = beam.Pipeline(options=pipeline_options(argv))
    build_fn(p, p.options)
    return p.run()
