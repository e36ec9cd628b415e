"""The DirectRunner's per-bundle copy of a keyed state, without deep copies of empty parts.

Before a bundle first touches a key's state, the DirectRunner copies it
(``DirectStepContext.get_keyed_state`` calls ``InMemoryUnmergedState.copy``) so that a failed
bundle leaves nothing behind. The copy runs ``copy.deepcopy`` on the state's timers and global
state even when they are empty, which they are for a stateful DoFn without timers (the job's
entity states): with a key per card and per terminal, that is one deep copy per element and
about a seventh of the job's time on the runner's thread. :func:`copy_keyed_states_lightly`
leaves an empty part as the new state's own empty one and copies everything else as Beam does,
so a copy is what Beam's would be.
"""

from __future__ import annotations

import copy
from typing import Any

from apache_beam.transforms import trigger

from streaming.local.runner.guard import Replaced, patch_once

_TRIGGER = "apache_beam.transforms.trigger"
REPLACED = (
    Replaced(f"{_TRIGGER}:InMemoryUnmergedState.copy", "ee2487c6676bf0d0"),
    # relied on: a new state's timers, global state and state are empty containers
    Replaced(f"{_TRIGGER}:InMemoryUnmergedState.__init__", "7616afbb137436ca"),
)


@patch_once(
    "copy_keyed_states_lightly", f"{_TRIGGER}:InMemoryUnmergedState", "_fraudstream_tuned", REPLACED
)
def copy_keyed_states_lightly() -> None:
    """Patch ``InMemoryUnmergedState.copy`` to skip the deep copy of empty timers and global
    state (idempotent). Returns whether it is patched (False: Beam is not what the patch was
    written for)."""
    trigger.InMemoryUnmergedState.copy = light_copy


def light_copy(self: Any) -> Any:
    """``InMemoryUnmergedState.copy``, deep-copying the timers and the global state only when
    they hold something (a new state's are empty already)."""
    clone = trigger.InMemoryUnmergedState(defensive_copy=self.defensive_copy)
    if self.timers:
        clone.timers = copy.deepcopy(self.timers)
    if self.global_state:
        clone.global_state = copy.deepcopy(self.global_state)
    for window, tags in self.state.items():
        if tags:  # Beam's copy makes no entry for a window without tags
            cloned = clone.state[window]
            for tag, values in tags.items():
                cloned[tag] = copy.copy(values)
    return clone
