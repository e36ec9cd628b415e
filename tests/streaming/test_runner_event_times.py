"""The local runner's event-time attribute parsing: Beam's result, faster for the common form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from apache_beam.utils.timestamp import Timestamp

from streaming.local.runner import event_times

BEAMS = Timestamp.from_rfc3339  # as collected, before any test patches it
_BEAMS_DESCRIPTOR = Timestamp.__dict__["from_rfc3339"]


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch applied for the test, Beam's parser restored after it."""
    monkeypatch.setattr(Timestamp, "from_rfc3339", _BEAMS_DESCRIPTOR)
    monkeypatch.setattr(Timestamp, "_fraudstream_tuned", False, raising=False)
    assert event_times.parse_event_times_quickly()


def _outcome(parse, text: str) -> tuple:
    """What parsing ``text`` gives: the timestamp's parts, or the error's type and message."""
    try:
        ts = parse(text)
    except ValueError as exc:
        return ("error", str(exc))
    return (repr(ts), ts.precision())


def _random_times(n: int) -> list[str]:
    """Times from 1900 to 2100 in the forms producers send: Z or an offset, 0 to 9 digits."""
    rng = np.random.default_rng(7)
    base = datetime(1900, 1, 1, tzinfo=UTC)
    out = []
    for _ in range(n):
        t = base + timedelta(microseconds=int(rng.integers(0, 200 * 365 * 86_400 * 10**6)))
        text = t.strftime("%Y-%m-%dT%H:%M:%S")
        digits = int(rng.integers(0, 10))
        if digits:
            text += "." + "".join(str(d) for d in rng.integers(0, 10, digits))
        minutes = int(rng.integers(-14 * 60, 14 * 60 + 1))
        sign = "-" if minutes < 0 else "+"
        zone = rng.choice(["Z", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"])
        out.append(text + zone)
    return out


ODD = [
    "2018-04-01T24:00:00Z",  # midnight as hour 24: Beam's parser reads it
    "2018-02-30T00:00:00Z",  # no such day
    "2018-04-01 00:00:31Z",  # a space for the T
    "2018-04-01T00:00:31",  # no zone
    "2018-04-01T00:00:31.1234567890Z",  # past nanoseconds
    "20180401T000031Z",  # basic format
    "not a time",
]


def test_every_time_parses_as_beams_parser_parses_it(patched):
    texts = _random_times(2_000) + ODD
    assert [_outcome(Timestamp.from_rfc3339, t) for t in texts] == [
        _outcome(BEAMS, t) for t in texts
    ]


def test_the_common_form_takes_the_fast_path(patched, monkeypatch: pytest.MonkeyPatch):
    def refuse(text: str) -> None:
        raise AssertionError(f"dateutil asked to parse {text!r}")

    monkeypatch.setattr("dateutil.parser.isoparse", refuse)
    parsed = Timestamp.from_rfc3339("2018-04-01T00:00:31.5+02:00")
    assert parsed == Timestamp(seconds=1522533631, micros=500_000)
    with pytest.raises(AssertionError, match="dateutil"):
        Timestamp.from_rfc3339("2018-04-01T24:00:00Z")
