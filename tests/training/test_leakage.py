"""No leakage: a training feature never depends on a label newer than the label delay."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from features import presets
from features.backfill import backfill
from features.synthetic import transactions
from features.table import validate

SPEC = presets.DEFAULT
DF = validate(transactions(n=3_000, customers=30, terminals=20, days=50, fraud_rate=0.1), SPEC)
BASE = backfill(DF, SPEC)[SPEC.names].to_numpy()


@settings(max_examples=25, deadline=None)
@given(cutoff_day=st.floats(8, 49), seed=st.integers(0, 2**32 - 1))
def test_labels_newer_than_the_delay_do_not_change_any_feature(cutoff_day, seed):
    cutoff = DF["TX_DATETIME"].min() + pd.Timedelta(days=cutoff_day)
    newer = (DF["TX_DATETIME"] > cutoff - SPEC.label_delay).to_numpy()
    flipped = DF.copy()
    rng = np.random.default_rng(seed)
    flipped.loc[newer, "TX_FRAUD"] = rng.integers(0, 2, int(newer.sum()))
    features = backfill(flipped, SPEC)[SPEC.names].to_numpy()
    seen = (DF["TX_DATETIME"] <= cutoff).to_numpy()
    np.testing.assert_array_equal(features[seen], BASE[seen])
    # and the labels do matter once they are old enough (the test could fail)
    assert not np.array_equal(features[~seen], BASE[~seen], equal_nan=True) or not newer.any()
