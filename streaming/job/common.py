"""What every stage of the job shares: the metrics namespace, the processing-time clock, and
event-time stamps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

NAMESPACE = "fraudstream"


Clock = Callable[[], float]


def at_event_time(scored: Any) -> TimestampedValue:
    """``scored`` (anything with a ``tx``) stamped with its transaction's event time.

    RunInference batches elements and emits them at the end of the global window, so the
    stages that window scored rows by event time (the scored files, monitoring) stamp them
    again first."""
    return TimestampedValue(scored, Timestamp(micros=scored.tx.time_ns // 1_000))
