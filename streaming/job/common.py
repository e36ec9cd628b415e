"""What every stage of the job shares: the metrics namespace, the processing-time clock,
event-time stamps, and this process's running totals (counts and the CPU time of its stages)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from apache_beam.utils.timestamp import Timestamp

NAMESPACE = "fraudstream"
log = logging.getLogger(__name__)


Clock = Callable[[], float]


def event_micros(scored: Any) -> int:
    """The event time of ``scored``'s transaction (anything with a ``tx``), in microseconds: a
    plain int, cheaper to group and compare by than a Beam ``Timestamp``.

    Scored rows travel in lists stamped with the earliest of their times (or, from a batch
    runner's RunInference, at the end of the global window), so the stages that window them by
    event time (the scored files, monitoring) stamp each row again."""
    return scored.tx.time_ns // 1_000


def event_timestamp(scored: Any) -> Timestamp:
    """:func:`event_micros` as a Beam ``Timestamp``."""
    return Timestamp(micros=event_micros(scored))


class StampedGroups:
    """Items grouped by key, each group stamped with the earliest of its items' timestamps: a
    group emitted as one element at that time is never behind the watermark of any item in it.
    A stamp is anything ordered: a Beam ``Timestamp``, or its microseconds as an ``int``."""

    def __init__(self) -> None:
        self.groups: dict[Any, list] = {}  # key -> [earliest timestamp, items]

    def add(self, key: Any, stamp: Timestamp | int, item: Any) -> None:
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = [stamp, [item]]
            return
        if stamp < group[0]:
            group[0] = stamp
        group[1].append(item)

    def take(self) -> list[tuple[Any, Timestamp | int, list]]:
        """``(key, earliest timestamp, items)`` of every group; the groups start afresh."""
        groups, self.groups = self.groups, {}
        return [(key, stamp, items) for key, (stamp, items) in groups.items()]


class BundleCounters:
    """Beam counters a per-element step adds to once a bundle: a ``Counter.inc`` costs about
    1 µs on the dev VM, a dictionary add a tenth of that. The step counts with :meth:`add`
    and calls :meth:`report` in ``finish_bundle``; the counters see a bundle's counts when it
    ends."""

    def __init__(self, counters: Mapping[Any, Any]) -> None:
        self.counters = dict(counters)  # key -> Beam counter
        self.pending = dict.fromkeys(self.counters, 0)

    def add(self, key: Any, n: int = 1) -> None:
        self.pending[key] += n

    def report(self) -> None:
        """Add the counts since the last report to their counters."""
        for key, n in self.pending.items():
            if n:
                self.counters[key].inc(n)
                self.pending[key] = 0


class ProcessTotals:
    """Running totals of this worker process, logged as one ``fraudstream totals:`` line at
    most every ``every_s`` seconds while they change (and by :meth:`flush`).

    Beam counters are the job's metrics on Dataflow; the local streaming runner reports a
    counter's first bundle only, so the log line is how a local run (``fraudstream demo``, the
    benchmarks) learns, for example, how many store reads the lookup stage made or how much CPU
    time each stage took. Thread-safe.

    A *quiet* add (per-bundle figures that change all the time, such as CPU time) goes into the
    next line without calling for one: :meth:`flush` ignores it, and a daemon thread started by
    the first quiet add logs it within ``every_s`` (:meth:`tick`), so the last line is current
    ``every_s`` after the process went idle.
    """

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._logged_at = float("-inf")  # never: the first add is due, however long the clock ran
        self._dirty = False  # a (loud) add since the last line
        self._quiet = False  # a quiet add since the last line
        self._ticker: threading.Thread | None = None
        self._sources: list[Callable[[], Mapping[str, int]]] = []

    def watch(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Also log the counts ``source`` returns (read at each line; e.g. a store client's
        RPCs). A source watched already is not added twice."""
        with self._lock:
            if source not in self._sources:
                self._sources.append(source)

    def add(self, name: str, n: int = 1, quiet: bool = False) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
            if quiet:
                self._quiet = True
                if self._ticker is None:
                    self._ticker = threading.Thread(
                        target=self._tick_forever, name="fraudstream-totals", daemon=True
                    )
                    self._ticker.start()
            else:
                self._dirty = True
            due = time.monotonic() - self._logged_at >= self.every_s
        if due and not quiet:
            self.flush()

    def flush(self) -> None:
        """Log the totals now if a (loud) add changed them since the last line."""
        self._log(quiet_too=False)

    def tick(self) -> None:
        """Log the totals if any add, quiet ones included, changed them since the last line."""
        self._log(quiet_too=True)

    def _log(self, quiet_too: bool) -> None:
        with self._lock:
            if not (self._dirty or (quiet_too and self._quiet)):
                return
            self._dirty, self._quiet, self._logged_at = False, False, time.monotonic()
            counts = dict(self.counts)
            for source in self._sources:
                counts.update(source())
            line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        log.info("fraudstream totals: %s", line)

    def _tick_forever(self) -> None:
        while True:
            time.sleep(self.every_s)
            self.tick()


TOTALS = ProcessTotals()
"""This process's totals (one per worker process, shared by every stage)."""


CPU_PREFIX = "cpu_us_"
"""Totals named ``cpu_us_<stage>``: microseconds of thread CPU time spent in that stage's code."""


class StageCpu:
    """The thread CPU time of one stage's own code (what it calls included: kernels, XGBoost,
    store clients called synchronously), as the total ``cpu_us_<stage>``.

    A DoFn times its work with :meth:`start` / :meth:`stop` (``time.thread_time_ns``, about
    0.5 µs a reading on the dev VM) and calls :meth:`report` in ``finish_bundle``: one quiet
    add to :data:`TOTALS` per bundle. Beam's work inside those calls (a keyed state's read and
    write) counts with the stage; what the runner does between them (decoding, moving elements
    between steps, committing bundles, timers) is the runner's share of the process's CPU time.
    """

    def __init__(self, stage: str) -> None:
        self.name = f"{CPU_PREFIX}{stage}"
        self.ns = 0

    @staticmethod
    def start() -> int:
        return time.thread_time_ns()

    def stop(self, started: int) -> None:
        self.ns += time.thread_time_ns() - started

    def report(self) -> None:
        """Add the whole microseconds timed so far to the totals (the rest stays for later)."""
        us, self.ns = divmod(self.ns, 1000)
        if us:
            TOTALS.add(self.name, us, quiet=True)


def stage_cpu_us(totals: dict[str, int]) -> dict[str, int]:
    """The ``cpu_us_<stage>`` totals of a parsed line, by stage."""
    return {k[len(CPU_PREFIX) :]: v for k, v in totals.items() if k.startswith(CPU_PREFIX)}


def parse_totals(text: str) -> dict[str, int]:
    """The last ``fraudstream totals:`` line of a log, as counts (empty if there is none)."""
    for line in reversed(text.splitlines()):
        _, sep, rest = line.partition("fraudstream totals: ")
        if sep:
            return {k: int(v) for k, v in (item.split("=", 1) for item in rest.split())}
    return {}
