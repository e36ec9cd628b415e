"""Kernel building blocks checked on their own: std, min and max from running extras, the
calendar columns, the prefetch hint and borrowed arrays."""

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


def _slide(times: np.ndarray, vals: np.ndarray, window: int) -> list[tuple[int, int, list]]:
    """Each event's window ``(t - window, t]`` moved as the stream moves it, with its range and
    its std, min and max features from the running sums and extras."""
    ext, out = np.zeros(4), np.full((1, 3), -1.0)
    b = e = 0
    total = comp = 0.0
    seen = []
    for i in range(len(times)):
        b0, e0 = b, e
        b, e, total, comp = kernels._step(
            times, vals, 1, i + 1, times[i], window, b0, e0, total, comp
        )
        ext[:] = kernels._extend(vals, 1, b0, e0, b, e, *ext)
        kernels._scanned(vals, b, e, 1, total + comp, ext, 0, 2, 0, 1, out, 0)
        seen.append((b, e, out[0].tolist()))
    return seen


def test_running_extras_give_std_min_and_max_of_a_moving_window():
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.integers(0, 5, 600)).astype(np.int64)
    times[300:] += 1_000  # a gap longer than the window: it empties and restarts
    vals = rng.lognormal(4, 1, size=(600, 3))
    vals[::5, 1] = np.round(vals[::5, 1] / 20) * 20  # ties, also of extremes
    for i, (b, e, (lo, hi, std)) in enumerate(_slide(times, vals, 40)):
        inside = vals[: i + 1, 1][times[: i + 1] > times[i] - 40]
        assert (b, e) == (i + 1 - len(inside), i + 1)
        assert lo == inside.min() and hi == inside.max()
        np.testing.assert_allclose(std, inside.std(), rtol=1e-9)


def test_equal_values_have_a_std_of_zero_and_an_empty_window_none():
    times = np.array([0, 1, 2, 3, 100], np.int64)
    vals = np.full((5, 2), 0.1)
    seen = _slide(times, vals, 10)
    assert [std for *_, (_, _, std) in seen] == [0.0] * 5
    ext, out = np.array([0.0, 0.0, np.inf, -np.inf]), np.full((1, 3), -1.0)
    kernels._scanned(vals, 3, 3, 1, 0.0, ext, 0, 2, 0, 1, out, 0)
    assert out[0, 2] == 0.0 and np.isnan(out[0, :2]).all()


def test_an_extreme_that_leaves_is_found_again_by_a_scan():
    vals = np.array([[0.0, v] for v in (5.0, 9.0, 1.0, 7.0, 3.0)])
    ext = np.array(kernels._extend(vals, 1, 0, 0, 0, 5, 0.0, 0.0, 0.0, 0.0))
    assert ext[2:].tolist() == [1.0, 9.0]
    ext[:] = kernels._extend(vals, 1, 0, 5, 2, 5, *ext)  # 5 and 9 leave: the max is unknown
    assert ext[2] == 1.0 and np.isnan(ext[3])
    out = np.full((1, 3), -1.0)
    kernels._scanned(vals, 2, 5, 1, 11.0, ext, 0, -1, -1, 1, out, 0)
    assert out.tolist() == [[-1.0, 7.0, -1.0]] and ext[3] == 7.0  # kept for the next reads


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
