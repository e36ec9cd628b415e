"""``ParseAndValidate``: payloads to typed records, with a dead-letter output.

Processing time comes from an injectable ``clock`` (seconds since the epoch).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows, TimestampedValue
from apache_beam.typehints import KV
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from streaming.job.common import NAMESPACE, BundleCounters, Clock, StageCpu
from streaming.job.ids import PseudonymiseIds
from streaming.pubsub_schemas import SCHEMA_ENCODING, SchemaDecoder

DEAD_LETTER = "dead_letter"
Parse = Callable[..., Any]
"""``parse(payload, received_at, unknown=callback) -> record``; raises ``ValueError``."""
log = logging.getLogger(__name__)


def dead_letter(
    payload: bytes | str,
    error: str,
    stage: str,
    clock: Clock = time.time,
    attributes: Mapping[str, str] | None = None,
) -> dict:
    """The dead-letter record: payload (text, or base64 when not UTF-8 or when the
    ``attributes`` say the schema's encoding is ``BINARY``), reason, stage, time, and the
    message's ``attributes`` where given (a schema topic's name and revision, for a replay)."""
    if isinstance(payload, str):
        text, encoding = payload, "text"
    elif attributes and attributes.get(SCHEMA_ENCODING) == "BINARY":
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    else:
        try:
            text, encoding = payload.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    letter = {
        "payload": text,
        "payload_encoding": encoding,
        "error": error,
        "stage": stage,
        "time": datetime.fromtimestamp(clock(), UTC).isoformat(),
    }
    if attributes:
        letter["attributes"] = dict(attributes)
    return letter


MAX_FIELD_COUNTERS = 50
"""Distinct unknown field names counted by name per worker; more go to ``..._other``."""
LOG_EVERY = 10_000
"""After its first sighting, an unknown field is logged once per this many messages."""
_GLOBAL_WINDOW = (GlobalWindow(),)


class _Parse(beam.DoFn):
    """A DoFn rather than ``beam.Map(parse).with_exception_handling()``: Beam's wrapper hands
    the dead-letter output ``repr(exc)`` and a traceback, and the dead letter's ``error`` is the
    schema's message to the producer (``str(exc)``), counted per stage.

    A record leaves stamped with its own event time (a transaction's ``TX_DATETIME``, a label's
    ``LABEL_DATETIME``): the message attribute ``event_time`` is optional. In the global window
    (a Pub/Sub read's) it leaves as a ``WindowedValue`` in that window: a ``TimestampedValue``
    would cost Beam an assignment to the same window per element.

    With ``schemas`` the elements are ``PubsubMessage``s (read with their attributes), decoded
    by their Pub/Sub schema before the contract's parser reads them."""

    def __init__(
        self,
        parse: Parse,
        stage: str,
        clock: Clock,
        ids: PseudonymiseIds | None = None,
        key: Callable[[Any], int] | None = None,
        global_window: bool = False,
        schemas: SchemaDecoder | None = None,
    ) -> None:
        self.parse, self.stage, self.clock, self.ids, self.key = parse, stage, clock, ids, key
        self.global_window, self.schemas = global_window, schemas
        self.counts = BundleCounters(
            {
                "ok": Metrics.counter(NAMESPACE, f"{stage}_ok"),
                "bad": Metrics.counter(NAMESPACE, f"{stage}_dead_letter"),
            }
        )
        self.cpu = StageCpu(stage)

    def setup(self) -> None:
        self.field_counters: dict[str, Any] = {}
        self.unknown_seen = 0
        self.pseudonymise = self.ids.on_worker() if self.ids is not None else None

    def process(self, payload: bytes | str) -> tuple[Any]:
        started = self.cpu.start()
        out = self._parse(payload)
        self.cpu.stop(started)
        return (out,)

    def finish_bundle(self) -> None:
        self.counts.report()
        self.cpu.report()

    def _parse(self, payload: Any) -> Any:
        attributes, fields = None, payload
        try:
            if self.schemas is not None:
                payload, attributes = payload.data, payload.attributes
                fields = self.schemas(payload, attributes)
            record = self.parse(fields, self.clock(), unknown=self._unknown)
        except ValueError as exc:  # the schema raises ValueError (UTF-8 and JSON errors too)
            self.counts.add("bad")
            letter = dead_letter(payload, str(exc), self.stage, self.clock, attributes)
            return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        self.counts.add("ok")
        if self.pseudonymise is not None:
            record = self.pseudonymise(record)
        event_ns = getattr(record, "label_time_ns", record.time_ns)
        out = record if self.key is None else (self.key(record), record)
        stamp = Timestamp(micros=event_ns // 1_000)
        if self.global_window:
            return WindowedValue(out, stamp, _GLOBAL_WINDOW)
        return TimestampedValue(out, stamp)

    def _unknown(self, names: list[str]) -> None:
        """Count each unknown field by name; log a field's first sighting, then a sample."""
        self.unknown_seen += 1
        for name in names:
            counter = self.field_counters.get(name)
            if counter is None:
                key = _metric_name(name)
                if len(self.field_counters) >= MAX_FIELD_COUNTERS:
                    key = "other"
                else:
                    log.info(
                        "%s: ignoring field %r this wire version does not know", self.stage, name
                    )
                counter = Metrics.counter(NAMESPACE, f"{self.stage}_unknown_field_{key}")
                self.field_counters[name] = counter
            counter.inc()
        if self.unknown_seen % LOG_EVERY == 0:
            log.info("%s: %d messages with unknown fields so far (e.g. %s)", self.stage,
                     self.unknown_seen, names)  # fmt: skip


def _metric_name(field: str) -> str:
    """A field name as a metric name part: letters, digits and ``_``, at most 64 characters."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in field)[:64] or "_"


class ParseAndValidate(beam.PTransform):
    """Payloads -> typed records (main output, stamped with their event time) and dead letters
    (tag ``dead_letter``).

    ``parse`` is :func:`streaming.schema.parse_transaction` or ``parse_label`` (with the job's
    :class:`~streaming.schema.WireContract` bound); ``stage`` names the stage in dead letters
    and in the counters ``<stage>_ok``, ``<stage>_dead_letter`` and
    ``<stage>_unknown_field_<name>`` (fields ignored by the tolerant contract).

    ``ids``: the records leave with pseudonymised ids; ``key``: as ``(key(record), record)``
    (an ``int`` key), the ids pseudonymised first. Both are done in this step: a step of its
    own would cost the runner once more per element. ``schemas``: the input is
    ``PubsubMessage``s, decoded by their Pub/Sub schema first (:mod:`streaming.pubsub_schemas`);
    their dead letters carry the message's attributes.
    """

    def __init__(
        self,
        parse: Parse,
        stage: str,
        clock: Clock = time.time,
        ids: PseudonymiseIds | None = None,
        key: Callable[[Any], int] | None = None,
        schemas: SchemaDecoder | None = None,
    ) -> None:
        super().__init__()
        self.parse, self.stage, self.clock, self.ids, self.key = parse, stage, clock, ids, key
        self.schemas = schemas

    def expand(self, payloads):
        in_global = isinstance(payloads.windowing.windowfn, GlobalWindows)
        parse = beam.ParDo(
            _Parse(self.parse, self.stage, self.clock, self.ids, self.key, in_global, self.schemas)
        )
        if self.key is not None:
            parse = parse.with_output_types(KV[int, Any])
        return payloads | "Parse" >> parse.with_outputs(DEAD_LETTER, main="records")
