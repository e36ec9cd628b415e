"""The job's pipeline options (``fraudstream run --help`` lists them) and which runners are
local."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apache_beam.options.pipeline_options import PipelineOptions

from features import presets
from features.spec import DEFAULT_MAX_LATENESS, HOUR
from streaming.job.entity_state import DEFAULT_ORDERING, ORDERINGS
from streaming.job.sinks import SCORED_FLUSH_S
from streaming.store.names import PROFILES, REPO

if TYPE_CHECKING:
    pass


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
        parser.add_argument(
            "--preset",
            default="default",
            choices=tuple(presets.PRESETS),
            help="feature preset of the model",
        )
        parser.add_argument("--threshold", type=float, default=None, help="override the model's")
        parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        parser.add_argument(
            "--scoring_batch_size",
            type=int,
            default=512,
            help="rows per XGBoost predict at most (a bundle's rows are scored in chunks)",
        )
        parser.add_argument(
            "--model_poll_s", type=float, default=10.0, help="how often `current` is re-checked"
        )
        parser.add_argument(
            "--naive_time_zone",
            default="UTC",
            help="IANA time zone of message times written without Z or an offset (wire "
            "contract: streaming/schemas/)",
        )
        parser.add_argument(
            "--strict_fields",
            action="store_true",
            help="dead-letter messages with fields the wire contract does not know (default: "
            "ignore them, counted per field name)",
        )
        parser.add_argument(
            "--pubsub_schemas",
            action="store_true",
            help="read each message's Pub/Sub schema attributes and decode Avro or protobuf "
            "messages (BINARY or JSON encoding) with the schema revision they were published "
            "in (the workers need pubsub.schemas.get); messages without a schema are read as "
            "JSON",
        )
        parser.add_argument("--max_lateness_hours", type=float, default=DEFAULT_MAX_LATENESS / HOUR)
        parser.add_argument(
            "--ordering",
            default=DEFAULT_ORDERING,
            choices=ORDERINGS,
            help="arrival: score each transaction as it arrives (lowest latency); event_time: "
            "apply each card's and terminal's events in event-time order once the watermark "
            "passes them (exact for any delivery order, adds the watermark's delay)",
        )
        parser.add_argument(
            "--initial_state",
            help="card and terminal states to start from (`fraudstream bootstrap`): a state "
            "file (path or gs://), or `store` for the Bigtable state table of the Feast "
            "settings below (`bootstrap --to_store`); each entity's state is loaded when the job "
            "first sees the entity (from the store: one read per entity)",
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
        parser.add_argument(
            "--feature_repo",
            default=str(REPO),
            help="the Feast repository (a directory in the worker image; default: the one "
            "installed with fraudstream)",
        )
        parser.add_argument(
            "--feast_registry",
            help="the Feast registry, e.g. gs://BUCKET/fraudstream/registry.db (overrides the "
            "profile's; the gcp profile needs it or $FRAUDSTREAM_FEAST_REGISTRY)",
        )
        parser.add_argument(
            "--bigtable_project", help="GCP project of the Bigtable online store (overrides)"
        )
        parser.add_argument(
            "--bigtable_instance", help="Bigtable instance of the online store (overrides)"
        )
        parser.add_argument(
            "--scored_dir",
            help="scored events as parquet files under a path or gs:// prefix (one file per "
            "event hour, trigger firing and shard)",
        )
        parser.add_argument("--scored_table", help="scored events to BigQuery: project:dataset.t")
        parser.add_argument(
            "--scored_flush_s",
            type=int,
            default=SCORED_FLUSH_S,
            help="seconds of processing time between an event hour's scored files (more: "
            "fewer, larger files; a reader sees rows later)",
        )
        parser.add_argument(
            "--monitoring_topic",
            help="per-window drift (PSI) and alert-rate records, JSON "
            "(see streaming/monitoring/stats.py)",
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


LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def is_local(runner: str | None) -> bool:
    """Whether ``--runner`` names a Python DirectRunner (the default when absent)."""
    return runner is None or runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS
