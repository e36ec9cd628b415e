"""``bench/freshness.py``: which transactions can be measured, when the reader's polls see
them, and the figures made of it (no emulator; times are given, not measured)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench import freshness


def _feed(rows: list[tuple[int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "CUSTOMER_ID": [card for card, _ in rows],
            "TX_DATETIME": pd.to_datetime([time for _, time in rows]),
        }
    )


def test_a_transaction_is_measured_only_when_later_than_every_earlier_one_of_its_card() -> None:
    df = _feed(
        [
            (1, "2026-11-01 10:00:00"),
            (2, "2026-11-01 10:00:00"),  # same time, other card: both measurable
            (1, "2026-11-01 10:00:00"),  # same card, same time: the row cannot tell them apart
            (1, "2026-11-01 10:00:01"),
            (2, "2026-11-01 09:59:00"),  # older than its card's row: a later stamp is not its own
            (2, "2026-11-01 10:00:00"),  # equal to the card's newest so far
            (2, "2026-11-01 10:00:02"),
        ]
    )
    assert freshness.exact(df).tolist() == [True, True, False, True, False, False, True]


def test_a_poll_sees_each_pending_transaction_at_or_before_its_cards_row_time() -> None:
    tracker = freshness.Tracker()
    tracker.add(10, card=7, time_ms=1_000)
    tracker.add(11, card=7, time_ms=2_000)
    tracker.add(12, card=8, time_ms=1_500)
    assert sorted(tracker.cards()) == [7, 8]

    assert tracker.observe([7, 8], [1_000, None], at=5.0) == 1  # card 8 has no row yet
    assert tracker.seen == {10: 5.0}
    assert tracker.observe([7, 8], [1_999, 1_499], at=6.0) == 0
    assert tracker.observe([8, 7], [1_500, 2_500], at=7.0) == 2
    assert tracker.seen == {10: 5.0, 11: 7.0, 12: 7.0}
    assert tracker.cards() == []


def test_a_card_read_without_a_pending_transaction_changes_nothing() -> None:
    tracker = freshness.Tracker()
    tracker.add(1, card=3, time_ms=100)
    assert tracker.observe([4], [10_000], at=1.0) == 0
    assert tracker.observe([3], [100], at=2.0) == 1
    assert tracker.observe([3], [200], at=3.0) == 0
    assert tracker.seen == {1: 2.0}


def test_the_observed_cards_and_stamps_must_pair_up() -> None:
    with pytest.raises(ValueError):
        freshness.Tracker().observe([1, 2], [100], at=1.0)


def test_freshness_is_seen_minus_sent_for_the_transactions_seen() -> None:
    sent = {1: 100.0, 2: 100.5, 3: 101.0}
    seen = {1: 100.25, 3: 101.125, 9: 50.0}
    assert freshness.freshness_ms(sent, seen).tolist() == [250.0, 125.0]


def test_summary_counts_the_unseen_and_reads_the_poll_timing() -> None:
    sent = {t: 10.0 + t for t in range(5)}
    seen = {t: 10.0 + t + 0.1 * (t + 1) for t in range(4)}  # 100 .. 400 ms; 4 is never seen
    polls = np.array([[0.0, 0.004], [0.010, 0.016], [0.020, 0.022], [5.0, 5.004]])
    out = freshness.summarise(sent, seen, 200.0, polls)
    assert out["freshness_measured_at_200eps"] == 4
    assert out["freshness_unseen_at_200eps"] == 1
    assert out["freshness_p50_ms_at_200eps"] == pytest.approx(250.0)
    assert out["freshness_p99_ms_at_200eps"] == pytest.approx(397.0)
    assert out["freshness_max_ms_at_200eps"] == pytest.approx(400.0)
    assert out["freshness_poll_read_p50_ms"] == pytest.approx(4.0)
    assert out["freshness_poll_interval_p50_ms"] == pytest.approx(10.0)  # the idle gap is out
    assert out["freshness_poll_interval_p99_ms"] == pytest.approx(10.0)


def test_breakdown_splits_the_freshness_of_alerted_transactions_into_parts_that_add_up() -> None:
    sent = {1: 100.0, 2: 200.0, 3: 300.0}
    seen = {1: 100.300, 2: 200.300}
    body = {"processing_latency_ms": 150.0, "feature_age_ms": 50.0}
    alerts = [(1, 100.200, body), (2, 200.200, body), (3, 300.2, body), (4, 1.0, body)]
    out = freshness.breakdown(sent, seen, alerts)
    assert out["freshness_breakdown_alerts"] == 2  # 3 was not seen, 4 not measured
    parts = [out[f"freshness_breakdown_{p}_p50_ms"] for p in ("pull", "features", "store")]
    assert parts == pytest.approx([50.0, 100.0, 150.0])
    assert sum(parts) == pytest.approx(out["freshness_breakdown_freshness_p50_ms"])
    assert out["freshness_breakdown_alert_p50_ms"] == pytest.approx(200.0)


def test_no_alert_measured_gives_an_empty_breakdown() -> None:
    assert freshness.breakdown({1: 0.0}, {1: 0.1}, []) == {"freshness_breakdown_alerts": 0}


def test_stamps_come_from_the_features_event_times_where_present() -> None:
    from feast.protos.feast.serving.ServingService_pb2 import (
        FieldStatus,
        GetOnlineFeaturesResponse,
    )

    proto = GetOnlineFeaturesResponse()
    proto.metadata.feature_names.val.extend(["CUSTOMER_ID", freshness.FEATURE])
    proto.results.add()  # the join key's column
    column = proto.results.add()
    for seconds, nanos, status in [
        (1_700_000_000, 250_000_000, FieldStatus.PRESENT),
        (0, 0, FieldStatus.NOT_FOUND),
        (1_600_000_000, 999_999, FieldStatus.OUTSIDE_MAX_AGE),
    ]:
        column.values.add().double_val = 1.0
        column.statuses.append(status)
        stamp = column.event_timestamps.add()
        stamp.seconds, stamp.nanos = seconds, nanos
    response = SimpleNamespace(proto=proto)
    assert freshness.stamps_from(response) == [1_700_000_000_250, None, None]
