"""The DirectRunner's scan for due timers, limited to the states that can hold one.

The runner looks for due timers by asking every keyed state of every stateful step on every
scheduling round, an O(keys) scan (a stream has a key per card and per terminal):
:func:`skip_keys_without_timers` skips the steps whose DoFn declares no timer and, elsewhere,
the states that hold none.
"""

from __future__ import annotations

from typing import Any

from streaming.local.runner.guard import Replaced, patch_once

_WM = "apache_beam.runners.direct.watermark_manager"
REPLACED = (
    Replaced(f"{_WM}:_TransformWatermarks.__init__", "346c2388fc088173"),
    Replaced(f"{_WM}:_TransformWatermarks.extract_transform_timers", "897adb07f063798e"),
    # the states asked; a state's ``timers`` maps each window to its timers
    Replaced("apache_beam.transforms.trigger:InMemoryUnmergedState.__init__", "7616afbb137436ca"),
    Replaced("apache_beam.transforms.trigger:InMemoryUnmergedState.get_timers", "bfeaafd1883ed346"),
)


@patch_once(
    "skip_keys_without_timers", f"{_WM}:_TransformWatermarks", "_fraudstream_tuned", REPLACED
)
def skip_keys_without_timers() -> None:
    """Patch ``_TransformWatermarks.extract_transform_timers`` to ask only the keyed states
    that hold a timer, and none at all for a stateful ``ParDo`` whose DoFn declares no timer
    (same result: a state without timers has none to fire). Idempotent; returns whether the
    scan is patched (False: Beam is not what the patch was written for)."""
    from apache_beam.runners.direct import watermark_manager as wm

    cls = wm._TransformWatermarks
    init = cls.__init__

    def __init__(self: Any, clock: Any, keyed_states: Any, transform: Any) -> None:
        init(self, clock, keyed_states, transform)
        self._fraudstream_timerless = _declares_no_timers(transform)

    def extract_transform_timers(self: Any) -> tuple[list, bool]:
        if self._fraudstream_timerless:
            return [], False
        with self._lock:
            fired, has_realtime = [], False
            now = self._clock.time()
            for encoded_key, state in self._keyed_states.items():
                timers_by_window = getattr(state, "timers", None)
                if timers_by_window is not None and not any(timers_by_window.values()):
                    continue
                timers, realtime = state.get_timers(
                    watermark=self._input_watermark, processing_time=now
                )
                has_realtime = has_realtime or realtime
                for window, (name, domain, timestamp, tag) in timers:
                    fired.append(
                        wm.TimerFiring(
                            encoded_key, window, name, domain, timestamp, dynamic_timer_tag=tag
                        )
                    )
            self._fired_timers.update(fired)
            return fired, has_realtime

    cls.__init__ = __init__
    cls.extract_transform_timers = extract_transform_timers


def _declares_no_timers(applied: Any) -> bool:
    """Whether ``applied`` is a ParDo of a stateful DoFn without timer specs (a grouping or a
    splittable DoFn keeps its timers in keyed state too: those are not skipped)."""
    import apache_beam as beam
    from apache_beam.transforms import userstate

    transform = getattr(applied, "transform", None)
    if type(transform) is not beam.ParDo or not userstate.is_stateful_dofn(transform.fn):
        return False
    return not userstate.get_dofn_specs(transform.fn)[1]
