"""``bench/lookup.py``: the read figures alone, and a short run on a synthetic history (a
benchmark run on the emulators: marked slow)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench import lookup
from streaming.local import emulators as emu


def _run(warm: dict[str, int], end: dict[str, int]) -> lookup.Run:
    return lookup.Run("enriched", np.array([]), {}, warm, end, pd.DataFrame())


def test_reads_count_the_measured_phase_per_1000_transactions_and_the_warm_up_per_run() -> None:
    runs = [
        _run(
            {"feature_lookups": 3, "feature_lookup_rows": 15_000},
            {"feature_lookups": 4, "feature_lookup_rows": 15_010},
        ),
        _run(
            {"feature_lookups": 5, "feature_lookup_rows": 15_200},
            {"feature_lookups": 5, "feature_lookup_rows": 15_200},
        ),
    ]
    assert lookup.reads(runs, transactions=500) == {
        "lookup_reads_per_1k_tx": 1.0,  # one read over 2 x 500 measured transactions
        "lookup_rows_read_per_1k_tx": 10.0,
        "lookup_tx_per_read": 1000.0,
        "lookup_warmup_reads_per_run": 4.0,
        "lookup_warmup_rows_read_per_run": 15_100.0,
    }


def test_no_read_at_steady_state_gives_no_transactions_per_read() -> None:
    warm = {"feature_lookups": 2, "feature_lookup_rows": 900}
    figures = lookup.reads([_run(warm, dict(warm))], transactions=100)
    assert figures["lookup_reads_per_1k_tx"] == figures["lookup_rows_read_per_1k_tx"] == 0
    assert "lookup_tx_per_read" not in figures


@pytest.mark.slow
@pytest.mark.emulator
def test_a_short_run_measures_both_presets_and_reads_what_training_joins() -> None:
    reason = emu.gcloud_available(("pubsub", "bigtable"))
    if reason:
        pytest.skip(reason)
    result = lookup.bench_lookup(
        data=None, rate=120.0, seconds=5.0, rounds=1, warm=100, settle=200, prime=False,
        job_flags=("--scored_flush_s", "1"),
    )  # fmt: skip
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
    # the job's totals lines were read: the warm-up counted the scan of every stored row, and
    # with the day's materialization in the cache the measured phase read nothing
    assert result["lookup_snapshot_rows"] > 0
    assert result["lookup_warmup_reads_per_run"] >= 2  # one scan per batch view
    assert result["lookup_warmup_rows_read_per_run"] >= result["lookup_snapshot_rows"]
    assert result["lookup_reads_per_1k_tx"] == result["lookup_rows_read_per_1k_tx"] == 0
    assert result["lookup_with_stored_values"] > 0.5
    assert result["lookup_values_as_training"] == 1.0
