from datetime import timedelta

import pytest

from features import presets
from features.spec import (
    AMOUNT,
    CUSTOMER,
    FRAUD,
    TERMINAL,
    Aggregate,
    FeatureSpec,
    Op,
    duration_label,
)

HANDBOOK_NAMES = [
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
]


def test_baseline_names_are_the_handbooks():
    assert presets.BASELINE.names == HANDBOOK_NAMES


def test_default_preset_is_a_superset_with_unique_names():
    names = presets.DEFAULT.names
    assert set(HANDBOOK_NAMES) <= set(names)
    assert len(names) == len(set(names))


def test_every_label_feature_of_the_default_preset_is_delayed():
    for agg in presets.DEFAULT.aggregates:
        if agg.column.is_label:
            assert agg.delay >= presets.LABEL_DELAY


@pytest.mark.parametrize(
    ("delta", "label"),
    [
        (timedelta(days=30), "30DAY"),
        (timedelta(hours=1), "1HOUR"),
        (timedelta(minutes=90), "90MIN"),
        (timedelta(seconds=45), "45SEC"),
    ],
)
def test_duration_labels(delta, label):
    assert duration_label(delta) == label


def test_undelayed_label_aggregate_is_rejected_as_leakage():
    with pytest.raises(ValueError, match="needs a delay"):
        FeatureSpec("bad", aggregates=(Aggregate(TERMINAL, Op.MEAN, timedelta(days=1), FRAUD),))


def test_duplicate_names_are_rejected():
    agg = Aggregate(CUSTOMER, Op.MEAN, timedelta(days=1), AMOUNT)
    with pytest.raises(ValueError, match="not unique"):
        FeatureSpec("bad", aggregates=(agg, agg))


def test_delay_other_than_the_label_delay_shows_in_the_name():
    agg = Aggregate(TERMINAL, Op.COUNT, timedelta(days=1), delay=timedelta(days=2))
    assert agg.name(timedelta(days=7)) == "TERMINAL_ID_NB_TX_1DAY_WINDOW_DELAY_2DAY"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="baseline"):
        presets.get("nope")


def test_fingerprint_is_stable_and_distinguishes_specs():
    assert presets.BASELINE.fingerprint() == presets.get("baseline").fingerprint()
    assert presets.BASELINE.fingerprint() != presets.DEFAULT.fingerprint()
