"""The local runner's keyed-state copies: what Beam's would be, and independent of the original."""

from __future__ import annotations

import pytest
from apache_beam.runners.direct.evaluation_context import DirectStepContext, DirectUnmergedState
from apache_beam.transforms import trigger
from apache_beam.transforms.combiners import CountCombineFn
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from streaming.local.runner import state_copy

BEAMS_COPY = trigger.InMemoryUnmergedState.copy  # as imported, before any test patches it
RMW = trigger._ReadModifyWriteStateTag("entity_state")
BAG = trigger._ListStateTag("buffer")
COUNT = trigger._CombiningValueStateTag("count", CountCombineFn())


def _contents(state: trigger.InMemoryUnmergedState) -> tuple:
    """Everything a state holds, as plain values (windows and tags as they are keyed)."""
    return (
        {w: dict(t) for w, t in state.timers.items()},
        dict(state.global_state),
        {w: {tag: list(v) if isinstance(v, list) else v for tag, v in t.items()}
         for w, t in state.state.items()},
        state.defensive_copy,
    )  # fmt: skip


def _states() -> list[trigger.InMemoryUnmergedState]:
    """A fresh state, an entity state (one value), and one with a bag, counts, timers and
    global state (an event-time buffer in a merging window)."""
    fresh = DirectUnmergedState()
    entity = DirectUnmergedState()
    entity.add_state(GlobalWindow(), RMW, b"\x01state")
    busy = DirectUnmergedState()
    window = IntervalWindow(0, 10)
    busy.add_state(window, BAG, (1, "tx"))
    busy.add_state(window, BAG, (2, "label"))
    busy.add_state(window, COUNT, 3)
    busy.set_timer(window, "flush", TimeDomain.WATERMARK, Timestamp(5))
    busy.set_global_state(trigger._ReadModifyWriteStateTag("window_ids"), {window: [0]})
    return [fresh, entity, busy]


@pytest.mark.parametrize("index", range(3))
def test_a_light_copy_holds_what_beams_copy_holds(index: int):
    state = _states()[index]
    ours, beams = state_copy.light_copy(state), BEAMS_COPY(state)
    assert type(ours) is type(beams)
    assert _contents(ours) == _contents(beams) == _contents(state)


def test_changing_a_light_copy_leaves_the_original_as_it_was():
    busy = _states()[2]
    before = _contents(busy)
    clone = state_copy.light_copy(busy)
    window = IntervalWindow(0, 10)
    clone.add_state(window, BAG, (3, "tx"))
    clone.set_timer(window, "flush", TimeDomain.WATERMARK, Timestamp(9))
    clone.get_global_state(trigger._ReadModifyWriteStateTag("window_ids"))[window].append(1)
    clone.add_state(GlobalWindow(), RMW, b"new")
    assert _contents(busy) == before


def test_a_bundle_reads_its_own_writes_and_commits_through_the_patched_copy(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(trigger.InMemoryUnmergedState, "_fraudstream_tuned", False, raising=False)
    monkeypatch.setattr(trigger.InMemoryUnmergedState, "copy", BEAMS_COPY)
    assert state_copy.copy_keyed_states_lightly()
    assert trigger.InMemoryUnmergedState.copy is state_copy.light_copy
    committed = {b"card": DirectUnmergedState()}
    committed[b"card"].add_state(GlobalWindow(), RMW, b"old")
    bundle = DirectStepContext(committed)
    state = bundle.get_keyed_state(b"card")
    state.add_state(GlobalWindow(), RMW, b"new")
    assert bundle.get_keyed_state(b"card").get_state(GlobalWindow(), RMW) == b"new"
    assert committed[b"card"].get_state(GlobalWindow(), RMW) == b"old"  # until committed
