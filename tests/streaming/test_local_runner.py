"""The local runner's patches together: all of them fit the pinned Beam, and each one that does
not fit is skipped with a warning, leaving Beam as it was.

The patches themselves are tested in ``test_runner_<module>.py``.
"""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam
import pytest

from streaming.local.runner import (
    dofn_cache,
    empty_bundles,
    event_times,
    global_window,
    guard,
    publishers,
    pubsub_read,
    read_options,
    state_copy,
    timers,
)

# each Beam patch, what it replaces, and the attribute that marks it applied
PATCHES: dict[str, tuple[Callable[[], bool], Sequence[guard.Replaced], tuple[str, str]]] = {
    "tune_direct_pubsub_read": (
        pubsub_read.tune_direct_pubsub_read,
        pubsub_read.REPLACED,
        (
            "apache_beam.runners.direct.transform_evaluator:_PubSubReadEvaluator",
            "_fraudstream_tuned",
        ),
    ),
    "cache_dofn_introspection": (
        dofn_cache.cache_dofn_introspection,
        dofn_cache.REPLACED,
        ("apache_beam.transforms.core", "_fraudstream_cached"),
    ),
    "skip_empty_bundles": (
        empty_bundles.skip_empty_bundles,
        empty_bundles.REPLACED,
        (
            "apache_beam.runners.direct.executor:_ExecutorServiceParallelExecutor",
            "_fraudstream_skips_empty",
        ),
    ),
    "skip_keys_without_timers": (
        timers.skip_keys_without_timers,
        timers.REPLACED,
        ("apache_beam.runners.direct.watermark_manager:_TransformWatermarks", "_fraudstream_tuned"),
    ),
    "tune_direct_pubsub_write": (
        publishers.tune_direct_pubsub_write,
        publishers.REPLACED,
        ("apache_beam.io.gcp.pubsub:_PubSubWriteDoFn", "_fraudstream_tuned"),
    ),
    "copy_keyed_states_lightly": (
        state_copy.copy_keyed_states_lightly,
        state_copy.REPLACED,
        ("apache_beam.transforms.trigger:InMemoryUnmergedState", "_fraudstream_tuned"),
    ),
    "remember_read_project": (
        read_options.remember_read_project,
        read_options.REPLACED,
        (
            "apache_beam.runners.direct.transform_evaluator:_PubSubReadEvaluator",
            "_fraudstream_remembers_project",
        ),
    ),
    "parse_event_times_quickly": (
        event_times.parse_event_times_quickly,
        event_times.REPLACED,
        ("apache_beam.utils.timestamp:Timestamp", "_fraudstream_tuned"),
    ),
    "build_global_window_once": (
        global_window.build_global_window_once,
        global_window.REPLACED,
        ("apache_beam.transforms.window:GlobalWindow", "_fraudstream_tuned"),
    ),
}


def _owner_and_name(replaced: guard.Replaced) -> tuple[Any, str]:
    owner, _, name = replaced.path.rpartition(".")
    if ":" not in owner:  # a module-level function
        owner, name = replaced.path.split(":")
    return guard.resolve(owner), name


def _as_found(replaced: Sequence[guard.Replaced]) -> list[Any]:
    """What each replaced attribute holds, as stored (a classmethod as such)."""
    return [inspect.getattr_static(*_owner_and_name(r)) for r in replaced]


@pytest.fixture
def unapplied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every patch unmarked, so that a call checks whether it fits again (restored after)."""
    for _, _, (owner, mark) in PATCHES.values():
        monkeypatch.delattr(guard.resolve(owner), mark, raising=False)


def test_every_patch_fits_the_pinned_beam():
    """In a fresh interpreter: Beam as installed, nothing patched yet, no warning."""
    script = (
        "import json, logging; logging.basicConfig(level=logging.WARNING)\n"
        "from streaming.local.runner import tune_local_runner\n"
        "print(json.dumps(tune_local_runner()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == dict.fromkeys(PATCHES, True)
    assert "skipped" not in done.stderr


@pytest.mark.parametrize("patch", list(PATCHES))
def test_a_patch_for_another_beam_is_skipped_with_a_warning(
    patch: str, unapplied: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    apply, replaced, (owner, mark) = PATCHES[patch]
    monkeypatch.setattr(apache_beam, "__version__", "2.78.0")
    before = _as_found(replaced)
    with caplog.at_level(logging.WARNING):
        assert apply() is False
    [record] = caplog.records
    assert patch in record.getMessage() and "apache-beam 2.78.0" in record.getMessage()
    assert _as_found(replaced) == before  # nothing patched
    assert not hasattr(guard.resolve(owner), mark)


@pytest.mark.parametrize("patch", list(PATCHES))
def test_a_patch_whose_target_changed_is_skipped_with_a_warning(
    patch: str, unapplied: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    apply, replaced, (owner, mark) = PATCHES[patch]

    def rewritten(*args: Any, **kwargs: Any) -> None:
        """A release whose code differs from the one the patch was written for."""

    monkeypatch.setattr(*_owner_and_name(replaced[0]), rewritten)
    before = _as_found(replaced)
    with caplog.at_level(logging.WARNING):
        assert apply() is False
    [record] = caplog.records
    assert patch in record.getMessage()
    assert f"{replaced[0].path} is not the code" in record.getMessage()
    assert _as_found(replaced) == before  # nothing patched
    assert not hasattr(guard.resolve(owner), mark)


def test_a_patch_whose_target_is_missing_is_skipped_with_a_warning(
    unapplied: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    apply, replaced, _ = PATCHES["skip_keys_without_timers"]
    owner, name = _owner_and_name(replaced[1])  # extract_transform_timers
    monkeypatch.delattr(owner, name)
    with caplog.at_level(logging.WARNING):
        assert apply() is False
    [record] = caplog.records
    assert f"{replaced[1].path} is missing" in record.getMessage()
    assert not hasattr(owner, name)
