"""The local runner's global window: built once, the same window as Beam's."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from streaming.local.runner import global_window

_BEAMS_INIT = GlobalWindow.__dict__["__init__"]  # as collected, before any test patches it


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch applied for the test, Beam's ``__init__`` restored after it."""
    monkeypatch.setattr(GlobalWindow, "__init__", _BEAMS_INIT)
    monkeypatch.setattr(GlobalWindow, "_fraudstream_tuned", False, raising=False)
    assert global_window.build_global_window_once()


def test_the_window_is_beams_singleton_with_beams_end(patched):
    end = GlobalWindow._getTimestampFromProto()
    window = GlobalWindow()
    assert window is GlobalWindow() and window.end == end
    assert window.max_timestamp() == end.predecessor()
    value = GlobalWindows.windowed_value("x", timestamp=5)
    assert value.windows == (window,) and value.windows[0].end == end


def test_the_end_is_read_from_beams_protos_once(patched, monkeypatch: pytest.MonkeyPatch):
    reads = []
    beams = GlobalWindow._getTimestampFromProto

    def counted():
        reads.append(1)
        return beams()

    monkeypatch.setattr(GlobalWindow, "_getTimestampFromProto", staticmethod(counted))
    for _ in range(100):
        GlobalWindows.windowed_value("x")
    assert reads == []  # the singleton's end was set when the test's first window was built


def test_a_pipeline_in_the_global_window_runs_as_before(patched):
    with beam.Pipeline() as p:
        got = (
            p
            | beam.Create([1, 2, 3])
            | beam.Map(lambda x, w=beam.DoFn.WindowParam: (x, w == GlobalWindow()))
        )
        assert_that(got, equal_to([(1, True), (2, True), (3, True)]))
