"""``EnrichFromFeatureStore``: the batch features of each transaction, looked up in the store.

A spec's lookups (a card's 90-day profile, a terminal's compromise score: ``features.batch``)
are computed once a day by the batch job, as of midnight, and materialized into the online
store. This stage sets ``Transaction.lookups`` (the ``spec.lookup_names`` values) of each
transaction of the event stream, before the entity states (labels pass through), and the row
assembled after the states carries them (:func:`~streaming.job.entity_state.assemble`). It
sits before the keyed stages because there its bundles are whole Pub/Sub pulls: after a keyed
stage a runner may hand on one key's events at a time.

* **batched**: a bundle's events are held until the bundle ends (or ``max_batch`` events), in
  order, and the cards and terminals not in the cache are read in one round trip
  (:class:`LookupReader`);
* **cached per worker process, by materialization**: an entity's values are kept with the
  as-of midnight of the snapshot they come from. A transaction on that day (or earlier: a late
  one) uses them; one on a later day reads the entity again, once. The first transaction of a
  new day starts a background refresh of every cached entity from the new materialization
  (``refresh_chunk`` ids a read), so at steady state a day costs a few bulk reads plus the
  entities the worker has never seen. When the store has nothing newer yet (the daily job has
  not run), the older values are used, within ``LOOKUP_TTL``, and the entity is read again
  after ``recheck_s`` seconds of processing time;
* **defaults** where the store has no live row (an entity the batch job has not seen, or older
  than ``LOOKUP_TTL`` at the transaction's time), counted per entity;
* transient store errors are retried by the online store within its budget
  (``operation_timeout_s``); past it the bundle fails and the runner retries it.

A transaction at ``t`` thus gets the snapshot of ``t``'s midnight, as
:func:`features.batch.point_in_time` gives the training set, when the daily materialization has
run before ``t``'s day starts. The deviations from the stored profile are computed here, with
:func:`features.batch.complete`, the function the training join uses.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from features.batch import LOOKUP_TTL, complete, defaults, lookup_entities, midnight
from features.spec import FeatureSpec, to_ns
from streaming.job.common import NAMESPACE, TOTALS, Clock, StageCpu
from streaming.job.entity_state import entity_id
from streaming.schema import Label, Transaction
from streaming.store.lookup import LookupReader, Scanned

_TTL_NS = to_ns(LOOKUP_TTL)
DEFAULT_RECHECK_S = 300.0
DEFAULT_MAX_BATCH = 2_048
DEFAULT_CACHE_ENTRIES = 500_000
DEFAULT_REFRESH_CHUNK = 5_000
log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Cached:
    as_of_ns: int
    """The snapshot's as-of midnight (0: the store had no row)."""
    values: np.ndarray
    valid_day: int
    """The latest transaction day (midnight, ns) these values serve."""
    recheck_at: float
    """Processing time after which a transaction of ``valid_day`` reads the entity again
    (``inf``: the snapshot of ``valid_day`` itself, never re-read that day)."""


_ABSENT = _Cached(0, np.empty(0), 0, float("inf"))
"""What a complete cache answers for an id the store has no row for (the defaults apply)."""


class LookupCache:
    """A worker's cached batch-feature rows of one entity, keyed by id (see the module doc).

    ``max_entries`` bounds the memory: past it the cache is emptied (a day's worth of reads is
    the cost, once)."""

    def __init__(self, recheck_s: float, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.recheck_s, self.max_entries = recheck_s, max_entries
        self.entries: dict[int, _Cached] = {}
        self.complete_day = 0
        """A day whose materialization the cache holds whole (a complete scan): an id it lacks
        has no row in the store."""

    def preload(self, day: int, scanned: Scanned, now: float) -> bool:
        """Keep every row of a scan made for transactions of ``day``; True (and the cache is
        complete for ``day``) when the scan is whole and holds ``day``'s materialization."""
        complete = (
            not scanned.truncated
            and len(scanned.ids) > 0
            and int(scanned.as_of_ns.max()) >= day
            and len(scanned.ids) <= self.max_entries
        )
        if len(self.entries) + len(scanned.ids) > self.max_entries:
            self.entries.clear()
        rows = zip(scanned.ids.tolist(), scanned.as_of_ns.tolist(), scanned.values, strict=True)
        for key, as_of, values in rows:
            self.put(key, day, as_of, values, now, final=complete)
        if complete:
            self.complete_day = day
        return complete

    def get(self, key: int, day: int, now: float) -> _Cached | None:
        """The cached row usable for a transaction of ``day`` at processing time ``now``."""
        entry = self.entries.get(key)
        if entry is None and day == self.complete_day:
            return _ABSENT  # the whole view is cached for that day: the store has no row
        if (
            entry is None
            or day > entry.valid_day
            or (day == entry.valid_day and now >= entry.recheck_at)
        ):
            return None
        return entry

    def keys_behind(self, day: int) -> list[int]:
        """The ids whose cached values serve days before ``day`` (a new day's refresh)."""
        return [key for key, entry in list(self.entries.items()) if entry.valid_day < day]

    def put(
        self, key: int, day: int, as_of: int, values: np.ndarray, now: float, final: bool = False
    ) -> _Cached:
        """Keep what the store answered for a transaction of ``day`` (``final``: it is the
        store's row once ``day``'s materialization is in, whatever its own as-of day)."""
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        recheck = float("inf") if final or as_of >= day else now + self.recheck_s
        entry = self.entries[key] = _Cached(as_of, values, max(day, as_of), recheck)
        return entry


@dataclass
class _WorkerCache:
    """A process's caches of one stage (every DoFn instance of it shares them: a runner may
    build one per bundle), the newest transaction day seen, and the reads of the background
    refresh not yet counted in Beam metrics (which only a DoFn call may update)."""

    caches: dict[str, LookupCache]
    day: int = 0
    busy: bool = False
    """A background scan or refresh is running."""
    next_scan_at: float = 0.0
    """Processing time before which an incomplete scan is not retried."""
    can_scan: bool = True
    uncounted_requests: int = 0
    uncounted_rows: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_WORKER_CACHES: dict[str, _WorkerCache] = {}
_WORKER_CACHES_LOCK = threading.Lock()


def _worker_cache(name: str, entities: list[str], recheck_s: float) -> _WorkerCache:
    with _WORKER_CACHES_LOCK:
        shared = _WORKER_CACHES.get(name)
        if shared is None:
            caches = {e: LookupCache(recheck_s) for e in entities}
            shared = _WORKER_CACHES[name] = _WorkerCache(caches)
        return shared


class _EnrichFn(beam.DoFn):
    def __init__(
        self,
        spec: FeatureSpec,
        open_reader: Callable[[], LookupReader],
        clock: Clock,
        recheck_s: float,
        max_batch: int,
        cache_name: str,
        refresh_chunk: int,
    ) -> None:
        self.spec, self.open_reader, self.clock = spec, open_reader, clock
        self.recheck_s, self.max_batch = recheck_s, max_batch
        self.cache_name, self.refresh_chunk = cache_name, refresh_chunk
        self.entities = lookup_entities(spec)
        self.requests = Metrics.counter(NAMESPACE, "feature_lookups")
        self.rows_read = Metrics.counter(NAMESPACE, "feature_lookup_rows")
        self.hits = Metrics.counter(NAMESPACE, "feature_lookup_cache_hits")
        self.missing = {
            e.name: Metrics.counter(NAMESPACE, f"{e.name}_batch_features_missing")
            for e in self.entities
        }
        self.read_ms = Metrics.distribution(NAMESPACE, "feature_lookup_ms")
        self.cpu = StageCpu("lookup")

    def setup(self) -> None:
        self.reader = self.open_reader()
        names = [e.name for e in self.entities]
        self.worker = _worker_cache(self.cache_name, names, self.recheck_s)
        self.caches = self.worker.caches
        self.defaults = {e.name: defaults(self.spec, e) for e in self.entities}

    def start_bundle(self) -> None:
        self.pending: list[tuple[Transaction | Label, Any, Any]] = []

    def teardown(self) -> None:
        TOTALS.flush()

    def process(
        self,
        event: Transaction | Label,
        timestamp=beam.DoFn.TimestampParam,
        window=beam.DoFn.WindowParam,
    ) -> Iterable[WindowedValue]:
        self.pending.append((event, timestamp, window))
        if len(self.pending) >= self.max_batch:
            return self._timed_flush()
        return ()

    def finish_bundle(self) -> list[WindowedValue]:
        out = self._timed_flush()
        self.cpu.report()
        return out

    def _timed_flush(self) -> list[WindowedValue]:
        started = self.cpu.start()
        out = list(self._flush())
        self.cpu.stop(started)
        return out

    def _flush(self) -> Iterator[WindowedValue]:
        """The held events in their order, each transaction with its lookups."""
        pending, self.pending = self.pending, []
        txs = [event for event, _, _ in pending if isinstance(event, Transaction)]
        looked_up = iter(())
        if txs:
            times = np.array([tx.time_ns for tx in txs], np.int64)
            stored = self._stored(txs, times)
            amounts = np.array([tx.amount for tx in txs], np.float64)
            looked_up = iter(complete(self.spec, stored, amounts, times).tolist())
        for event, timestamp, window in pending:
            if isinstance(event, Transaction):
                event = replace(event, lookups=tuple(next(looked_up)))
            yield WindowedValue(event, timestamp, (window,))

    def _stored(self, txs: list[Transaction], times: np.ndarray) -> dict[str, np.ndarray]:
        """Each transaction's stored values per entity: from the cache, else one read for all
        misses."""
        now = self.clock()
        days = midnight(times)
        self._background(int(days.max()), now)
        ids = {e.name: [entity_id(tx, e) for tx in txs] for e in self.entities}
        entries: dict[str, list[_Cached | None]] = {}
        misses: dict[str, list[int]] = {}
        for entity in self.entities:
            cache = self.caches[entity.name]
            found = [
                cache.get(k, int(d), now)
                for k, d in zip(ids[entity.name], days.tolist(), strict=True)
            ]
            entries[entity.name] = found
            wanted = {k for k, e in zip(ids[entity.name], found, strict=True) if e is None}
            misses[entity.name] = sorted(wanted)
        n_missing = sum(len(m) for m in misses.values())
        if n_missing:
            self._read(misses, ids, days, entries, now)
            self.requests.inc()
            self.rows_read.inc(n_missing)
            TOTALS.add("feature_lookups")
            TOTALS.add("feature_lookup_rows", n_missing)
        self.hits.inc(len(txs) * len(self.entities) - n_missing)
        with self.worker.lock:
            requests, rows = self.worker.uncounted_requests, self.worker.uncounted_rows
            self.worker.uncounted_requests = self.worker.uncounted_rows = 0
        if requests:
            self.requests.inc(requests)
            self.rows_read.inc(rows)
        out = {}
        for entity in self.entities:
            values = np.empty((len(txs), len(self.defaults[entity.name])))
            missing = 0
            for i, (entry, t) in enumerate(zip(entries[entity.name], times.tolist(), strict=True)):
                if entry is None or entry.as_of_ns == 0 or t - entry.as_of_ns > _TTL_NS:
                    values[i] = self.defaults[entity.name]
                    missing += 1
                else:
                    values[i] = entry.values
            if missing:
                self.missing[entity.name].inc(missing)
            out[entity.name] = values
        return out

    def _background(self, day: int, now: float) -> None:
        """Keep the worker's cache whole for the newest transaction day, in a background
        thread: a scan of every batch view (up to the cache's size) when none is complete for
        that day (the worker's first transactions, a new day, or a retry ``recheck_s`` after a
        scan that found the day's materialization missing); with a store that cannot be
        scanned, a refresh of the cached ids on a new day, ``refresh_chunk`` ids a read.
        Meanwhile misses are read as usual."""
        worker = self.worker
        with worker.lock:
            previous, worker.day = worker.day, max(worker.day, day)
            complete = all(c.complete_day >= worker.day for c in self.caches.values())
            if worker.busy or complete or (not worker.can_scan and worker.day <= previous):
                return
            if worker.can_scan and now < worker.next_scan_at:
                return
            worker.busy = True
            day = worker.day
        if worker.can_scan:
            target, args = self._scan, (day,)
        else:
            keys = {name: cache.keys_behind(day) for name, cache in self.caches.items()}
            target, args = self._refresh, (keys, day)
        threading.Thread(target=target, args=args, name="lookup-refresh", daemon=True).start()

    def _scan(self, day: int) -> None:
        worker = self.worker
        try:
            limit = min(c.max_entries for c in self.caches.values())
            scanned = self.reader.scan(limit)
            now = self.clock()
            if scanned is None:
                with worker.lock:
                    worker.can_scan = False
                return
            complete = [self.caches[n].preload(day, rows, now) for n, rows in scanned.items()]
            self._count(len(scanned), sum(len(r.ids) for r in scanned.values()))
            if not all(complete):
                with worker.lock:
                    worker.next_scan_at = now + self.recheck_s
        except Exception:  # misses are read one bundle at a time instead
            log.warning("scanning the batch views into the lookup cache failed", exc_info=True)
            with worker.lock:
                worker.next_scan_at = self.clock() + self.recheck_s
        finally:
            with worker.lock:
                worker.busy = False

    def _refresh(self, keys: dict[str, list[int]], day: int) -> None:
        step = self.refresh_chunk
        longest = max((len(k) for k in keys.values()), default=0)
        try:
            for start in range(0, longest, step):
                chunk = {name: k[start : start + step] for name, k in keys.items()}
                answers = self.reader.read({n: np.array(k, np.int64) for n, k in chunk.items()})
                now = self.clock()
                for name, answer in answers.items():
                    cache = self.caches[name]
                    for i, key in enumerate(chunk[name]):
                        as_of = int(answer.as_of_ns[i]) if answer.found[i] else 0
                        cache.put(key, day, as_of, answer.values[i], now)
                self._count(1, sum(len(k) for k in chunk.values()))
        except Exception:  # the day's misses are read one bundle at a time instead
            log.warning("refreshing the lookup cache for a new day failed", exc_info=True)
        finally:
            with self.worker.lock:
                self.worker.busy = False

    def _count(self, requests: int, rows: int) -> None:
        """Reads made off the DoFn's calls: Beam metrics get them at the next bundle."""
        with self.worker.lock:
            self.worker.uncounted_requests += requests
            self.worker.uncounted_rows += rows
        TOTALS.add("feature_lookups", requests)
        TOTALS.add("feature_lookup_rows", rows)
        TOTALS.flush()  # now: the job may go idle after a background read

    def _read(
        self,
        misses: dict[str, list[int]],
        ids: dict[str, list[int]],
        days: np.ndarray,
        entries: dict[str, list[_Cached | None]],
        now: float,
    ) -> None:
        """One round trip for every missed id; fills the cache and ``entries``."""
        start = time.perf_counter()
        answers = self.reader.read(
            {name: np.array(keys, np.int64) for name, keys in misses.items()}
        )
        self.read_ms.update(int((time.perf_counter() - start) * 1000))
        for entity in self.entities:
            answer, cache = answers[entity.name], self.caches[entity.name]
            latest_day = {}
            for key, day in zip(ids[entity.name], days.tolist(), strict=True):
                latest_day[key] = max(latest_day.get(key, day), day)
            fresh = {}
            for i, key in enumerate(misses[entity.name]):
                as_of = int(answer.as_of_ns[i]) if answer.found[i] else 0
                fresh[key] = cache.put(key, latest_day[key], as_of, answer.values[i], now)
            row_entries = entries[entity.name]
            for i, key in enumerate(ids[entity.name]):
                if row_entries[i] is None:
                    row_entries[i] = fresh[key]


class EnrichFromFeatureStore(beam.PTransform):
    """Events -> the same events in the same order, each :class:`Transaction` with its
    ``lookups`` set (``spec.lookup_names``), read through ``open_reader()`` (built on the
    worker: readers are not picklable). Ids must be as the store keys them (pseudonymised
    first). Counters: ``feature_lookups`` (store round trips),
    ``feature_lookup_rows``, ``feature_lookup_cache_hits`` and ``<entity>_batch_features_missing``
    (rows given the defaults)."""

    def __init__(
        self,
        spec: FeatureSpec,
        open_reader: Callable[[], LookupReader],
        clock: Clock = time.time,
        recheck_s: float = DEFAULT_RECHECK_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        refresh_chunk: int = DEFAULT_REFRESH_CHUNK,
    ) -> None:
        super().__init__()
        if not spec.lookups:
            raise ValueError(f"preset {spec.name!r} has no batch features to look up")
        self.spec, self.open_reader, self.clock = spec, open_reader, clock
        self.recheck_s, self.max_batch, self.refresh_chunk = recheck_s, max_batch, refresh_chunk
        self.cache_name = f"{spec.name}-{uuid.uuid4().hex}"  # one cache per process and stage

    def expand(self, events):
        return events | "Lookup" >> beam.ParDo(
            _EnrichFn(
                self.spec,
                self.open_reader,
                self.clock,
                self.recheck_s,
                self.max_batch,
                self.cache_name,
                self.refresh_chunk,
            )
        )
