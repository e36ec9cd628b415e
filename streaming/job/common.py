"""What every stage of the job shares: the metrics namespace, the processing-time clock, and
event-time stamps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

NAMESPACE = "fraudstream"
log = logging.getLogger(__name__)


Clock = Callable[[], float]


def at_event_time(scored: Any) -> TimestampedValue:
    """``scored`` (anything with a ``tx``) stamped with its transaction's event time.

    RunInference batches elements and emits them at the end of the global window, so the
    stages that window scored rows by event time (the scored files, monitoring) stamp them
    again first."""
    return TimestampedValue(scored, Timestamp(micros=scored.tx.time_ns // 1_000))


class ProcessTotals:
    """Running totals of this worker process, logged as one ``fraudstream totals:`` line at
    most every ``every_s`` seconds while they change (and by :meth:`flush`).

    Beam counters are the job's metrics on Dataflow; the local streaming runner reports a
    counter's first bundle only, so the log line is how a local run (``fraudstream demo``)
    learns, for example, how many store reads the lookup stage made. Thread-safe.
    """

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._logged_at = 0.0
        self._dirty = False

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
            self._dirty = True
            due = time.monotonic() - self._logged_at >= self.every_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Log the totals now if they changed since the last line."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty, self._logged_at = False, time.monotonic()
            line = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        log.info("fraudstream totals: %s", line)


TOTALS = ProcessTotals()
"""This process's totals (one per worker process, shared by every stage)."""


def parse_totals(text: str) -> dict[str, int]:
    """The last ``fraudstream totals:`` line of a log, as counts (empty if there is none)."""
    for line in reversed(text.splitlines()):
        _, sep, rest = line.partition("fraudstream totals: ")
        if sep:
            return {k: int(v) for k, v in (item.split("=", 1) for item in rest.split())}
    return {}
