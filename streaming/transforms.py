"""Pipeline stages at the edges: parsing with a dead-letter output, alerts.

Each stage is a composite ``PTransform`` with a stable label (see ``streaming/pipeline.py``).
Processing time comes from an injectable ``clock`` (seconds since the epoch).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from streaming.schema import from_ns

DEAD_LETTER = "dead_letter"
NAMESPACE = "fraudstream"
Clock = Callable[[], float]


def dead_letter(payload: bytes | str, error: str, stage: str, clock: Clock = time.time) -> dict:
    """The dead-letter record: payload (text, or base64 when not UTF-8), reason, stage, time."""
    if isinstance(payload, str):
        text, encoding = payload, "text"
    else:
        try:
            text, encoding = payload.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return {
        "payload": text,
        "payload_encoding": encoding,
        "error": error,
        "stage": stage,
        "time": datetime.fromtimestamp(clock(), UTC).isoformat(),
    }


class _Parse(beam.DoFn):
    def __init__(self, parse: Callable[[bytes | str, float], Any], stage: str, clock: Clock):
        self.parse, self.stage, self.clock = parse, stage, clock
        self.ok = Metrics.counter(NAMESPACE, f"{stage}_ok")
        self.bad = Metrics.counter(NAMESPACE, f"{stage}_dead_letter")

    def process(self, payload: bytes | str):
        try:
            record = self.parse(payload, self.clock())
        except ValueError as exc:  # the schema raises ValueError (UTF-8 and JSON errors too)
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(payload, str(exc), self.stage, self.clock)
            )
            return
        self.ok.inc()
        yield record


class ParseAndValidate(beam.PTransform):
    """Payloads -> typed records (main output) and dead letters (tag ``dead_letter``).

    ``parse`` is :func:`streaming.schema.parse_transaction` or ``parse_label``; ``stage`` names
    the stage in dead letters and in the counters ``<stage>_ok`` / ``<stage>_dead_letter``.
    """

    def __init__(
        self, parse: Callable[[bytes | str, float], Any], stage: str, clock: Clock = time.time
    ) -> None:
        super().__init__()
        self.parse, self.stage, self.clock = parse, stage, clock

    def expand(self, payloads):
        return payloads | "Parse" >> beam.ParDo(
            _Parse(self.parse, self.stage, self.clock)
        ).with_outputs(DEAD_LETTER, main="records")


def _number(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> null: JSON has no NaN


class _Pseudonymise(beam.DoFn):
    """Transactions and labels with keyed pseudonyms for their customer and terminal ids."""

    def __init__(self, key_secret: str | None, keep_clear: bool) -> None:
        self.key_secret, self.keep_clear = key_secret, keep_clear

    def setup(self) -> None:
        from streaming.pseudonymise import ENV_KEY_SECRET, Pseudonymiser

        env = {ENV_KEY_SECRET: self.key_secret} if self.key_secret else None
        self.ids = Pseudonymiser.from_env(required=True, environ=env)  # on the worker

    def process(self, record: Any):
        customer = self.ids.customer(record.customer_id)
        terminal = self.ids.terminal(record.terminal_id)
        extra = {}
        if self.keep_clear and hasattr(record, "clear_ids"):
            extra["clear_ids"] = (record.customer_id, record.terminal_id)
        yield dataclasses.replace(record, customer_id=customer, terminal_id=terminal, **extra)


class PseudonymiseIds(beam.PTransform):
    """Records (transactions or labels) -> the same with pseudonymised customer and terminal
    ids (:mod:`streaming.pseudonymise`), so clear card and terminal ids never reach the entity
    state, Bigtable, the scored sink or alerts. The key is resolved on the worker: from the
    Secret Manager version ``key_secret``, else ``$FRAUDSTREAM_ID_KEY``; it is never pickled
    into the pipeline. ``keep_clear``: transactions also carry their clear ids, for alerts."""

    def __init__(self, key_secret: str | None = None, keep_clear: bool = False) -> None:
        super().__init__()
        self.key_secret, self.keep_clear = key_secret, keep_clear

    def expand(self, records):
        return records | "Pseudonymise" >> beam.ParDo(
            _Pseudonymise(self.key_secret, self.keep_clear)
        )


def alert_json(scored: Any, features: list[str], clock: Clock = time.time) -> dict:
    """The alert of a scored transaction (see :class:`streaming.scoring.Scored`).

    ``features``: the model's input names, in the order of ``scored.features``. Latency is
    processing time since the message was parsed; feature age since the features were
    assembled (both in ms, both from ``clock``).
    """
    tx = scored.tx
    now = clock()
    return {
        "transaction_id": tx.transaction_id,
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "score": scored.score,
        "threshold": scored.threshold,
        "model_version": scored.model_version,
        "reasons": [
            {"feature": name, "value": _number(value), "contribution": c}
            for name, value, c in scored.reasons
        ],
        "features": {
            n: _number(v) for n, v in zip(features, scored.features.tolist(), strict=True)
        },
        "feature_age_ms": round((now - scored.computed_at) * 1000.0, 3),
        "event_time": from_ns(tx.time_ns).isoformat(),
        "processing_latency_ms": round((now - tx.received_at) * 1000.0, 3),
    } | _clear_ids(tx)


def _clear_ids(tx: Any) -> dict:
    """The investigators' clear ids, when the job keeps them (``--clear_ids_in_alerts``)."""
    clear = getattr(tx, "clear_ids", None)
    if clear is None:
        return {}
    return {"customer_id_clear": clear[0], "terminal_id_clear": clear[1]}


class _Alert(beam.DoFn):
    def __init__(self, features: list[str], clock: Clock) -> None:
        self.features, self.clock = features, clock
        self.alerts = Metrics.counter(NAMESPACE, "alerts")
        self.latency = Metrics.distribution(NAMESPACE, "alert_latency_ms")

    def process(self, scored: Any):
        if scored.accepted and scored.score >= scored.threshold:
            self.alerts.inc()
            alert = alert_json(scored, self.features, self.clock)
            self.latency.update(int(alert["processing_latency_ms"]))
            yield alert


class Alerts(beam.PTransform):
    """Scored transactions at or above the threshold -> alert dicts (rejected ones never alert).

    ``ToMessages`` turns them into ``PubsubMessage``-shaped pairs (JSON bytes, attributes) with
    the attribute ``dedupe`` = transaction id, so a consumer can drop redeliveries.
    """

    def __init__(self, features: list[str], clock: Clock = time.time) -> None:
        super().__init__()
        self.features, self.clock = features, clock

    def expand(self, scored):
        return scored | "Alert" >> beam.ParDo(_Alert(self.features, self.clock))


def to_message(alert: dict) -> tuple[bytes, dict[str, str]]:
    """JSON bytes and Pub/Sub attributes of an alert (``dedupe`` = transaction id)."""
    return json.dumps(alert).encode(), {"dedupe": str(alert["transaction_id"])}
