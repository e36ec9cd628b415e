"""The evaluation protocol on tiny hand-made frames with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.protocol import Split, card_precision_at_k, metrics, scored_rows


def frame(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """(timestamp, card, fraud) rows."""
    t, card, fraud = zip(*rows, strict=True)
    return pd.DataFrame(
        {"TX_DATETIME": pd.to_datetime(list(t)), "CUSTOMER_ID": card, "TX_FRAUD": fraud}
    )


def test_split_of_the_published_protocol():
    s = Split.build("2018-07-25")
    assert (str(s.train_start.date()), str(s.train_end.date())) == ("2018-07-25", "2018-08-01")
    assert (str(s.test_start.date()), str(s.test_end.date())) == ("2018-08-08", "2018-08-15")
    longer = Split.build("2018-07-25", train_days=28)
    assert str(longer.train_start.date()) == "2018-07-04" and longer.train_end == s.train_end
    assert longer.test_start == s.test_start


def test_split_rejects_less_than_a_week_and_data_that_do_not_cover_it():
    with pytest.raises(ValueError, match="train_days must be >= 7"):
        Split.build("2018-07-25", train_days=3)
    times = pd.Series(pd.to_datetime(["2018-07-25", "2018-08-10"]))
    with pytest.raises(ValueError, match="covers 2018-07-25 to 2018-08-10"):
        Split.build("2018-07-25").check_data(times)


def test_known_compromised_cards_are_removed_day_by_day():
    df = frame(
        [
            ("2018-07-26 10:00", 1, 1),  # fraud in the training week: card 1 known from day 0
            ("2018-08-02 10:00", 2, 1),  # fraud on the second delay day (= 08-10 minus 8)
            ("2018-08-08 09:00", 1, 0),  # dropped (card 1 known)
            ("2018-08-08 09:00", 2, 0),  # kept: card 2 not known yet on 08-08
            ("2018-08-09 09:00", 2, 0),  # kept: 08-02's labels become known on 08-10
            ("2018-08-10 09:00", 2, 0),  # dropped
            ("2018-08-10 09:00", 3, 1),  # kept
            ("2018-08-15 00:00", 3, 0),  # after the test week
        ]
    )
    keep = scored_rows(df, Split.build("2018-07-25"))
    assert keep.tolist() == [False, False, False, True, True, False, True, False]


def test_card_precision_uses_card_maxima_and_removes_detected_cards():
    day1, day2 = np.datetime64("2018-08-08"), np.datetime64("2018-08-09")
    days = np.array([day1, day1, day1, day1, day2, day2, day2])
    cards = np.array([1, 1, 2, 3, 1, 2, 3])
    labels = np.array([0, 1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.99, 0.3, 0.4])
    # k=2, day 1: cards 1 (max score 0.9, max label 1) and 2 -> 1/2, card 1 detected;
    # day 2: card 1 removed, cards 3 (fraud) and 2 -> 1/2.
    assert card_precision_at_k(days, cards, labels, scores, k=2) == pytest.approx(0.5)
    # k=1: day 1 -> card 1 (1/1); day 2 -> card 3 (1/1)
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx(1.0)


def test_metrics_on_a_perfect_ranking():
    df = frame([("2018-08-08 01:00", i, int(i < 3)) for i in range(10)])
    scores = np.linspace(1, 0, 10)
    result = metrics(df, scores, k=100)
    assert result["auc"] == 1.0 and result["ap"] == 1.0
    assert result["cp_at_100"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="single class"):
        metrics(df.assign(TX_FRAUD=0), scores)
