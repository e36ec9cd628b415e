"""The local runner's freeze of the objects loaded at start; the test runs the settling time."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

from streaming.local.runner.gc_freeze import freeze_startup_objects, in_a_timer_thread


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
