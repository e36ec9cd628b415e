"""Semantics of the incremental path beyond in-order parity: late events, labels, state size."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.backfill import backfill
from features.incremental import KIND_LABEL, KIND_TX, Batch, EntityStore, IncrementalEngine, Status
from features.spec import CUSTOMER, TERMINAL

SPEC = presets.BASELINE
T0 = pd.Timestamp("2018-05-01").value
DAY = 86_400 * 10**9


def batch(*events: tuple) -> Batch:
    """Events as (kind, txid, day offset, customer, terminal, amount, fraud)."""
    kind, txid, day, cust, term, amount, fraud = (np.array(c) for c in zip(*events, strict=True))
    return Batch(
        kind=kind.astype(np.int64),
        transaction_id=txid.astype(np.int64),
        time_ns=(T0 + (day * DAY)).astype(np.int64),
        ids={"CUSTOMER_ID": cust.astype(np.int64), "TERMINAL_ID": term.astype(np.int64)},
        values={"TX_AMOUNT": amount.astype(np.float64), "TX_FRAUD": fraud.astype(np.float64)},
    )


def col(feats: np.ndarray, name: str) -> np.ndarray:
    return feats[:, SPEC.names.index(name)]


def test_late_event_is_seen_by_later_events_and_scored_at_its_own_time():
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(days=1))
    engine.process(batch((KIND_TX, 1, 0.0, 7, 1, 10.0, 0), (KIND_TX, 2, 0.5, 7, 1, 20.0, 0)))
    f2, s2 = engine.process(batch((KIND_TX, 3, 0.25, 7, 1, 30.0, 0)))  # late by 6 hours
    f3, s3 = engine.process(batch((KIND_TX, 4, 0.6, 7, 1, 40.0, 0)))
    assert s2[0] == Status.LATE and s3[0] == Status.OK
    # at its own time the late event sees the first one (day 0) and itself, not day 0.5
    assert col(f2, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[0] == 2
    assert col(f2, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW")[0] == pytest.approx(20.0)
    assert col(f3, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[0] == 4
    assert col(f3, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW")[0] == pytest.approx(25.0)


def test_late_events_match_the_backfill_of_the_sorted_history():
    from features.synthetic import transactions

    df = transactions(n=1_500, customers=6, terminals=5, days=20, seed=3)
    rng = np.random.default_rng(0)
    times = df["TX_DATETIME"].to_numpy().copy()
    jitter = rng.integers(0, 6 * 3_600, len(df)).astype("timedelta64[s]")
    df["TX_DATETIME"] = times - jitter  # arrival order is still TRANSACTION_ID
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(days=1))
    b = Batch(
        kind=np.zeros(len(df), np.int64),
        transaction_id=df["TRANSACTION_ID"].to_numpy(),
        time_ns=df["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64),
        ids={e.key: df[e.key].to_numpy() for e in SPEC.entities},
        values={c: df[c].to_numpy(np.float64) for c in SPEC.value_columns},
    )
    feats, status = engine.process(b)
    assert (status == Status.LATE).sum() > 100 and not (status == Status.TOO_LATE).any()
    expected = backfill(df, SPEC)[SPEC.names].to_numpy()
    # A customer feature at an event equals the backfill's once no event of that customer
    # that is older arrives after it (the backfill sees the whole sorted history).
    cols = [i for i, n in enumerate(SPEC.names) if n.startswith("CUSTOMER")]
    t, cust = b.time_ns, b.ids["CUSTOMER_ID"]
    settled = np.array(
        [not ((t[i + 1 :] <= t[i]) & (cust[i + 1 :] == cust[i])).any() for i in range(len(t))]
    )
    assert settled.sum() > 300 and (settled & (status == Status.LATE)).sum() > 50
    np.testing.assert_allclose(feats[settled][:, cols], expected[settled][:, cols], rtol=1e-9)


def test_too_late_event_is_rejected_and_changes_no_state():
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(hours=1))
    engine.process(batch((KIND_TX, 1, 3.0, 7, 1, 10.0, 0)))
    feats, status = engine.process(batch((KIND_TX, 2, 2.0, 7, 2, 99.0, 0)))
    assert status[0] == Status.TOO_LATE and np.isnan(feats[0]).all()
    # neither entity state saw it: terminal 2 holds no event, customer 7 still counts 1 event
    assert np.frombuffer(engine.export(TERMINAL, 2), np.int64)[0] == 0
    f, _ = engine.process(batch((KIND_TX, 3, 3.1, 7, 1, 20.0, 0)))
    assert col(f, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[0] == 2


def test_a_transaction_too_late_for_an_earlier_one_of_its_batch_is_rejected():
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(hours=1))
    feats, status = engine.process(
        batch((KIND_TX, 1, 3.0, 7, 1, 10.0, 0), (KIND_TX, 2, 2.0, 7, 2, 99.0, 0))
    )
    assert status.tolist() == [Status.OK, Status.TOO_LATE] and np.isnan(feats[1]).all()
    assert np.frombuffer(engine.export(TERMINAL, 2), np.int64)[0] == 0
    # late, within the hour: its day (1.99, 2.99] would hold the rejected transaction too
    f, st = engine.process(batch((KIND_TX, 3, 2.99, 7, 3, 20.0, 0)))
    assert st[0] == Status.LATE and col(f, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[0] == 1


def test_a_transaction_too_late_for_a_restored_state_is_rejected():
    source = IncrementalEngine(SPEC, max_lateness=timedelta(hours=1))
    source.process(batch((KIND_TX, 1, 3.0, 7, 1, 10.0, 0)))
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(hours=1))
    engine.load(CUSTOMER, 7, source.export(CUSTOMER, 7))  # the only state, restored
    feats, status = engine.process(batch((KIND_TX, 2, 2.0, 7, 2, 99.0, 0)))
    assert status[0] == Status.TOO_LATE and np.isnan(feats[0]).all()
    assert np.frombuffer(engine.export(TERMINAL, 2), np.int64)[0] == 0  # not applied there
    _, status = engine.process(batch((KIND_TX, 3, 2.99, 7, 3, 20.0, 0)))
    assert status[0] == Status.LATE


def test_label_counts_only_once_it_is_delay_old():
    engine = IncrementalEngine(SPEC)
    engine.process(batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 0)))
    _, st = engine.process(batch((KIND_LABEL, 1, 0.0, 1, 5, 0.0, 1)))
    assert st[0] == Status.LABEL_APPLIED
    f, _ = engine.process(batch((KIND_TX, 2, 6.9, 2, 5, 10.0, 0), (KIND_TX, 3, 7.5, 3, 5, 10.0, 0)))
    assert col(f, "TERMINAL_ID_NB_TX_1DAY_WINDOW").tolist() == [0, 1]
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW").tolist() == [0, 1]


def test_label_after_the_event_entered_the_window_is_applied_to_the_running_sums():
    engine = IncrementalEngine(SPEC)
    engine.process(batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 0), (KIND_TX, 2, 7.5, 2, 5, 10.0, 0)))
    _, st = engine.process(batch((KIND_LABEL, 1, 0.0, 1, 5, 0.0, 1)))  # 1.5 days late
    f, _ = engine.process(batch((KIND_TX, 3, 7.6, 3, 5, 10.0, 0)))
    assert st[0] == Status.LABEL_APPLIED
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW")[0] == 1.0


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([(KIND_LABEL, 9, 0.0, 1, 77, 0.0, 1)], Status.LABEL_UNKNOWN_ENTITY),
        (
            [(KIND_TX, 1, 0.0, 1, 5, 1.0, 0), (KIND_LABEL, 9, 0.0, 1, 5, 0.0, 1)],
            Status.LABEL_UNMATCHED,
        ),
        (
            [
                (KIND_TX, 1, 0.0, 1, 5, 1.0, 0),
                (KIND_TX, 2, 90.0, 1, 5, 1.0, 0),
                (KIND_TX, 3, 91.0, 1, 5, 1.0, 0),
                (KIND_LABEL, 1, 0.0, 1, 5, 0.0, 1),
            ],
            Status.LABEL_EXPIRED,
        ),
    ],
)
def test_label_statuses(events, expected):
    engine = IncrementalEngine(SPEC, capacity=1)  # capacity 1 forces compaction of day 0
    _, status = engine.process(batch(*events))
    assert status[-1] == expected


@pytest.mark.parametrize(
    ("shift_ns", "expected"),
    [
        (-123_456, Status.LABEL_APPLIED),  # the time cut to milliseconds
        (-999_999_999, Status.LABEL_APPLIED),  # cut to seconds
        (400_000_000, Status.LABEL_APPLIED),  # rounded up to a second
        (1_000_000_001, Status.LABEL_UNMATCHED),  # another time
        (-1_000_000_001, Status.LABEL_UNMATCHED),
    ],
)
def test_a_label_finds_its_transaction_by_id_within_a_second_of_its_time(shift_ns, expected):
    """A case system that keeps times in milliseconds or seconds sends its label with the
    transaction's time cut or rounded; the label is its transaction's all the same."""
    engine = IncrementalEngine(SPEC)
    neighbours = batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 0), (KIND_TX, 3, 0.0, 3, 5, 10.0, 0))
    neighbours.time_ns[:] += [999_999_000, 999_999_000 - 500_000_000]  # 1 s apart, not 1
    engine.process(neighbours)
    label = batch((KIND_LABEL, 1, 0.0, 1, 5, 0.0, 1))
    label.time_ns[:] = neighbours.time_ns[0] + shift_ns
    _, st = engine.process(label)
    assert st[0] == expected
    f, _ = engine.process(batch((KIND_TX, 2, 7.5, 2, 5, 10.0, 0)))
    applied = expected == Status.LABEL_APPLIED
    assert col(f, "TERMINAL_ID_RISK_1DAY_WINDOW")[0] == (0.5 if applied else 0.0)


def test_the_streaming_jobs_states_match_a_label_by_id_within_a_second_too():
    from features.incremental import ExportedStates
    from features.plan import EntityPlan

    plan = EntityPlan.build(SPEC, TERMINAL)
    assert plan.columns == ["TX_FRAUD"]
    states = ExportedStates(plan, timedelta(days=1))
    out = np.empty((1, plan.n_out + plan.since_prev))
    t = T0 + 123_456_789  # a transaction with a fraction of a second
    blob, code = states.apply(5, b"", KIND_TX, t, 1, np.array([[0.0]]), out)
    assert code == Status.OK
    _, code = states.apply(5, blob, KIND_LABEL, T0, 1, np.array([[1.0]]), out)  # in seconds
    assert code == Status.LABEL_APPLIED
    _, code = states.apply(5, blob, KIND_LABEL, t + 1_000_000_001, 1, np.array([[1.0]]), out)
    assert code == Status.LABEL_UNMATCHED


def test_state_is_bounded_by_the_horizon():
    engine = IncrementalEngine(SPEC, max_lateness=timedelta(days=1))
    days = np.arange(0, 200, 0.5)
    events = [(KIND_TX, i, d, 1, 1, 5.0, 0) for i, d in enumerate(days)]
    engine.process(batch(*events))
    # customer horizon 30 days + 1 day lateness: at most ~62 half-day events kept
    n_words = len(engine.export(CUSTOMER, 1)) // 8
    assert n_words < 4 + 2 * 3 + 2 * 3 + 3 * 64
    assert engine.stores[CUSTOMER].cap <= 128


def test_loading_a_state_of_another_spec_fails_clearly():
    a = IncrementalEngine(presets.BASELINE)
    a.process(batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 0)))
    b = IncrementalEngine(presets.DEFAULT)
    with pytest.raises(ValueError, match="does not match"):
        b.load(CUSTOMER, 1, a.export(CUSTOMER, 1))


def test_known_only_features_count_a_label_when_it_arrives_and_backfill_refuses_them():
    spec = presets.FEEDBACK
    engine = IncrementalEngine(spec)
    name = "TERMINAL_ID_KNOWN_SUM_FRAUD_28DAY_WINDOW"
    f0, _ = engine.process(batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 1)))  # fraud, label not known
    f1, _ = engine.process(batch((KIND_TX, 2, 0.5, 2, 5, 10.0, 0)))
    engine.process(batch((KIND_LABEL, 1, 0.0, 1, 5, 0.0, 1)))  # feedback: known on day 0.6
    f2, _ = engine.process(batch((KIND_TX, 3, 0.7, 3, 5, 10.0, 0)))
    idx = spec.names.index(name)
    assert [f0[0, idx], f1[0, idx], f2[0, idx]] == [0.0, 0.0, 1.0]
    # the delayed risk still waits for the label to be 7 days old
    assert f2[0, spec.names.index("TERMINAL_ID_RISK_1DAY_WINDOW")] == 0.0
    from features.synthetic import transactions
    from features.table import validate

    with pytest.raises(ValueError, match="known_only"):
        backfill(validate(transactions(n=50), spec), spec)


def test_a_redelivered_transaction_is_ignored_and_counted_once():
    engine = IncrementalEngine(SPEC)
    _, st1 = engine.process(batch((KIND_TX, 1, 0.0, 7, 1, 10.0, 0)))
    again, st2 = engine.process(
        batch((KIND_TX, 2, 0.5, 7, 1, 20.0, 0), (KIND_TX, 1, 0.0, 7, 1, 10.0, 0))
    )
    assert st1[0] == Status.OK and st2.tolist() == [Status.OK, Status.DUPLICATE]
    assert np.isnan(again[1]).all()
    f, _ = engine.process(batch((KIND_TX, 3, 0.6, 7, 1, 30.0, 0)))
    assert col(f, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[0] == 3  # ids 1, 2, 3: the copy did not count


def test_a_copy_delivered_right_after_its_original_is_a_duplicate():
    """A copy at the entity's newest time (only then is the buffer searched for one)."""
    engine = IncrementalEngine(SPEC)
    _, st = engine.process(
        batch((KIND_TX, 1, 0.0, 7, 1, 10.0, 0), (KIND_TX, 1, 0.0, 7, 1, 10.0, 0))
    )
    assert st.tolist() == [Status.OK, Status.DUPLICATE]
    _, st = engine.process(batch((KIND_TX, 2, 0.0, 7, 1, 10.0, 0)))  # same time, another id
    assert st.tolist() == [Status.OK]


@pytest.mark.parametrize("ids", [[3, 5, 3], [-4, 2**40, -4], [7, 2**40, 7, -1, 2**40]])
def test_entity_ids_of_any_int64_get_their_own_state(ids):
    """Small ids are looked up in a table, others (negative, huge) in a dict: same behaviour."""
    engine = IncrementalEngine(SPEC)
    events = [(KIND_TX, i, 0.1 * i, cid, 1, 10.0 * (i + 1), 0) for i, cid in enumerate(ids)]
    feats, _ = engine.process(batch(*events))
    store = engine.stores[CUSTOMER]
    assert sorted(store) == sorted(set(ids)) and len(store) == len(set(ids))
    seen: dict[int, int] = {}
    for i, cid in enumerate(ids):
        seen[cid] = seen.get(cid, 0) + 1
        assert col(feats, "CUSTOMER_ID_NB_TX_1DAY_WINDOW")[i] == seen[cid]
    for cid in set(ids):
        assert cid in store and engine.export(CUSTOMER, cid)
    assert 123_456 not in store and engine.export(CUSTOMER, 123_456) == b""


def test_searching_back_from_the_newest_event_finds_what_binary_search_finds():
    """The stream looks up labels, copies and late events galloping back from the end."""
    from numba import njit

    from features.kernels import _upper_bound_recent

    search = njit(lambda times, n, t: _upper_bound_recent(times, n, t))
    rng = np.random.default_rng(7)
    for _ in range(3_000):
        times = np.sort(rng.integers(0, 30, 64))
        n, t = int(rng.integers(0, 65)), int(rng.integers(-2, 33))
        assert search(times, n, t) == np.searchsorted(times[:n], t, side="right")


@pytest.mark.parametrize("preset", ["baseline", "enriched"])
def test_labels_delivered_late_change_only_the_label_features(preset):
    """Every label held back until after the last transaction (the worst race between a labels
    subscription and a transactions one): the label features of some rows change, no other
    feature of any row does."""
    from features.stream import with_labels
    from features.synthetic import transactions

    spec = presets.get(preset)
    events = with_labels(transactions(n=3_000, days=60, customers=80, terminals=60), spec)
    tx_last = np.flatnonzero(events.kind == KIND_TX)[-1]
    late = np.concatenate([np.flatnonzero(events.kind == KIND_TX),
                           np.flatnonzero(events.kind == KIND_LABEL)])  # fmt: skip
    features = {}
    for name, order in (("in order", np.arange(tx_last + 1)), ("labels late", late)):
        part = events[order]
        f, _ = IncrementalEngine(spec).process(part)
        tx = part.kind == KIND_TX
        features[name] = f[tx][np.argsort(part.transaction_id[tx]), : len(spec.stream_names)]
    is_label = np.isin(spec.stream_names, spec.label_names)
    a, b = features["in order"], features["labels late"]
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    assert same[:, ~is_label].all()
    assert not same[:, is_label].all(), "labels late must change some label feature"


def _through_a_store(plan, lateness, blob, key, kind, t, txid, vals):
    """Reference for :class:`ExportedStates`: restore into a store, process, export."""
    store = EntityStore(plan, lateness)
    if blob:
        store.load(key, blob)
    rows = store.rows_for(np.array([key], np.int64), np.array([kind == KIND_TX]))
    out = np.full((1, len(plan.names) + plan.since_prev), np.nan)
    status = np.full(1, int(Status.LABEL_NOT_USED), np.int64)
    store.process(np.array([kind]), rows, np.array([t]), np.array([txid]), vals, out, status)
    return store.export(key), out, int(status[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("entity", [CUSTOMER, TERMINAL])
def test_exported_states_apply_events_as_a_store_does_bit_for_bit(seed, entity):
    """Transactions mostly in order, some late, too late or copies; labels matched, unmatched
    and for unknown entities; buffers that grow and compact: every event's new state, features
    and status equal the store's."""
    from features.incremental import ExportedStates
    from features.plan import EntityPlan

    rng = np.random.default_rng(seed)
    plan = EntityPlan.build(presets.DEFAULT, entity)
    lateness = timedelta(days=2)
    states, applied, reached = {}, ExportedStates(plan, lateness), set()
    t, seen = T0, []
    for txid in range(3_000):
        key = int(rng.integers(0, 6)) * (2**40 + 7)  # a few entities, pseudonymised-size ids
        roll = rng.random()
        if roll < 0.15 and seen:  # a label of an earlier transaction (maybe another entity's)
            tx_key, tx_t, tx_id = seen[int(rng.integers(0, len(seen)))]
            event = (KIND_LABEL, tx_t, tx_id, tx_key if rng.random() < 0.9 else key + 1)
        elif roll < 0.2 and seen:  # a copy of an earlier transaction
            tx_key, tx_t, tx_id = seen[int(rng.integers(max(0, len(seen) - 20), len(seen)))]
            event = (KIND_TX, tx_t, tx_id, tx_key)
        else:
            t += int(rng.exponential(0.3 * DAY))
            when = t - int(rng.exponential(1.5 * DAY)) if rng.random() < 0.1 else t  # late
            event = (KIND_TX, when, txid, key)
            seen.append((key, when, txid))
        kind, when, tx_id, key = event
        vals = np.array([[float(rng.gamma(2, 40)), float(rng.random() < 0.3)]])
        vals = vals[:, : max(len(plan.columns), 1)]
        blob = states.get(key, b"")
        want_state, want_out, want_status = _through_a_store(
            plan, lateness, blob, key, kind, when, tx_id, vals
        )
        out = np.full_like(want_out, np.nan)
        got_state, got_status = applied.apply(key, blob, kind, when, tx_id, vals, out)
        assert (got_state, got_status) == (want_state, want_status)
        np.testing.assert_array_equal(out.view(np.int64), want_out.view(np.int64))
        if got_state:
            states[key] = got_state
        reached.add(Status(got_status))
    labels = (
        {Status.LABEL_APPLIED, Status.LABEL_UNKNOWN_ENTITY}
        if plan.label_cols.size
        else {Status.LABEL_NOT_USED}
    )
    assert reached >= {Status.OK, Status.LATE, Status.TOO_LATE, Status.DUPLICATE} | labels


def test_exported_states_refuse_a_state_of_another_spec_or_no_state_at_all():
    from features.incremental import ExportedStates
    from features.plan import EntityPlan

    def applier(spec):
        plan = EntityPlan.build(spec, CUSTOMER)
        out = np.full((1, len(plan.names) + plan.since_prev), np.nan)
        return ExportedStates(plan, timedelta(days=1)), out

    (baseline, out_b), (default, out_d) = applier(presets.BASELINE), applier(presets.DEFAULT)
    vals = np.array([[50.0]])
    state, _ = baseline.apply(7, b"", KIND_TX, T0, 1, vals, out_b)
    with pytest.raises(ValueError, match="state of 7 does not match this spec"):
        default.apply(7, state, KIND_TX, T0 + DAY, 2, vals, out_d)
    with pytest.raises(ValueError, match="state of 7 is not a state"):
        default.apply(7, state[:-3], KIND_TX, T0 + DAY, 2, vals, out_d)


def _format_0(blob: bytes, plan) -> bytes:
    """A state as the rows before extras exported it: no extras, format word 0."""
    from features import kernels

    words = np.frombuffer(blob, np.int64).copy()
    head = kernels.row_width(len(plan.win), plan.n_cols, 0, 0)
    words[3] = 0
    return np.concatenate([words[:head], words[head + 4 * plan.n_extras :]]).tobytes()


def test_a_state_from_before_extras_is_migrated_and_gives_the_same_features():
    """Std, min and max read running extras; a state exported without them (format 0) gets
    them from its buffered events on load, in a store and in a keyed step alike."""
    from features.incremental import ExportedStates
    from features.plan import EntityPlan

    spec = presets.DEFAULT
    rng = np.random.default_rng(3)
    days = np.sort(rng.uniform(0, 60, 400))
    history = [(KIND_TX, i, d, 1, 5, float(rng.gamma(2, 40)), 0) for i, d in enumerate(days)]
    later = [(KIND_TX, 1_000 + i, 60 + i / 4, 1, 5, float(rng.gamma(2, 40)), 0) for i in range(40)]
    kept = IncrementalEngine(spec)
    kept.process(batch(*history))
    plan = EntityPlan.build(spec, CUSTOMER)
    assert plan.n_extras == 4  # the card's 1, 7 and 30 days and its habit window
    migrated = IncrementalEngine(spec)
    migrated.load(CUSTOMER, 1, _format_0(kept.export(CUSTOMER, 1), plan))
    migrated.load(TERMINAL, 5, kept.export(TERMINAL, 5))
    want, _ = kept.process(batch(*later))
    got, _ = migrated.process(batch(*later))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    scanned = [i for i, n in enumerate(spec.names) if "_MAX_" in n or "_MIN_" in n]
    np.testing.assert_array_equal(got[:, scanned], want[:, scanned])  # extremes are exact

    applied = ExportedStates(plan, timedelta(0))
    blob, vals, at = kept.export(CUSTOMER, 1), np.array([[70.0]]), int(T0 + 71 * DAY)
    out_new, out_old = np.empty((1, plan.n_out + 1)), np.empty((1, plan.n_out + 1))
    new_state, _ = applied.apply(1, blob, KIND_TX, at, 9_999, vals, out_new)
    old_state, _ = applied.apply(1, _format_0(blob, plan), KIND_TX, at, 9_999, vals, out_old)
    np.testing.assert_allclose(out_old, out_new, rtol=1e-12)
    assert len(old_state) == len(new_state)  # written back in the current format


def test_a_state_of_an_unknown_format_is_refused():
    a = IncrementalEngine(presets.DEFAULT)
    a.process(batch((KIND_TX, 1, 0.0, 1, 5, 10.0, 0)))
    words = np.frombuffer(a.export(CUSTOMER, 1), np.int64).copy()
    words[3] = 7  # a format from a later version
    with pytest.raises(ValueError, match="state of 1 has format 7; this version reads 1 and 0"):
        IncrementalEngine(presets.DEFAULT).load(CUSTOMER, 1, words.tobytes())
