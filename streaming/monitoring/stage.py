"""``MonitorWindows``: the job's per event-time window monitoring records."""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from streaming.job.common import Clock, StampedGroups, event_micros
from streaming.schema import ScoredPart


class _MonitorCombine(beam.CombineFn):
    """Scored parts of one window -> :class:`~streaming.monitoring.stats.WindowCounts` (additive
    bin counts of every model input and the score, alerts, a latency histogram). ``features``:
    the parts' feature columns (the reference's inputs are taken from them by name).

    Scored rows (:func:`~streaming.schema.scored_record` dicts) are counted too: what a job
    version that windowed rows instead of parts leaves in flight when it is updated in place."""

    BATCH = 1024

    def __init__(self, reference: Any, features: list[str]) -> None:
        self.reference = reference
        self.columns = [features.index(name) for name in reference.names]

    def create_accumulator(self) -> tuple[list, Any]:
        from streaming.monitoring.stats import WindowCounts

        return [], WindowCounts.empty(self.reference)

    def add_input(self, acc: tuple[list, Any], part: ScoredPart | dict) -> tuple[list, Any]:
        from streaming.monitoring.stats import WindowCounts

        rows, counts = acc
        if isinstance(part, ScoredPart):
            batch = (part.features[:, self.columns], part.scores, part.alert, part.latency_ms)
            return rows, counts + WindowCounts.of(self.reference, *batch)
        rows.append(part)
        if len(rows) >= self.BATCH:
            return [], counts + WindowCounts.of_rows(self.reference, rows)
        return rows, counts

    def merge_accumulators(self, accs: Any) -> tuple[list, Any]:
        from streaming.monitoring.stats import WindowCounts

        rows, total = [], WindowCounts.empty(self.reference)
        for part_rows, counts in accs:
            rows.extend(part_rows)
            total = total + counts
        return rows, total

    def extract_output(self, acc: tuple[list, Any]) -> Any:
        from streaming.monitoring.stats import WindowCounts

        rows, counts = acc
        return counts + WindowCounts.of_rows(self.reference, rows)


class _WindowRecord(beam.DoFn):
    def __init__(self, reference: Any, source: str) -> None:
        self.reference, self.source = reference, source

    def process(self, counts: Any, window=beam.DoFn.WindowParam):
        from streaming.monitoring.stats import window_record

        yield window_record(
            self.reference,
            counts,
            window.start.to_utc_datetime(),
            window.end.to_utc_datetime(),
            self.source,
        )


class _ToWindowParts(beam.DoFn):
    """Lists of scored transactions -> one :class:`ScoredPart` per monitoring window their event
    times fall in, stamped with the earliest of its times (a window's parts, not its rows, then
    cost the runner per element)."""

    def __init__(self, window_s: int, clock: Clock) -> None:
        self.window_us, self.clock = window_s * 1_000_000, clock

    def process(self, batch: list[Any]):
        now = self.clock()
        windows = StampedGroups()  # stamped in µs: a Beam Timestamp a row costs more than the rest
        for scored in batch:
            micros = event_micros(scored)
            windows.add(micros // self.window_us, micros, scored)
        for _, micros, group in windows.take():
            yield TimestampedValue(ScoredPart.of(group, now), Timestamp(micros=micros))


class MonitorWindows(beam.PTransform):
    """Lists of scored transactions -> one monitoring record per event-time window: events, alerts,
    alert rate, latency p50/p99, the PSI of every model input and of the score against the
    model's training reference (:mod:`training.drift`; thresholds 0.1 and 0.25), the largest.

    A window's record is emitted when the watermark passes its end, then again, refined, every
    ``refresh_s`` of processing time while late rows arrive (accumulating panes, up to
    ``allowed_lateness_days``): a consumer keeps the newest record per ``window_start``. Local
    replays of old data are all late (the DirectRunner's watermark is the wall clock), so they
    are reported through these refinements.
    """

    def __init__(
        self,
        features: list[str],
        reference: Any,
        window_s: int = 3600,
        refresh_s: int = 30,
        allowed_lateness_days: int = 3650,
        source: str = "",
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        self.features, self.reference, self.window_s = features, reference, window_s
        self.refresh_s, self.lateness_days = refresh_s, allowed_lateness_days
        self.source, self.clock = source, clock

    def expand(self, scored):
        from apache_beam.transforms import trigger, window

        late = trigger.AfterProcessingTime(self.refresh_s)
        return (
            scored
            | "ToRows" >> beam.ParDo(_ToWindowParts(self.window_s, self.clock))
            | "EventTimeWindows"
            >> beam.WindowInto(
                window.FixedWindows(self.window_s),
                trigger=trigger.AfterWatermark(late=late),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self.lateness_days * 86_400,
            )
            | "Counts"
            >> beam.CombineGlobally(
                _MonitorCombine(self.reference, self.features)
            ).without_defaults()
            | "Record" >> beam.ParDo(_WindowRecord(self.reference, self.source))
        )
