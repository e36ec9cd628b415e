"""Batch features: daily snapshots against a plain per-day oracle, and the point-in-time join."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features import batch, presets
from features.spec import (
    CUSTOMER,
    DAY,
    TERMINAL,
    AmountProfile,
    CompromiseScore,
    FeatureSpec,
)
from features.synthetic import transactions
from features.table import event_times_ns, validate

SPEC = FeatureSpec(
    name="lookups_test",
    lookups=(AmountProfile(timedelta(days=20)), CompromiseScore(timedelta(days=10))),
    label_delay=timedelta(days=3),
)


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return validate(
        transactions(n=1_500, customers=30, terminals=25, days=50, fraud_rate=0.05), SPEC
    )


def _oracle_profile(df: pd.DataFrame, key: int, day: pd.Timestamp, window: timedelta) -> list:
    rows = df[(df["CUSTOMER_ID"] == key) & (df["TX_DATETIME"] >= day - window)]
    rows = rows[rows["TX_DATETIME"] < day]
    if rows.empty:
        return [0.0, np.nan, np.nan, np.nan, np.nan]
    amount = rows["TX_AMOUNT"].to_numpy()
    median = np.median(amount)
    hours = (rows["TX_DATETIME"] - rows["TX_DATETIME"].dt.normalize()) / pd.Timedelta(hours=1)
    angle = 2 * np.pi * hours.to_numpy() / 24
    c, s = np.cos(angle).mean(), np.sin(angle).mean()
    usual = (np.arctan2(s, c) * 24 / (2 * np.pi)) % 24
    return [len(rows), median, np.median(np.abs(amount - median)), usual, 1 - np.hypot(c, s)]


def _oracle_compromise(df, key, day, window, delay) -> list:
    visits = df[(df["TERMINAL_ID"] == key) & (df["TX_DATETIME"] >= day - window)]
    visits = visits[visits["TX_DATETIME"] < day]
    first_use = visits.groupby("CUSTOMER_ID")["TX_DATETIME"].min()
    frauds = df[df["TX_FRAUD"] == 1]
    hit = 0
    for card, used in first_use.items():
        known = frauds[(frauds["CUSTOMER_ID"] == card) & (frauds["TX_DATETIME"] >= used)]
        hit += bool((known["TX_DATETIME"] <= day - delay).any())
    n = len(first_use)
    return [n, hit / n if n else 0.0]


def test_snapshots_equal_a_per_day_oracle(df):
    tables = batch.snapshots(df, SPEC)
    profile, compromise = SPEC.lookups
    rng = np.random.default_rng(1)
    customers = tables["customer"].sample(40, random_state=rng.integers(1 << 31))
    for key, at in customers[["CUSTOMER_ID", "event_timestamp"]].itertuples(index=False):
        got = customers.loc[
            (customers["CUSTOMER_ID"] == key) & (customers["event_timestamp"] == at),
            profile.stored_names(),
        ].to_numpy()[0]
        np.testing.assert_allclose(got, _oracle_profile(df, key, at, profile.window), rtol=1e-9)
    terminals = tables["terminal"].sample(40, random_state=rng.integers(1 << 31))
    for row in terminals.itertuples(index=False):
        key, at = row.TERMINAL_ID, row.event_timestamp
        got = [row[2], row[3]]
        want = _oracle_compromise(df, key, at, compromise.window, SPEC.label_delay)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_snapshot_row_until_the_window_has_emptied(df):
    """An entity has a row at each midnight it was active in the window plus one day; the last
    row holds the defaults, so the online store's newest row is always the latest snapshot."""
    tables = batch.snapshots(df, SPEC)
    profile = SPEC.lookups[0]
    for key, rows in tables["customer"].groupby("CUSTOMER_ID"):
        days = rows["event_timestamp"].diff().dropna()
        last_tx = df.loc[df["CUSTOMER_ID"] == key, "TX_DATETIME"].max()
        end = rows["event_timestamp"].max()
        assert end == min(
            last_tx.normalize() + DAY + profile.window,
            df["TX_DATETIME"].max().normalize() + DAY,
        )
        if end > df["TX_DATETIME"].max().normalize() + DAY - DAY:
            continue
        assert (days == pd.Timedelta(DAY)).all()  # no gap in an active stretch
        assert rows.iloc[-1][profile.stored_names()[0]] == 0.0


def test_one_key_at_a_time_gives_the_same_rows(df):
    """The Beam batch job groups by key; the rows must not depend on the grouping."""
    times = event_times_ns(df)
    first, last = batch.snapshot_days(times)
    lookup = SPEC.lookups[1]
    cards, fraud = df["CUSTOMER_ID"].to_numpy(), df["TX_FRAUD"].to_numpy() > 0
    nxt = batch.next_fraud(cards, times, fraud)
    keys = df["TERMINAL_ID"].to_numpy()
    order = np.lexsort((times, keys))
    whole = batch.entity_rows(
        lookup, keys[order], times[order], [cards[order], nxt[order]], SPEC.label_delay, first, last
    )
    parts = []
    for key in np.unique(keys):
        sel = order[keys[order] == key]
        parts.append(
            batch.entity_rows(
                lookup, keys[sel], times[sel], [cards[sel], nxt[sel]], SPEC.label_delay, first, last
            )
        )
    for j in range(3):
        np.testing.assert_array_equal(whole[j], np.concatenate([p[j] for p in parts]))


def test_point_in_time_takes_the_midnight_before_and_defaults_otherwise():
    spec = SPEC
    t0 = pd.Timestamp("2018-05-10")
    tables = {
        "customer": pd.DataFrame(
            {
                "CUSTOMER_ID": [1, 1],
                "event_timestamp": [t0, t0 + DAY],
                **{
                    n: [10.0 + i, 20.0 + i]
                    for i, n in enumerate(spec.lookup_stored_names(CUSTOMER))
                },
            }
        ),
        "terminal": pd.DataFrame(
            {
                "TERMINAL_ID": [5],
                "event_timestamp": [t0],
                **{n: [3.0 + i] for i, n in enumerate(spec.lookup_stored_names(TERMINAL))},
            }
        ),
    }
    when = pd.to_datetime(
        [
            t0 - pd.Timedelta(seconds=1),
            t0,
            t0 + pd.Timedelta(hours=23),
            t0 + DAY,
            t0 + 3 * DAY + pd.Timedelta(seconds=1),
        ]
    )
    times = when.to_numpy("datetime64[ns]").view(np.int64)
    ids = {"CUSTOMER_ID": np.array([1, 1, 1, 1, 1]), "TERMINAL_ID": np.array([5, 5, 5, 5, 7])}
    got = batch.point_in_time(spec, times, ids, tables)
    default_c = batch.defaults(spec, CUSTOMER)
    np.testing.assert_array_equal(got["customer"][0], default_c)  # before any snapshot
    assert got["customer"][1, 0] == 10.0 and got["customer"][2, 0] == 10.0  # its midnight's
    assert got["customer"][3, 0] == 20.0  # the next midnight's from that midnight on
    np.testing.assert_array_equal(got["customer"][4], default_c)  # older than the ttl
    assert got["terminal"][3, 0] == 3.0  # one day old: within the ttl
    np.testing.assert_array_equal(got["terminal"][4], batch.defaults(spec, TERMINAL))  # unknown


def test_complete_derives_the_deviations_from_the_stored_profile():
    profile = SPEC.lookups[0]
    stored_c = np.array([[12.0, 50.0, 9.0, 23.0, 0.1], [0.0, np.nan, np.nan, np.nan, np.nan]])
    stored_t = np.array([[4.0, 0.25], [0.0, 0.0]])
    times = pd.to_datetime(["2018-05-10 01:30", "2018-05-10 12:00"]).to_numpy().view(np.int64)
    out = batch.complete(
        SPEC, {"customer": stored_c, "terminal": stored_t}, np.array([70.0, 5.0]), times
    )
    row = dict(zip(SPEC.lookup_names, out[0], strict=True))
    amount_dev, hour_dev = profile.derived_names()
    assert row[amount_dev] == (70.0 - 50.0) / (9.0 + 1.0)
    assert row[hour_dev] == pytest.approx(2.5)  # 23:00 to 01:30 across midnight
    assert np.isnan(out[1, SPEC.lookup_names.index(amount_dev)])


def test_backfill_and_stream_join_the_same_lookups(df):
    from features.backfill import backfill
    from features.stream import stream_features

    spec = FeatureSpec(
        name="lookups_stream_test",
        aggregates=presets.BASELINE.aggregates,
        lookups=SPEC.lookups,
        label_delay=presets.LABEL_DELAY,
    )
    full = backfill(df, spec)
    streamed = stream_features(df, spec)
    np.testing.assert_array_equal(full[spec.names].to_numpy(), streamed[spec.names].to_numpy())
    assert full[spec.lookup_names].notna().any().all()


def test_spec_without_lookups_keeps_its_names_and_fingerprint_inputs():
    for spec in (presets.BASELINE, presets.DEFAULT, presets.FEEDBACK):
        assert spec.names == spec.stream_names and spec.lookup_names == []
        assert "lookups" not in repr(spec)
    enriched = presets.get("enriched")
    assert enriched.stream_names == presets.DEFAULT.names
    assert enriched.names[len(presets.DEFAULT.names) :] == enriched.lookup_names
    assert enriched.fingerprint() != presets.DEFAULT.fingerprint()


def test_invalid_lookups_are_refused():
    with pytest.raises(ValueError, match="positive number of days"):
        FeatureSpec(name="x", lookups=(AmountProfile(timedelta(hours=5)),))
    with pytest.raises(ValueError, match="not in the spec"):
        FeatureSpec(name="x", entities=(CUSTOMER,), lookups=(CompromiseScore(),))
    with pytest.raises(ValueError, match="one lookup of a kind"):
        FeatureSpec(name="x", lookups=(AmountProfile(), AmountProfile(timedelta(days=30))))


def test_next_fraud_is_the_cards_first_fraud_at_or_after_each_transaction():
    cards = np.array([5, 5, 5, 5, 6])
    times = np.array([100, 100, 150, 200, 100])
    fraud = np.array([True, False, False, True, False])  # a fraud and a payment at one time
    got = batch.next_fraud(cards, times, fraud)
    assert got.tolist() == [100, 100, 200, 200, batch.NO_FRAUD]
    order = np.array([3, 1, 4, 0, 2])  # any input order
    assert (
        batch.next_fraud(cards[order], times[order], fraud[order]).tolist() == got[order].tolist()
    )
