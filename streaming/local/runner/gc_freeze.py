"""The objects a local job loads at start, kept out of the cyclic collector's full passes.

This patch replaces nothing of Beam's (it only calls ``gc.freeze``), so it has no Beam version
or shape to check.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

GC_SETTLE_S = 30.0

Later = Callable[[float, Callable[[], object]], object]
"""Calls a function once, that many seconds from now, without blocking the caller."""


def in_a_timer_thread(delay_s: float, call: Callable[[], object]) -> object:
    """The default :data:`Later`: a daemon ``threading.Timer``."""
    timer = threading.Timer(delay_s, call)
    timer.daemon = True
    timer.start()
    return timer


def freeze_startup_objects(settle_s: float = GC_SETTLE_S, later: Later = in_a_timer_thread) -> None:
    """``gc.freeze()`` now and once more after ``settle_s`` (by then the first bundles have
    loaded the kernels, the model and Feast), so that the cyclic collector's full passes skip
    the objects a job keeps for its whole life. Those passes took 170-200 ms each, every
    transaction in flight waiting; frozen, 10-45 ms. The price: cyclic garbage pending at either
    moment is never collected (a one-time, bounded amount)."""
    gc.freeze()
    later(settle_s, gc.freeze)
