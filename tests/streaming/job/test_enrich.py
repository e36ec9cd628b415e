"""EnrichFromFeatureStore: batch features from the store equal the training join; the worker
cache reads an entity once per materialization; missing entities get the defaults."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pandas as pd
import pytest
from apache_beam import Create, Map
from apache_beam.metrics import MetricsFilter

from features import batch, presets
from features.synthetic import transactions
from features.table import validate
from streaming.job.enrich import EnrichFromFeatureStore, LookupCache, _EnrichFn
from streaming.schema import Label, Transaction
from streaming.store.lookup import MemoryLookupReader
from tests.streaming.job.stages import batch_pipeline, to_labels, to_transactions

SPEC = presets.get("enriched")
DAY_NS = batch.DAY_NS
_READERS: dict[str, MemoryLookupReader] = {}
_OUTPUTS: dict[str, list] = {}


class ReadOnlyReader(MemoryLookupReader):
    """A store that cannot be scanned (as Feast's other online stores): ids are read only."""

    def scan(self, limit: int) -> None:
        return None


def _reader(name: str) -> MemoryLookupReader:
    """The test's reader by name (the runner unpickles the factory in this process)."""
    return _READERS[name]


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return validate(
        transactions(n=2_000, customers=40, terminals=30, days=40, fraud_rate=0.05), SPEC
    )


def _collect(event, name: str) -> None:
    _OUTPUTS[name].append(event)


def _run(events: list, reader: MemoryLookupReader, name: str, clock=lambda: 0.0):
    """The stage's output events and counters (collected in this process, as the reader is)."""
    _READERS[name], _OUTPUTS[name] = reader, []
    try:
        p = batch_pipeline()
        out = (
            p
            | Create(events, reshuffle=False)
            | EnrichFromFeatureStore(SPEC, functools.partial(_reader, name), clock)
        )
        _ = out | Map(_collect, name)
        result = p.run()
        result.wait_until_finish()
        got = _OUTPUTS[name]
    finally:
        del _READERS[name], _OUTPUTS[name]
    counters = {
        c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]
    }
    return got, counters


def test_a_day_of_transactions_gets_the_training_joins_values(history, request):
    """The store holds the snapshot of day D (as after that midnight's materialization): every
    transaction of day D gets exactly its training-set lookups (the point-in-time join); labels
    pass through untouched, in order; an entity without a row gets the defaults."""
    times = history["TX_DATETIME"]
    day = times.dt.normalize().iloc[-1] - pd.Timedelta(days=1)
    tables = batch.snapshots(history, SPEC)
    as_of = {name: t[t["event_timestamp"] == day] for name, t in tables.items()}
    today = history[(times >= day) & (times < day + pd.Timedelta(days=1))]
    expected = batch.lookup_columns(history, SPEC, tables)[today.index]
    events = [
        e for pair in zip(to_transactions(today), to_labels(today), strict=True) for e in pair
    ]
    got, counters = _run(events, ReadOnlyReader(SPEC, as_of), request.node.nodeid)
    assert [type(e) for e in got] == [type(e) for e in events]  # order kept (one bundle)
    labels = [e for e in got if isinstance(e, Label)]
    assert labels == [e for e in events if isinstance(e, Label)]
    txs = {e.transaction_id: e for e in got if isinstance(e, Transaction)}
    assert sorted(txs) == sorted(today["TRANSACTION_ID"].tolist())
    for tx_id, want in zip(today["TRANSACTION_ID"], expected, strict=True):
        np.testing.assert_array_equal(np.array(txs[tx_id].lookups), want)
    assert counters["feature_lookups"] >= 1
    # one row read per distinct entity of the day, at most (the cache serves repeats)
    distinct = today["CUSTOMER_ID"].nunique() + today["TERMINAL_ID"].nunique()
    assert counters["feature_lookup_rows"] <= distinct
    known = set(as_of["customer"]["CUSTOMER_ID"])
    unknown_rows = int((~today["CUSTOMER_ID"].isin(known)).sum())
    assert counters.get("customer_batch_features_missing", 0) == unknown_rows


def test_missing_entities_get_the_defaults_and_are_counted(history, request):
    today = history.tail(5)
    empty = {name: t.iloc[:0] for name, t in batch.snapshots(history.head(50), SPEC).items()}
    got, counters = _run(to_transactions(today), ReadOnlyReader(SPEC, empty),
                         request.node.nodeid)  # fmt: skip
    stored = {e.name: np.tile(batch.defaults(SPEC, e), (5, 1)) for e in batch.lookup_entities(SPEC)}
    want = batch.complete(
        SPEC,
        stored,
        today["TX_AMOUNT"].to_numpy(),
        today["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64),
    )
    by_id = {tx.transaction_id: tx.lookups for tx in got}
    for tx_id, values in zip(today["TRANSACTION_ID"], want, strict=True):
        np.testing.assert_array_equal(np.array(by_id[tx_id]), values)
    assert counters["customer_batch_features_missing"] == 5
    assert counters["terminal_batch_features_missing"] == 5


class TestLookupCache:
    D = 100 * DAY_NS

    def test_the_snapshot_of_the_day_serves_the_whole_day_and_earlier_days(self):
        cache = LookupCache(recheck_s=60)
        cache.put(7, self.D, self.D, np.ones(2), now=0.0)
        assert cache.get(7, self.D, now=1e9) is not None  # never re-read that day
        assert cache.get(7, self.D - DAY_NS, now=0.0) is not None  # a late transaction
        assert cache.get(7, self.D + DAY_NS, now=0.0) is None  # the next day: read again

    def test_an_older_snapshot_is_rechecked_after_recheck_s(self):
        """The daily job has not materialized day D yet: yesterday's values serve, and the
        entity is read again once ``recheck_s`` has passed."""
        cache = LookupCache(recheck_s=60)
        cache.put(7, self.D, self.D - DAY_NS, np.ones(2), now=1_000.0)
        assert cache.get(7, self.D, now=1_059.0) is not None
        assert cache.get(7, self.D, now=1_060.0) is None

    def test_a_missing_entity_is_rechecked_too(self):
        cache = LookupCache(recheck_s=60)
        cache.put(7, self.D, 0, np.full(2, np.nan), now=0.0)
        assert cache.get(7, self.D, now=30.0) is not None
        assert cache.get(7, self.D, now=60.0) is None

    def test_memory_is_bounded(self):
        cache = LookupCache(recheck_s=60, max_entries=3)
        for key in range(4):
            cache.put(key, self.D, self.D, np.ones(2), now=0.0)
        assert len(cache.entries) <= 3 and cache.get(3, self.D, now=0.0) is not None


def test_a_preset_with_lookups_needs_a_reader():
    from streaming.job.pipeline import ScoreTransactions

    with pytest.raises(ValueError, match="looks up batch features"):
        ScoreTransactions(SPEC, handler=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no batch features"):
        EnrichFromFeatureStore(presets.DEFAULT, lambda: None)  # type: ignore[arg-type,return-value]


def test_process_totals_are_logged_and_parsed_back(caplog):
    from streaming.job.common import ProcessTotals, parse_totals

    totals = ProcessTotals(every_s=3600)
    with caplog.at_level("INFO", logger="streaming.job.common"):
        totals.add("feature_lookups")  # the first add is due: logged
        totals.add("feature_lookups", 2)  # within every_s: not yet
        assert parse_totals(caplog.text) == {"feature_lookups": 1}
        totals.flush()
        totals.flush()  # unchanged: no second line
    assert parse_totals(caplog.text) == {"feature_lookups": 3}
    assert caplog.text.count("fraudstream totals:") == 2


def _flush(fn, events) -> list:
    """One bundle through the stage's DoFn, outside a pipeline: the output events."""
    fn.start_bundle()
    out = [wv.value for e in events for wv in fn.process(e, 0, None)]
    return out + [wv.value for wv in fn.finish_bundle()]


def _join_background() -> None:
    for thread in [t for t in threading.enumerate() if t.name == "lookup-refresh"]:
        thread.join(timeout=30)


def _two_days(history):
    times = history["TX_DATETIME"]
    last = times.dt.normalize().iloc[-1]
    d0, d1 = last - pd.Timedelta(days=2), last - pd.Timedelta(days=1)
    tables = batch.snapshots(history, SPEC)
    first_day = history[(times >= d0) & (times < d1)]
    next_day = history[(times >= d1) & (times < last)]
    as_of = {d: {n: t[t["event_timestamp"] == d] for n, t in tables.items()} for d in (d0, d1)}
    return tables, first_day, next_day, as_of[d0], as_of[d1]


def _enrich_fn(reader, name: str):
    fn = _EnrichFn(SPEC, lambda: reader, lambda: 0.0, 300.0, 10_000, name, refresh_chunk=7)
    fn.setup()
    return fn


def test_a_worker_scans_each_days_materialization_and_then_reads_nothing(history):
    """A scannable store (our Bigtable store): the worker's first transaction starts a scan of
    the batch views; once whole for the day, every transaction of the day is served from the
    cache, an id without a row included (defaults). The first transaction of the next day
    scans that day's materialization."""
    tables, first_day, next_day, day0, day1 = _two_days(history)
    fn = _enrich_fn(MemoryLookupReader(SPEC, day0), f"scan-{id(history)}")
    txs = to_transactions(first_day)
    _flush(fn, txs[:1])
    _join_background()
    scanned = fn.reader.requests  # the first transaction's own read, unless the scan was first
    assert scanned in (2, 3)  # a scan is one read a view (customer, terminal)
    out = _flush(fn, txs[1:])
    assert fn.reader.requests == scanned  # the rest of the day: all from the cache
    want = batch.lookup_columns(history, SPEC, tables)
    for tx, values in zip(out, want[first_day.index[1:]], strict=True):
        np.testing.assert_array_equal(np.array(tx.lookups), values)
    fn.reader = MemoryLookupReader(SPEC, day1)  # the daily job materialized the next day
    txs = to_transactions(next_day)
    _flush(fn, txs[:1])
    _join_background()
    before = fn.reader.requests
    assert before in (2, 3)
    out = _flush(fn, txs[1:])
    assert fn.reader.requests == before
    for tx, values in zip(out, want[next_day.index[1:]], strict=True):
        np.testing.assert_array_equal(np.array(tx.lookups), values)


def test_a_scan_before_the_days_materialization_is_retried_later(history):
    """The daily job is late: the scan finds yesterday's rows only, so the cache is not whole
    for the day; misses are read and the scan is retried after ``recheck_s``."""
    _, _, next_day, day0, _ = _two_days(history)
    clock = iter(range(0, 10_000, 100))  # processing time: 100 s a call
    fn = _EnrichFn(SPEC, lambda: MemoryLookupReader(SPEC, day0), lambda: float(next(clock)),
                   300.0, 10_000, f"late-{id(history)}", refresh_chunk=7)  # fmt: skip
    fn.setup()
    _flush(fn, to_transactions(next_day.iloc[:1]))
    _join_background()
    assert all(c.complete_day == 0 for c in fn.caches.values())
    assert fn.worker.next_scan_at > 0 and not fn.worker.busy
    requests = fn.reader.requests
    fn.worker.next_scan_at = 0.0  # recheck_s has passed
    _flush(fn, to_transactions(next_day.iloc[1:2]))
    _join_background()
    assert fn.reader.requests >= requests + 2  # scanned again (one read a view)


def test_without_a_scannable_store_a_new_day_refreshes_the_cached_ids_in_chunks(history):
    """Day D's transactions fill the worker's cache; the first transaction of D + 1 starts one
    background refresh of every cached entity from D + 1's materialization, after which D + 1's
    transactions of those entities read nothing and get D + 1's values."""
    tables, first_day, next_day, day0, day1 = _two_days(history)
    fn = _enrich_fn(ReadOnlyReader(SPEC, day0), f"refresh-{id(history)}")
    _flush(fn, to_transactions(first_day))
    _join_background()
    assert fn.reader.requests == 1
    fn.reader = ReadOnlyReader(SPEC, day1)  # the daily job materialized D + 1
    txs = to_transactions(next_day)
    _flush(fn, txs[:1])
    _join_background()
    cached = len(first_day["CUSTOMER_ID"].unique()), len(first_day["TERMINAL_ID"].unique())
    bulk = -(-max(cached) // 7)  # chunks of 7 ids of each kind
    before = fn.reader.requests
    # the refresh, and the first transaction's own read unless the refresh got there first
    assert bulk <= before <= bulk + 1
    out = _flush(fn, txs[1:])
    seen = set(first_day["CUSTOMER_ID"]) | set(next_day["CUSTOMER_ID"].iloc[:1])
    terminals = set(first_day["TERMINAL_ID"]) | set(next_day["TERMINAL_ID"].iloc[:1])
    rest = next_day.iloc[1:]
    new = (~rest["CUSTOMER_ID"].isin(seen)) | (~rest["TERMINAL_ID"].isin(terminals))
    assert fn.reader.requests == before + (1 if new.any() else 0)  # only never-seen entities
    want = batch.lookup_columns(history, SPEC, tables)[rest.index]
    for tx, values in zip(out, want, strict=True):
        np.testing.assert_array_equal(np.array(tx.lookups), values)
