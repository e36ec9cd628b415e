"""``ParseAndValidate``: payloads to typed records, with a dead-letter output.

Processing time comes from an injectable ``clock`` (seconds since the epoch).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from streaming.job.common import NAMESPACE, Clock

DEAD_LETTER = "dead_letter"


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
    """A DoFn rather than ``beam.Map(parse).with_exception_handling()``: Beam's wrapper hands
    the dead-letter output ``repr(exc)`` and a traceback, and the dead letter's ``error`` is the
    schema's message to the producer (``str(exc)``), counted per stage."""

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
