"""Chaos tests of the core job (``ScoreTransactions``): fuzzed input, redelivery, late events.

* Fuzz: 5,000 generated malformed transactions and 1,000 malformed labels (``fuzz.py``), mixed
  with the valid ones, in one run of the whole job: it never crashes, every bad message is a
  dead letter with its reason and its payload, every valid one is scored once.
* Redelivery: every message published twice, then a batch redelivered after the watermark moved
  on (a worker died before acking it): each transaction counts once in the features, is scored
  once and alerts once; every extra copy is a ``DUPLICATE`` dead letter.
* Late and out-of-order: the semantics of ``features/incremental.py`` end to end (``LATE``
  scored, ``TOO_LATE`` a dead letter).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a test class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.backfill import backfill
from features.incremental import Status
from streaming.job.entity_state import ORDERINGS
from streaming.schema import parse_label, parse_transaction
from tests.streaming import fuzz
from tests.streaming.test_pipeline import (
    SPEC,
    run_core,
    stream_run,
    to_payloads,
    world,
)

pytestmark = pytest.mark.chaos
__all__ = ["world"]  # the module-scoped fixture (trains a tiny model into a registry)

N_BAD_TRANSACTIONS = 5_000
N_BAD_LABELS = 1_000
N_ODD_VALID = 100


def _as_dead_letter(payload: bytes) -> tuple[str, str]:
    """How a dead letter carries ``payload``: text, or base64 when it is not UTF-8."""
    try:
        return payload.decode("utf-8"), "text"
    except UnicodeDecodeError:
        import base64

        return base64.b64encode(payload).decode("ascii"), "base64"


# -- the parser never raises anything but ValueError (anything else would crash the DoFn) -----

_ANY_PAYLOAD = st.one_of(
    st.binary(max_size=256),
    st.text(max_size=256),
    st.text(max_size=64).map(str.encode),
    fuzz.bad_transactions().map(lambda m: m.payload),
    fuzz.bad_labels().map(lambda m: m.payload),
    fuzz.transaction_docs().map(json.dumps),
    fuzz.label_docs().map(json.dumps),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ANY_PAYLOAD)
def test_parsers_return_a_record_or_raise_value_error_for_any_payload(payload):
    for parse, record in ((parse_transaction, "Transaction"), (parse_label, "Label")):
        try:
            parsed = parse(payload)
        except ValueError as exc:
            assert str(exc)  # a reason for the dead letter
        else:
            assert type(parsed).__name__ == record


@pytest.mark.parametrize("parse", [parse_transaction, parse_label])
def test_deeply_nested_json_is_a_value_error(parse):
    with pytest.raises(ValueError):
        parse(b"[" * 5_000)


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59", "0001-01-01T00:00:00", "2263-01-01", "1969-12-31"]
)
def test_times_outside_the_engines_range_are_refused(when):
    doc = {
        "TRANSACTION_ID": 1,
        "TX_DATETIME": when,
        "CUSTOMER_ID": 1,
        "TERMINAL_ID": 1,
        "TX_AMOUNT": 1.0,
    }
    with pytest.raises(ValueError, match=r"must be in \[1970-01-01, 2200-01-01\)"):
        parse_transaction(json.dumps(doc))


def test_amounts_above_the_maximum_are_refused():
    """A float32 model input must stay finite (SHAP refuses inf): amounts are capped at 1e9."""
    doc = {"TRANSACTION_ID": 1, "TX_DATETIME": "2018-04-01T00:00:00", "CUSTOMER_ID": 1,
           "TERMINAL_ID": 1, "TX_AMOUNT": 1e308}  # fmt: skip
    with pytest.raises(ValueError, match=r"at most 1e\+09"):
        parse_transaction(json.dumps(doc))


# -- fuzz: the whole job, bad messages mixed with valid ones ----------------------------------


def _odd_valid() -> list[fuzz.Message]:
    """Odd but valid transactions, each with its own transaction id and new (unknown) card and
    terminal ids near the top of the int64 range, so they do not touch the world's entities."""
    odd = fuzz.sample(fuzz.odd_valid_transactions(), N_ODD_VALID, per_example=20)
    top = 2**63 - 1
    return [fuzz.with_ids(m, 10**12 + i, top - i, top - 10_000 - i) for i, m in enumerate(odd)]


def test_the_schema_accepts_odd_but_valid_transactions():
    """What the issue calls malformed but the schema accepts (huge finite amounts, far past or
    future times, unknown ids, ...): valid messages, to be scored."""
    odd = _odd_valid()
    assert len({m.category for m in odd}) == 11
    for m in odd:
        assert parse_transaction(m.payload).transaction_id >= 10**12


@pytest.mark.slow
def test_fuzzed_messages_go_to_the_dead_letter_output_and_valid_ones_are_scored_once(world):
    """5,000 bad transactions and 1,000 bad labels and the world's valid messages, shuffled, in
    one batch run of the whole job (FnApiRunner). The odd but valid transactions are checked
    at the parser only (see ``test_the_schema_accepts_odd_but_valid_transactions``): 100 of
    them, one per new entity, did not finish in the batch job within 2 minutes."""
    df, X, _, root = world
    bad_txs = fuzz.sample(fuzz.bad_transactions(), N_BAD_TRANSACTIONS)
    bad_labels = fuzz.sample(fuzz.bad_labels(), N_BAD_LABELS)
    odd: list[fuzz.Message] = []
    tx_ok, label_ok = to_payloads(df)
    rng = random.Random(7)
    txs = [m.payload for m in bad_txs] + [p.encode() for p in tx_ok] + [m.payload for m in odd]
    labels = [m.payload for m in bad_labels] + [p.encode() for p in label_ok]
    rng.shuffle(txs)
    rng.shuffle(labels)

    got = run_core(txs, labels, root)

    # Every category is there, in numbers (the draw is derandomized: the same on every run).
    tx_categories = Counter(m.category for m in bad_txs)
    assert len(tx_categories) == 11 and min(tx_categories.values()) >= 300, tx_categories
    label_categories = Counter(m.category for m in bad_labels)
    assert len(label_categories) == 9 and min(label_categories.values()) >= 40, label_categories

    dead = got["dead_letter"]
    assert len(dead) == N_BAD_TRANSACTIONS + N_BAD_LABELS
    by_stage = Counter(d["stage"] for d in dead)
    assert by_stage == {"parse_transactions": N_BAD_TRANSACTIONS, "parse_labels": N_BAD_LABELS}
    reasons = {("parse_transactions", *_as_dead_letter(m.payload)): m.reason for m in bad_txs} | {
        ("parse_labels", *_as_dead_letter(m.payload)): m.reason for m in bad_labels
    }
    expected = Counter(("parse_transactions", *_as_dead_letter(m.payload)) for m in bad_txs)
    expected += Counter(("parse_labels", *_as_dead_letter(m.payload)) for m in bad_labels)
    keys = [(d["stage"], d["payload"], d["payload_encoding"]) for d in dead]
    assert Counter(keys) == expected  # the original payloads, each as often as it was sent
    for key, d in zip(keys, dead, strict=True):
        assert d["error"] and reasons[key] in d["error"], (key, d["error"])
        assert d["time"]

    scored = got["scored"]
    valid_ids = df["TRANSACTION_ID"].tolist() + [
        json.loads(m.payload)["TRANSACTION_ID"] for m in odd
    ]
    ids = [s.tx.transaction_id for s in scored]
    assert len(ids) == len(valid_ids) == len(set(ids)) and set(ids) == set(valid_ids)
    assert all(s.accepted and s.status == Status.OK for s in scored)
    by_id = {s.tx.transaction_id: s for s in scored}
    np.testing.assert_array_equal(
        np.stack([by_id[i].features for i in df["TRANSACTION_ID"]]), X
    )  # the bad messages changed no state
    alert_ids = [a["transaction_id"] for a in got["alerts"]]
    assert len(alert_ids) == len(set(alert_ids))
    assert set(alert_ids) == {s.tx.transaction_id for s in scored if s.score >= s.threshold}


# -- streaming runs: one TestStream with two tagged outputs -----------------------------------


def _watermark(t: pd.Timestamp) -> float:
    """Beam watermark (epoch seconds) of a naive event time."""
    return (t - pd.Timestamp("1970-01-01")).total_seconds()


def _last_before(df: pd.DataFrame, cut: pd.Timestamp) -> dict[str, pd.Series]:
    """Each entity's newest transaction time at or before ``cut``."""
    before = df[df["TX_DATETIME"] <= cut]
    return {e.key: before.groupby(e.key)["TX_DATETIME"].max() for e in SPEC.entities}


def _lag(df: pd.DataFrame, newest: dict[str, pd.Series]) -> pd.DataFrame:
    """Per row and entity: how far the row lies behind its entity's newest event."""
    return pd.DataFrame(
        {
            e.key: df[e.key].map(newest[e.key]).to_numpy() - df["TX_DATETIME"].to_numpy()
            for e in SPEC.entities
        },
        index=df.index,
    )


@pytest.mark.slow
def test_redelivered_messages_count_once_in_features_scores_and_alerts(world):
    """Every transaction published twice (shuffled), then, once the watermark has passed them,
    a batch of 50 redelivered (a worker failed before acking them): same features as one
    delivery (the backfill's), one score and at most one alert per transaction, and one
    ``DUPLICATE`` dead letter per extra copy."""
    df, X, _, root = world
    txs, labels = to_payloads(df)
    lateness = timedelta(days=3)
    order = df.sort_values(["TX_DATETIME", "TRANSACTION_ID"])
    cut = order["TX_DATETIME"].iloc[300]
    lag = _lag(order, _last_before(order, cut))
    within = (lag < pd.Timedelta(lateness)).all(axis=1) & (order["TX_DATETIME"] <= cut)
    batch = order[within].tail(50).index  # the copy still finds its original buffered
    assert len(batch) == 50

    twice = txs + txs
    random.Random(3).shuffle(twice)
    stream = (
        _TestStream(output_tags={"transactions", "labels"})
        .add_elements(labels, tag="labels")
        .add_elements(twice, tag="transactions")
    )
    _advance(stream, cut)  # the watermark passes the batch's originals: they are applied
    stream.add_elements([txs[i] for i in batch], tag="transactions")
    _advance(stream, df["TX_DATETIME"].max() + SPEC.label_delay + pd.Timedelta(days=1))
    stream.advance_watermark_to_infinity()
    got = stream_run(stream, root, lateness)

    scored = {s.tx.transaction_id: s for s in got["scored"]}
    assert len(got["scored"]) == len(df) == len(scored)
    streamed = np.stack([scored[i].features for i in df["TRANSACTION_ID"]])
    np.testing.assert_array_equal(streamed, X)  # each transaction counted once
    assert Counter((d["stage"], d["error"]) for d in got["dead_letter"]) == {
        ("features", "DUPLICATE"): len(df) + len(batch)
    }
    copies = Counter(json.loads(d["payload"])["TRANSACTION_ID"] for d in got["dead_letter"])
    assert copies == Counter(
        df["TRANSACTION_ID"].tolist() + df.loc[batch, "TRANSACTION_ID"].tolist()
    )
    alert_ids = [a["transaction_id"] for a in got["alerts"]]
    assert len(alert_ids) == len(set(alert_ids))
    assert set(alert_ids) == {i for i, s in scored.items() if s.score >= s.threshold}


def _advance(stream: _TestStream, t: pd.Timestamp) -> None:
    """Advance the watermark of both outputs to ``t``: ``advance_watermark_to`` without a tag
    moves only the untagged output's watermark, which no stage of the job reads."""
    for tag in ("transactions", "labels"):
        stream.advance_watermark_to(_watermark(t), tag=tag)


def _newest(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Each entity's newest transaction time in ``df``."""
    return {e.key: df.groupby(e.key)["TX_DATETIME"].max() for e in SPEC.entities}


@pytest.mark.slow
@pytest.mark.parametrize("ordering", ORDERINGS)
def test_late_events_are_scored_and_too_late_ones_are_dead_letters(world, ordering):
    """Every transaction but 20 held back is delivered (shuffled for the ``event_time``
    ordering; in time order for ``arrival``, which applies them as they come, so that a late
    transaction sees the late ones before it) and the watermark passes them all, so every
    entity has applied its newest event. Then the held-back ones arrive: 10 older than their
    entities' newest by less than the allowed lateness (for both entities) are inserted and
    scored with status ``LATE``; 10 older by more (for both) are ``TOO_LATE`` dead letters and
    change no state. Last, one probe transaction per held-back
    (card, terminal), newer than everything, shows that later events see the late ones and not
    the too-late ones. No labels here: the backfill is then computed with every label 0."""
    df, _, _, root = world
    columns = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    df = df[columns].assign(TX_FRAUD=0)
    lateness = timedelta(hours=36)
    newest = _newest(df)
    lag = _lag(df, newest)
    # A held-back transaction is never its entity's newest (lag > 0 for both), so holding it
    # back changes no entity's newest; nor shares its time with another transaction (the
    # engine inserts a late one after any of equal time, the backfill orders those by id).
    held = (lag > pd.Timedelta(0)).all(axis=1) & ~df["TX_DATETIME"].duplicated(keep=False)
    late_pool = df.index[held & (lag < pd.Timedelta(lateness)).all(axis=1)]
    too_late_pool = df.index[held & (lag >= pd.Timedelta(lateness)).all(axis=1)]
    rng = random.Random(5)
    late = sorted(rng.sample(list(late_pool), 10))
    too_late = sorted(rng.sample(list(too_late_pool), 10))
    first = df.drop(index=late + too_late)
    for e in SPEC.entities:  # the newest times the held-back ones are judged against
        pd.testing.assert_series_equal(_newest(first)[e.key], newest[e.key])

    end = df["TX_DATETIME"].max()
    pairs = df.loc[late + too_late, ["CUSTOMER_ID", "TERMINAL_ID"]].drop_duplicates()
    probes = pairs.assign(
        TRANSACTION_ID=df["TRANSACTION_ID"].max() + 1 + np.arange(len(pairs)),
        TX_DATETIME=end + pd.Timedelta(hours=2) + pd.to_timedelta(np.arange(len(pairs)), "min"),
        TX_AMOUNT=10.0 + np.arange(len(pairs)),
        TX_FRAUD=0,
    )[df.columns]
    in_time_order = ["TX_DATETIME", "TRANSACTION_ID"]
    on_time_txs, _ = to_payloads(first.sort_values(in_time_order))
    held_txs, _ = to_payloads(df.loc[late + too_late].sort_values(in_time_order))
    if ordering == "event_time":  # any order: the watermark orders them
        rng.shuffle(on_time_txs)
        rng.shuffle(held_txs)
    probe_txs, _ = to_payloads(probes)
    stream = _TestStream(output_tags={"transactions", "labels"})
    stream.add_elements(on_time_txs, tag="transactions")
    _advance(stream, end + pd.Timedelta(seconds=1))  # every delivered event is applied
    stream.add_elements(held_txs, tag="transactions")
    _advance(stream, end + pd.Timedelta(hours=1))  # the held-back ones are applied
    stream.add_elements(probe_txs, tag="transactions")
    # finite first: outputs of a stage after the watermark reached infinity may be dropped
    _advance(stream, end + pd.Timedelta(days=1))
    stream.advance_watermark_to_infinity()
    got = stream_run(stream, root, lateness, ordering)

    dead = got["dead_letter"]
    assert Counter((d["stage"], d["error"]) for d in dead) == {
        ("features", "TOO_LATE"): len(too_late)
    }
    assert sorted(json.loads(d["payload"])["TRANSACTION_ID"] for d in dead) == sorted(
        df.loc[too_late, "TRANSACTION_ID"]
    )
    scored = {s.tx.transaction_id: s for s in got["scored"]}
    kept = pd.concat([df.drop(index=too_late), probes], ignore_index=True)
    assert len(got["scored"]) == len(kept) == len(scored)  # each once
    assert set(scored) == set(kept["TRANSACTION_ID"])
    late_ids = set(df.loc[late, "TRANSACTION_ID"])
    assert {i: Status(s.status).name for i, s in scored.items() if s.status != Status.OK} == {
        i: "LATE" for i in late_ids
    }

    # Features. The on-time transactions were scored before the held-back ones arrived and are
    # not scored again: theirs are the backfill of what was delivered by then, bit for bit
    # (those after a late one in time differ from the backfill of `kept`, by design). A late
    # one is inserted and computed by a scan at its own time; the probes come after the
    # inserts, with windows shifted by Kahan sums: both equal the backfill of `kept` (the
    # too-late ones left out: they changed no state) up to float rounding.
    def streamed(ids) -> np.ndarray:
        return np.stack([scored[i].features for i in ids])

    def features(frame: pd.DataFrame, ids) -> np.ndarray:
        return backfill(frame, SPEC).set_index("TRANSACTION_ID").loc[ids, SPEC.names].to_numpy()

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)

    on_time = first["TRANSACTION_ID"].tolist()
    np.testing.assert_array_equal(streamed(on_time), features(first, on_time))
    assert not close(features(first, on_time), features(kept, on_time))  # hence not `kept`'s
    after_inserts = sorted(late_ids) + probes["TRANSACTION_ID"].tolist()
    np.testing.assert_allclose(
        streamed(after_inserts), features(kept, after_inserts), rtol=1e-9, atol=1e-9
    )
    # the probes tell the cases apart: they see the late ones, and not the too-late ones
    probe_ids = probes["TRANSACTION_ID"].tolist()
    for other in (first, df):
        whole = pd.concat([other, probes], ignore_index=True)
        assert not close(streamed(probe_ids), features(whole, probe_ids))
    alert_ids = [a["transaction_id"] for a in got["alerts"]]
    assert len(alert_ids) == len(set(alert_ids))
    assert set(alert_ids) == {i for i, s in scored.items() if s.score >= s.threshold}
