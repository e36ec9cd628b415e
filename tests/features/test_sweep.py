"""The time-ordered sweeps of the backfill: which windows they take, and their values."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest

from features import backfill as backfill_module
from features import presets, sweep
from features.backfill import Sweeps, backfill, group_keys
from features.plan import EntityPlan
from features.spec import (
    AMOUNT,
    CUSTOMER,
    DAY,
    FRAUD,
    TERMINAL,
    Aggregate,
    FeatureSpec,
    Op,
    SincePrevious,
)
from features.stream import stream_features
from features.synthetic import transactions
from features.table import event_times_ns

MIN = timedelta(minutes=1)
NS_PER_MIN = 60 * 10**9


@pytest.mark.parametrize(
    ("values", "exact"),
    [
        ([], True),
        ([0.0, 1.0, 1.0, 0.0], True),
        ([-3.0, 4.0, 1e6], True),
        ([1.0, 0.5], False),
        ([2.0**52, 2.0**52], False),  # the sum leaves the integers float64 holds exactly
        ([1e300], False),
        ([1.0, np.nan], False),
        ([1.0, np.inf], False),
        ([1.0] * 5_000 + [0.5], False),  # in a later block than the first
        ([2.0**40] * 3_000 + [2.0**40] * 3_000, False),  # over the limit across blocks
    ],
)
def test_exact_sums_are_those_of_integers_far_below_2_to_the_53(values, exact):
    assert sweep.exact_sums(np.array(values, np.float64)) is exact


def _plan_walks(amounts: np.ndarray) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """(swept, grouped) walks of a terminal plan, as (delay in minutes, column)."""
    spec = FeatureSpec(
        name="walks",
        aggregates=(
            Aggregate(TERMINAL, Op.MEAN, 5 * MIN),  # no delay: swept
            Aggregate(TERMINAL, Op.MEAN, 5 * MIN, column=FRAUD, delay=10 * MIN),  # exact: swept
            Aggregate(TERMINAL, Op.MEAN, 60 * MIN, delay=10 * MIN),  # swept only if exact
            Aggregate(TERMINAL, Op.COUNT, 30 * MIN, delay=10 * MIN),  # a count: swept
            Aggregate(TERMINAL, Op.MAX, 5 * MIN),  # a scan: grouped
        ),
        label_delay=10 * MIN,
    )
    plan = EntityPlan.build(spec, TERMINAL)
    n = len(amounts)
    values = {AMOUNT.name: amounts, FRAUD.name: np.zeros(n)}
    sweeps = Sweeps(np.arange(n, dtype=np.int64), np.empty(0, np.int64), values)
    keys, lo, n_groups = group_keys(np.zeros(n, np.int64))
    rest = sweeps.add(plan, keys, lo, n_groups)

    def described(walks: np.ndarray) -> set[tuple[int, str]]:
        return {(int(plan.dly[w[0]]) // NS_PER_MIN, plan.columns[w[1]]) for w in walks}

    grouped = described(rest)
    return described(plan.walks) - grouped, grouped


def test_windows_a_sweep_cannot_do_bit_for_bit_are_walked_grouped():
    swept, grouped = _plan_walks(np.array([10.25, 3.5]))
    assert (0, AMOUNT.name) in grouped  # the max scans its window
    assert (10, AMOUNT.name) in grouped  # a delayed sum of cents: order matters
    assert (10, FRAUD.name) in swept
    whole, _ = _plan_walks(np.array([10.0, 3.0]))  # whole amounts: any order, same sum
    assert (10, AMOUNT.name) in whole


def _brute_force(times, keys, vals, window, delay):
    """Count and sum of each event's entity over ``(t - delay - window, t - delay]``, events
    taken up to and including itself (in the given order)."""
    counts, sums = np.empty(len(times)), np.empty(len(times))
    for p in range(len(times)):
        hi = times[p] - delay
        mask = (keys[: p + 1] == keys[p]) & (times[: p + 1] > hi - window) & (times[: p + 1] <= hi)
        counts[p], sums[p] = mask.sum(), vals[: p + 1][mask].sum()
    return counts, sums


@pytest.mark.parametrize("delay", [0, 7])
def test_sweeps_give_each_events_window_count_sum_and_mean(delay):
    rng = np.random.default_rng(delay)
    n = 400
    times = np.sort(rng.integers(0, 300, n)).astype(np.int64)  # many ties
    keys = rng.integers(10, 15, n).astype(np.int64)
    vals = rng.integers(0, 3, n).astype(np.float64)  # exact, as a delayed sweep requires
    window = 20
    rows = rng.permutation(n).astype(np.int64)  # event p goes to output row rows[p]
    out = np.full((n, 3), np.nan, order="F")
    columns = (out[:, 0], out[:, 1], out[:, 2])
    args = (times, keys, 10, 5, vals, window)
    if delay:
        counts, sums = np.empty(n), np.empty(n)
        sweep.entered(times, keys, 10, 5, vals, delay, counts, sums)
        sweep.delayed(*args, delay, counts, sums, *columns, rows)
    else:
        sweep.recent(*args, False, *columns, rows)
    count, total = _brute_force(times, keys, vals, window, delay)
    np.testing.assert_array_equal(out[rows, 0], count)
    np.testing.assert_array_equal(out[rows, 1], np.where(count > 0, total, 0.0))
    np.testing.assert_allclose(out[rows, 2], np.where(count > 0, total / np.maximum(count, 1), 0))


@pytest.mark.parametrize("windows", [(20, 45), (45, 20), (20, 20)])
def test_two_delayed_windows_in_one_loop_equal_each_alone(windows):
    """The pair's merges end at different steps (a longer window has fewer leaves before the
    last event); each window's columns are those of :func:`sweep.delayed` and brute force."""
    rng = np.random.default_rng(sum(windows))
    n, delay = 400, 7
    times = np.sort(rng.integers(0, 300, n)).astype(np.int64)
    keys = rng.integers(10, 15, n).astype(np.int64)
    vals = rng.integers(0, 3, n).astype(np.float64)
    rows = rng.permutation(n).astype(np.int64)
    counts, sums = np.empty(n), np.empty(n)
    sweep.entered(times, keys, 10, 5, vals, delay, counts, sums)
    pair = np.full((n, 6), np.nan, order="F")
    sweep.delayed_pair(
        times, keys, 10, 5, vals, delay, counts, sums, *windows, *pair.T, rows
    )  # fmt: skip
    for i, window in enumerate(windows):
        alone = np.full((n, 3), np.nan, order="F")
        sweep.delayed(times, keys, 10, 5, vals, window, delay, counts, sums, *alone.T, rows)
        np.testing.assert_array_equal(pair[:, 3 * i : 3 * i + 3], alone)
        count, total = _brute_force(times, keys, vals, window, delay)
        np.testing.assert_array_equal(pair[rows, 3 * i], count)
        np.testing.assert_array_equal(pair[rows, 3 * i + 1], np.where(count > 0, total, 0.0))


def test_seconds_since_previous_are_nan_for_an_entitys_first_event():
    times = np.array([0, 2, 5, 5, 9], np.int64) * 10**9
    keys = np.array([1, 2, 1, 1, 2], np.int64)
    out = np.empty((5, 1))
    sweep.since_previous(times, keys, 1, 2, out[:, 0], None)
    np.testing.assert_array_equal(out[:, 0], [np.nan, np.nan, 5.0, 0.0, 7.0])


def test_delayed_counts_and_gaps_equal_the_streams_bit_for_bit():
    """Windows that only count (no values read) and seconds since the previous event, which
    no preset sweeps with a delay, against the stream's kernels."""
    spec = FeatureSpec(
        name="counts",
        aggregates=(
            Aggregate(TERMINAL, Op.COUNT, 2 * DAY, delay=DAY),
            Aggregate(TERMINAL, Op.COUNT, 7 * DAY, delay=DAY),
            Aggregate(CUSTOMER, Op.COUNT, 3 * DAY, delay=2 * DAY),
        ),
        since_previous=(SincePrevious(CUSTOMER), SincePrevious(TERMINAL)),
        label_delay=DAY,
    )
    df = transactions(n=3_000, customers=20, terminals=30, days=40)
    expected = backfill(df, spec)[spec.names].to_numpy()
    streamed = stream_features(df, spec, batch_size=301)[spec.names].to_numpy()
    np.testing.assert_array_equal(expected, streamed)


def test_sweeps_on_threads_equal_those_run_one_after_another(monkeypatch):
    """A history long enough for threads: each delay's windows run as tasks of their own
    once what entered is counted, and the features equal those of a serial run."""
    spec = presets.BASELINE
    df = transactions(n=backfill_module._PARALLEL_EVENTS + 5_000, days=60)
    threaded = backfill(df, spec)[spec.names].to_numpy()
    monkeypatch.setattr(backfill_module, "_PARALLEL_EVENTS", len(df) + 1)
    serial = backfill(df, spec)[spec.names].to_numpy()
    np.testing.assert_array_equal(threaded, serial)


def test_a_delays_windows_get_threads_of_their_own_once_what_entered_is_counted(monkeypatch):
    """The terminal's sweeps alone: one task at first (what entered), whose follow-ups (two
    windows in one loop, then the third) still run side by side: each waits for the other at a
    barrier, which a single thread would never pass."""
    spec = presets.BASELINE
    plan = EntityPlan.build(spec, TERMINAL)
    df = transactions(n=3_000, days=60)
    times = event_times_ns(df)
    values = {c: df[c].to_numpy(np.float64) for c in spec.value_columns}
    keys, lo, n_groups = group_keys(df[TERMINAL.key].to_numpy(np.int64))

    def run() -> np.ndarray:
        sweeps = Sweeps(times, np.empty(0, np.int64), values)
        assert not len(sweeps.add(plan, keys, lo, n_groups))  # every window swept
        out = np.full((len(df), len(spec.names)), np.nan, order="F")
        sweeps.run(out)
        return out[:, plan.offset : plan.offset + plan.n_out]

    expected = run()
    meeting = threading.Barrier(2, timeout=20)

    def meets(kernel):
        def call(*args):
            meeting.wait()
            kernel(*args)

        return call

    monkeypatch.setattr(sweep, "delayed", meets(sweep.delayed))
    monkeypatch.setattr(sweep, "delayed_pair", meets(sweep.delayed_pair))
    monkeypatch.setattr(backfill_module, "_PARALLEL_EVENTS", 1)
    monkeypatch.setattr(backfill_module.numba, "get_num_threads", lambda: 2)
    np.testing.assert_array_equal(run(), expected)
    assert not np.isnan(expected).any()


def test_an_emptied_window_restarts_at_positive_zero_as_the_streams_does():
    """A window of negative amounts empties with a rounding residue below zero; the stream
    restarts it at +0.0, so an amount of -0.0 entering next sums to +0.0, not -0.0."""
    import pandas as pd

    spec = FeatureSpec(
        name="zeros",
        aggregates=(Aggregate(CUSTOMER, Op.SUM, MIN), Aggregate(CUSTOMER, Op.MEAN, MIN)),
        label_delay=MIN,
    )
    amounts = [-0.1, -0.2, -0.0]
    df = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(3, dtype=np.int64),
            "TX_DATETIME": pd.Timestamp("2018-04-01") + pd.to_timedelta([0, 1, 600], unit="s"),
            "CUSTOMER_ID": np.zeros(3, np.int64),
            "TERMINAL_ID": np.zeros(3, np.int64),
            "TX_AMOUNT": amounts,
            "TX_FRAUD": np.zeros(3, np.int64),
        }
    )
    names = [a.name(spec.label_delay) for a in spec.aggregates]
    expected = stream_features(df, spec, batch_size=1)[names].to_numpy()
    got = backfill(df, spec)[names].to_numpy()
    assert np.signbit(expected[2]).tolist() == [False, False]  # the stream's +0.0
    np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))
