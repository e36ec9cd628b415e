"""Whether a local-runner patch fits: the Beam series and the digests of what it replaces."""

from __future__ import annotations

import json
import logging

import apache_beam
import pytest

from streaming.local.runner import guard

DUMPS = guard.Replaced("json:dumps", guard.source_digest(json.dumps))


def test_a_function_with_the_source_the_patch_expects_fits():
    assert DUMPS.resolve() is json.dumps
    assert DUMPS.misfit() is None
    assert guard.misfit([DUMPS]) is None


def test_a_changed_or_missing_function_does_not_fit():
    changed = guard.Replaced("json:dumps", "0" * 16)
    assert changed.misfit() == "json:dumps is not the code the patch was written for"
    missing = guard.Replaced("json:JSONDecoder.no_such_method", DUMPS.digest)
    assert missing.misfit() == "json:JSONDecoder.no_such_method is missing"
    assert guard.Replaced("no_such_module:f", DUMPS.digest).misfit() == (
        "no_such_module:f is missing"
    )
    assert guard.misfit([DUMPS, changed, missing]) == f"{changed.misfit()}; {missing.misfit()}"


def test_another_beam_series_does_not_fit(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(apache_beam, "__version__", "2.78.0")
    assert guard.misfit([DUMPS]) == "apache-beam 2.78.0 is installed, the patch is for 2.77.x"
    monkeypatch.setattr(apache_beam, "__version__", "2.7.1")
    assert guard.misfit([DUMPS]) is not None


def test_fits_warns_once_naming_the_patch(caplog: pytest.LogCaptureFixture):
    changed = guard.Replaced("json:dumps", "0" * 16)
    with caplog.at_level(logging.WARNING):
        assert guard.fits("a_patch", [DUMPS])
        assert not guard.fits("a_patch", [changed])
    [record] = caplog.records
    assert "a_patch skipped" in record.getMessage() and "json:dumps" in record.getMessage()


def test_a_patch_is_applied_once_and_only_where_it_fits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The decorated function runs the patch the first time, marks its owner, and then only
    says it is applied; a patch that does not fit is neither run nor marked."""
    calls = []

    @guard.patch_once("demo_patch", "json:JSONEncoder", "_fraudstream_demo", [DUMPS])
    def demo_patch() -> None:
        """Demo."""
        calls.append(1)

    monkeypatch.delattr(json.JSONEncoder, "_fraudstream_demo", raising=False)
    assert demo_patch.__name__ == "demo_patch" and demo_patch.__doc__ == "Demo."
    assert demo_patch() is True and demo_patch() is True
    assert calls == [1] and json.JSONEncoder._fraudstream_demo is True
    monkeypatch.delattr(json.JSONEncoder, "_fraudstream_demo")

    @guard.patch_once("stale_patch", "json:JSONEncoder", "_fraudstream_demo", [
        guard.Replaced("json:dumps", "0" * 16)])  # fmt: skip
    def stale_patch() -> None:
        calls.append(2)

    with caplog.at_level(logging.WARNING):
        assert stale_patch() is False
    assert calls == [1] and not hasattr(json.JSONEncoder, "_fraudstream_demo")
    assert "stale_patch" in caplog.text
