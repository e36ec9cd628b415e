"""The streaming job: Pub/Sub transactions and labels -> features -> scores -> alerts (+ DLQ).

Only wiring lives here; every stage is a composite in ``streaming/transforms*.py`` or
``streaming/scoring.py``. :class:`ScoreTransactions` is the core, from payloads to alerts and
dead letters, testable without Pub/Sub.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from features import presets
from features.incremental import Status
from features.spec import FeatureSpec
from streaming.schema import parse_label, parse_transaction, transaction_json
from streaming.scoring import BoosterHandler, Score
from streaming.transforms import Alerts, Clock, ParseAndValidate, dead_letter, to_message
from streaming.transforms_features import EntityFeatures, JoinFeatures


class FraudstreamOptions(PipelineOptions):
    """Command-line options of the streaming job."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--transactions_subscription", help="projects/P/subscriptions/S")
        parser.add_argument("--transactions_topic", help="projects/P/topics/T (if no subscription)")
        parser.add_argument("--labels_subscription")
        parser.add_argument("--labels_topic")
        parser.add_argument("--alerts_topic", required=False)
        parser.add_argument("--dlq_topic", required=False)
        parser.add_argument("--model_dir", help="model registry directory (its champion scores)")
        parser.add_argument("--preset", default="default", help="feature preset of the model")
        parser.add_argument("--threshold", type=float, default=None, help="override the model's")
        parser.add_argument("--max_lateness_hours", type=float, default=24.0)
        parser.add_argument(
            "--feature_store",
            default="none",
            choices=("none", "memory", "bigtable"),
            help="online store profile (not wired yet: features stay in Beam state)",
        )


class ScoreTransactions(beam.PTransform):
    """``{"transactions": payloads, "labels": payloads}`` -> ``{"alerts", "dead_letter",
    "scored"}``: parse, entity features, join, score, alert.

    Redelivered transactions are caught by the entity states (status ``DUPLICATE``), late ones
    beyond the allowed lateness too (``TOO_LATE``): both go to the dead-letter output with that
    reason, so every valid transaction is scored once."""

    def __init__(
        self,
        spec: FeatureSpec,
        handler: BoosterHandler,
        max_lateness: timedelta = timedelta(days=1),
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        self.spec, self.handler, self.max_lateness, self.clock = spec, handler, max_lateness, clock

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
        blocks = [
            events
            | f"{e.name.capitalize()}Features" >> EntityFeatures(self.spec, e, self.max_lateness)
            for e in self.spec.entities
        ]
        rows = blocks | "EntityBlocks" >> beam.Flatten() | "JoinFeatures" >> JoinFeatures(self.spec)
        accepted, rejected = rows | "SplitRejected" >> beam.Partition(
            lambda row, _: 0 if row.accepted else 1, 2
        )
        scored = accepted | "Score" >> Score(self.handler)
        alerts = scored | "Alerts" >> Alerts(self.clock)
        refused = rejected | "RejectedToDeadLetter" >> beam.Map(_rejected, self.clock)
        dead = (txs.dead_letter, labels.dead_letter, refused) | "DeadLetters" >> beam.Flatten()
        return {"alerts": alerts, "dead_letter": dead, "scored": scored}


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
    """Wire the job on ``p``: ReadTransactions/ReadLabels -> ScoreTransactions -> writes."""
    opts = options.view_as(FraudstreamOptions)
    if not opts.model_dir:
        raise ValueError("--model_dir is required")
    spec = presets.get(opts.preset)
    handler = BoosterHandler(opts.model_dir, opts.preset, threshold=opts.threshold)
    inputs = {
        "transactions": _read(
            p, "ReadTransactions", opts.transactions_subscription, opts.transactions_topic
        ),
        "labels": _read(p, "ReadLabels", opts.labels_subscription, opts.labels_topic),
    }
    lateness = timedelta(hours=opts.max_lateness_hours)
    out = inputs | "ScoreTransactions" >> ScoreTransactions(spec, handler, lateness)
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
    return out


def _pubsub_message(alert: dict) -> beam.io.PubsubMessage:
    data, attributes = to_message(alert)
    return beam.io.PubsubMessage(data, attributes)


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse options, build and run the streaming job."""
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        build(p, options)
