"""``Alerts``: scored transactions at or above the threshold to alert records and messages."""

from __future__ import annotations

import json
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from streaming.job.common import NAMESPACE, Clock, StageCpu
from streaming.schema import from_ns


def _number(value: float) -> float | None:
    return None if value != value else float(value)  # NaN -> null: JSON has no NaN


def alert_json(scored: Any, features: list[str], clock: Clock = time.time) -> dict:
    """The alert of a scored transaction (see :class:`streaming.job.scoring.Scored`).

    Ids are as the producer sent them (a text id as its text), but for pseudonymised card and
    terminal ids. ``features``: the model's input names, in the order of ``scored.features``.
    Latency is processing time since the message was parsed; feature age since the features
    were assembled (both in ms, both from ``clock``).
    """
    tx = scored.tx
    now = clock()
    texts = tx.text_ids or (None, None, None)  # text ids are echoed as sent, not as their keys
    return {
        "transaction_id": texts[0] or tx.transaction_id,
        "customer_id": texts[1] or tx.customer_id,
        "terminal_id": texts[2] or tx.terminal_id,
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
        self.cpu = StageCpu("alerts")

    def process(self, batch: list[Any]) -> list[dict]:
        started = self.cpu.start()
        alerts = [
            alert_json(s, self.features, self.clock)
            for s in batch
            if s.accepted and s.score >= s.threshold
        ]
        self.alerts.inc(len(alerts))
        for alert in alerts:
            self.latency.update(int(alert["processing_latency_ms"]))
        self.cpu.stop(started)
        return alerts

    def finish_bundle(self) -> None:
        self.cpu.report()


class Alerts(beam.PTransform):
    """Lists of scored transactions -> an alert dict for each at or above the threshold
    (rejected ones never alert).

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
