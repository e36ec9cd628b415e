"""The local job's garbage-collector settings: startup objects frozen (the test runs the
settling time), the youngest generation collected less often."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

import pytest

from streaming.local.runner.collector import (
    YOUNG_THRESHOLD,
    collect_young_less_often,
    freeze_startup_objects,
    in_a_timer_thread,
)


def test_objects_alive_at_start_and_after_the_settling_time_are_frozen():
    scheduled: list[tuple[float, Callable[[], object]]] = []
    try:
        freeze_startup_objects(settle_s=12.5, later=lambda s, f: scheduled.append((s, f)))
        at_start = gc.get_freeze_count()
        assert at_start > 0
        assert [s for s, _ in scheduled] == [12.5]
        kept = [[i] for i in range(2_000)]  # tracked objects loaded by the first bundles
        assert gc.get_freeze_count() == at_start
        scheduled[0][1]()  # the settling time is over
        assert gc.get_freeze_count() >= at_start + len(kept)
    finally:
        gc.unfreeze()


def test_the_later_freeze_runs_in_a_daemon_thread():
    ran = threading.Event()
    timer = in_a_timer_thread(0.0, ran.set)
    assert isinstance(timer, threading.Timer) and timer.daemon
    assert ran.wait(10.0)


def test_the_youngest_generation_waits_for_the_threshold_and_the_older_keep_theirs():
    before = gc.get_threshold()
    try:
        assert collect_young_less_often() == before
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        gc.collect()
        young = gc.get_count()[0]
        kept = [[i] for i in range(YOUNG_THRESHOLD // 2)]  # new containers, no collection yet
        assert gc.get_count()[0] >= young + len(kept)
    finally:
        gc.set_threshold(*before)


def test_a_threshold_below_one_is_refused():
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="at least 1"):
        collect_young_less_often(0)
    assert gc.get_threshold() == before
