"""The values and names the engine takes, from a history table (:mod:`features.table`) and from
a message in the stream (``streaming.schema``) alike: a history the stream would refuse a row of
is refused too, so no training feature counts what the stream never would."""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable
from datetime import datetime

MAX_AMOUNT = 1e9  # above it, a typo or an attack; and float32 (the model's input) stays finite
MIN_TIME = datetime(1970, 1, 1)  # event times the engine represents (int64 ns: 1677..2262),
MAX_TIME = datetime(2200, 1, 1)  # kept to a plausible range
MAX_ID = 2**63 - 1  # ids are int64 keys, never negative
ID_DIGITS = "0|[1-9][0-9]*"
"""An id written as a number in text (proto3's JSON of an int64, a JSON export's INT64): digits,
no sign or leading zero; its range is checked as a number's."""
MAX_TEXT_ID = 128
TEXT_ID = (
    r"^(?!(?:[+-][0-9]+|" + ID_DIGITS + r")$)(?!\s)(?![\s\S]*\s$)"
    r"[^\u0000-\u001f\u007f]{1," + str(MAX_TEXT_ID) + "}$"
)
"""A text id (a card token, a UUID, a zero-padded terminal code ``"000123"``), as the JSON
Schema's pattern: 1 to 128 characters, no control characters, no space at either end, neither
an id's digits (a number) nor a signed number (ids are never negative)."""
_NUMBER = re.compile(f"(?:{ID_DIGITS})\\Z")
_TEXT = re.compile(TEXT_ID.replace("$", "\\Z"))  # Python's $ also matches before a final \n


def text_key(text: str) -> int:
    """The int64 key of a text id, what the engine keys its state by: the first 8 bytes of the
    SHA-256 digest of its UTF-8 bytes, big-endian, top bit cleared. Any language and warehouse
    can compute it (e.g. Node's ``createHash("sha256")``); among ``n`` text ids the chance that
    two share a key is about ``n**2 / 2**64``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & MAX_ID


@functools.lru_cache(maxsize=1 << 16)  # cards and terminals recur: a hit costs a tenth
def id_of_text(text: str) -> tuple[int, bool]:
    """An id given as a string -> (its int64 key, whether it is a text id): digits are the
    number they write, any other :data:`TEXT_ID` its :func:`text_key`. ``ValueError`` (a
    reason, without the field's name) for a signed number, a number past 2**63 - 1, spaces at
    either end, control characters, an empty or longer text."""
    if _NUMBER.match(text):
        if len(text) > 19 or int(text) > MAX_ID:
            raise ValueError(f"must be in [0, 2**63), got {text}")
        return int(text), False
    if _TEXT.match(text):
        return text_key(text), True
    if not text:
        raise ValueError("is empty")
    if text[0] in "+-" and text[1:].isdigit():
        raise ValueError(f"is a signed number ({text!r}): ids are never negative")
    if text.strip() != text:
        raise ValueError(f"has spaces at an end ({text!r})")
    if len(text) > MAX_TEXT_ID:
        raise ValueError(f"is {len(text)} characters long, more than {MAX_TEXT_ID}")
    raise ValueError(f"holds control characters ({text!r})")


EPOCH_UNITS = ((1e11, 10**9), (1e14, 10**6), (1e17, 10**3), (math.inf, 1))
"""A time given as a number since the epoch (UTC): its unit told by its size, as (below this,
nanoseconds per unit): seconds, milliseconds, microseconds, nanoseconds. The times of
[:data:`MIN_EPOCH_NS`, :data:`MAX_TIME`) lie in a range of their own in each unit, so the size
is never ambiguous."""
MIN_EPOCH_NS = 10**17  # 1973-03-03T09:46:40Z: 1e8 s, 1e11 ms, 1e14 µs, 1e17 ns
MAX_TIME_NS = (MAX_TIME - datetime(1970, 1, 1)).days * 86_400 * 10**9


def epoch_ns(value: int | float) -> int:
    """Nanoseconds since the epoch of a time given as a number (:data:`EPOCH_UNITS`): exact for
    an integer, to the microsecond for a fraction (``1534327320.123``, what ``time.time()`` and
    Jackson's ``Instant`` write). ``ValueError`` (a reason) outside [1973-03-03, 2200)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(_EPOCH_RANGE + f", got {value!r}")
    unit = next(ns for below, ns in EPOCH_UNITS if value < below)
    if type(value) is int:
        ns = value * unit
    elif unit >= 1_000:
        ns = round(value * (unit // 1_000)) * 1_000  # exact for up to 6 decimals of a second
    else:
        ns = round(value)
    if not MIN_EPOCH_NS <= ns < MAX_TIME_NS:
        raise ValueError(_EPOCH_RANGE + f", got {value!r}")
    return ns


_EPOCH_RANGE = (
    "must be a time since the epoch in [1973-03-03, 2200), in seconds, milliseconds, "
    "microseconds or nanoseconds"
)


def spelling(name: str) -> str:
    """A field's or column's name without case and underscores: ``transaction_id``,
    ``transactionId`` and ``TRANSACTIONID`` (protobuf's JSON name of ``TRANSACTION_ID``) are
    all ``TRANSACTION_ID``, as producers' serialisers and warehouses write it by default."""
    return name.replace("_", "").upper()


def respelled(names: Iterable[object], fields: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """How ``names`` (a message's keys, a table's columns) map onto ``fields`` they spell
    otherwise (:func:`spelling`), ``{name: field}``, and the fields given in two spellings."""
    wanted = {spelling(f): f for f in fields}
    names = list(names)
    present = set(names)
    renames: dict[str, str] = {}
    twice: list[str] = []
    for name in names:
        field = wanted.get(spelling(name)) if isinstance(name, str) else None
        if field is None or field == name:
            continue
        if field in present or field in renames.values():
            twice.append(field)
        else:
            renames[name] = field
    return renames, twice
