"""``bench/lookup.py``: the read model alone, and a short run on a synthetic history (a benchmark
run on the emulators: marked slow)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench import lookup
from streaming.local import emulators as emu


def _day(cards: list[int], terminals: list[int]) -> lookup.World:
    whole_day = pd.DataFrame({"CUSTOMER_ID": cards, "TERMINAL_ID": terminals})
    empty = pd.DataFrame()
    return lookup.World("test", pd.Timestamp("2018-08-14"), empty, empty, 0, {}, whole_day)


def test_the_cache_model_reads_a_bundle_only_when_an_entity_is_new_that_day() -> None:
    day = _day(cards=[1, 1, 2, 1], terminals=[5, 5, 5, 6])
    # bundles of one: new (1, 5), nothing new, new card 2, new terminal 6
    assert lookup.cached_day_model(day, 1.0) == (750.0, 1000.0)
    # bundles of two: both hold a new entity; each id is read once
    assert lookup.cached_day_model(day, 2.0) == (500.0, 1000.0)
    # one bundle of all
    assert lookup.cached_day_model(day, 4.4) == (250.0, 1000.0)


@pytest.mark.slow
@pytest.mark.emulator
def test_a_short_run_measures_both_presets_and_reads_what_training_joins() -> None:
    reason = emu.gcloud_available(("pubsub", "bigtable"))
    if reason:
        pytest.skip(reason)
    result = lookup.bench_lookup(data=None, rate=60.0, seconds=10.0, rounds=1, warm=100)
    measured = result["lookup_transactions_measured"]
    assert result["lookup_data"].startswith("synthetic")
    assert measured == 300
    for preset in lookup.PRESETS:  # threshold 0: every measured transaction alerts
        assert result[f"lookup_alerts_measured_{preset}"] == measured
        p50, p99 = result[f"lookup_e2e_p50_ms_{preset}"], result[f"lookup_e2e_p99_ms_{preset}"]
        assert 0 < p50 <= p99
    ratio = result["lookup_p99_ratio"]
    assert math.isfinite(ratio) and ratio > 0
    assert result["lookup_e2e_p99_ms_by_run"].count(",") == 1  # one run of each
    # the job's totals lines were read: the stage made reads, at most two ids per transaction
    assert 0 < result["lookup_reads_per_1k_tx"] <= 1000
    assert result["lookup_reads_per_1k_tx"] <= result["lookup_rows_read_per_1k_tx"] <= 2000
    assert result["lookup_rows_read_per_1k_tx_cached_day_model"] <= 2000
    assert result["lookup_snapshot_rows"] > 0
    assert result["lookup_with_stored_values"] > 0.5
    assert result["lookup_values_as_training"] == 1.0
