"""Kernel building blocks checked on their own: the one-pass scan, the calendar columns, the
prefetch hint and borrowed arrays."""

from __future__ import annotations

import platform

import numpy as np
import pandas as pd
import pytest
from numba import njit, types
from numba.extending import intrinsic

from features import kernels
from features.borrow import borrowed
from features.prefetch import prefetch


def test_one_pass_scan_gives_std_min_and_max_of_any_range():
    rng = np.random.default_rng(7)
    vals = rng.lognormal(4, 1, size=(101, 3))
    out = np.full((1, 3), -1.0)
    for b, e in [(0, 101), (5, 6), (10, 43), (17, 18), (3, 100), (50, 52)]:
        column = vals[b:e, 1]
        kernels._scan(vals, b, e, 1, column.sum(), 2, 0, 1, out, 0)
        np.testing.assert_allclose(out[0, 2], column.std(), rtol=1e-12)
        assert out[0, 0] == column.min() and out[0, 1] == column.max()
    kernels._scan(vals, 9, 9, 1, 0.0, 2, 0, 1, out, 0)
    assert out[0, 2] == 0.0 and np.isnan(out[0, :2]).all()


def test_a_scan_writes_only_the_features_it_is_given():
    vals = np.arange(12.0).reshape(4, 3)
    out = np.full((1, 3), -1.0)
    kernels._scan(vals, 0, 4, 0, vals[:, 0].sum(), -1, -1, 1, out, 0)
    assert out.tolist() == [[-1.0, 9.0, -1.0]]


def _calendar_times(rng: np.random.Generator) -> np.ndarray:
    """Times in order (dense around hour, day and week boundaries, before and after 1970)."""
    starts = pd.to_datetime(["1969-12-27 05:00", "2018-04-01 00:00", "2024-02-28 23:00"]).asi8
    hour = 3_600 * 10**9
    edges = (np.arange(-3, 200) * hour)[:, None] + np.array([-1, 0, 1, hour // 2])
    spread = rng.integers(0, 21 * 24 * hour, 70_000)
    return np.sort(np.concatenate([(s + edges).ravel() for s in starts] + [starts[1] + spread]))


@pytest.mark.parametrize("shuffled", [False, True], ids=["in_order", "shuffled"])
@pytest.mark.parametrize("fill", [kernels.calendar, kernels.calendar_parallel])
def test_calendar_columns_equal_pandas_for_times_in_any_order(fill, shuffled):
    rng = np.random.default_rng(3)
    times = _calendar_times(rng)
    if shuffled:
        times = rng.permutation(times)
    stamps = pd.DatetimeIndex(times)
    out = np.full((len(times), 4), -1.0, order="F")
    fill(np.array([2, 0, 1]), times, out, 1)
    assert (out[:, 0] == -1.0).all()
    np.testing.assert_array_equal(out[:, 1], stamps.hour)
    np.testing.assert_array_equal(out[:, 2], stamps.dayofweek >= 5)
    np.testing.assert_array_equal(out[:, 3], stamps.hour <= 6)


@pytest.mark.parametrize("n", [0, 1, 2, 1_000])
def test_in_order_is_a_strict_lexicographic_order_of_time_then_id(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        times = np.sort(rng.integers(0, n // 3 + 1, n))  # many equal times
        ids = rng.permutation(n).astype(np.int64)
        ids[: n // 2] = np.sort(ids[: n // 2])
        if n and rng.random() < 0.5:  # ids sorted within each time: in order
            ids = ids[np.lexsort((ids, times))]
        if n > 1 and rng.random() < 0.2:
            ids[rng.integers(1, n)] = ids[0]  # a repeated id
        expected = all((times[r - 1], ids[r - 1]) < (times[r], ids[r]) for r in range(1, n))
        assert kernels.in_order(times, ids) is expected


def test_value_range_is_min_and_max():
    values = np.random.default_rng(0).integers(-(2**62), 2**62, 10_001)
    assert kernels.value_range(values) == (values.min(), values.max())
    assert kernels.value_range(np.array([7])) == (7, 7)


@njit
def _prefetch_then_read(array, row):
    prefetch(array, row, 0)
    return array[0, 0]


def test_prefetch_is_a_hint_that_never_faults():
    array = np.ones((4, 4))
    assert _prefetch_then_read(array, 1 << 40) == 1.0  # far outside any mapping
    if platform.machine() in ("x86_64", "AMD64"):
        (assembly,) = _prefetch_then_read.inspect_asm().values()
        assert "prefetcht0" in assembly


@intrinsic
def _owner(typingctx, array):
    """The address of ``array``'s meminfo (its owner, whose count views update); 0: none."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(data.meminfo, context.get_value_type(types.intp))

    return types.intp(array), codegen


@njit
def _owners_and_sum(array):
    lent = borrowed(array)
    row = lent[1]  # views of a borrowed array are borrowed too
    row[0] = 7.0  # and write to the caller's memory
    owners = (_owner(array), _owner(lent), _owner(row), _owner(row[1:].view(np.int64)))
    return owners, lent.sum()


def test_a_borrowed_array_and_its_views_have_no_owner_and_share_the_data():
    array = np.ones((3, 4))
    (own, lent, row, view), total = _owners_and_sum(array)
    assert own != 0 and lent == row == view == 0
    assert array[1, 0] == 7.0 and total == 18.0
