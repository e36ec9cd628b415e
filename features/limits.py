"""The values and names the engine takes, from a history table (:mod:`features.table`) and from
a message in the stream (``streaming.schema``) alike: a history the stream would refuse a row of
is refused too, so no training feature counts what the stream never would."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

MAX_AMOUNT = 1e9  # above it, a typo or an attack; and float32 (the model's input) stays finite
MIN_TIME = datetime(1970, 1, 1)  # event times the engine represents (int64 ns: 1677..2262),
MAX_TIME = datetime(2200, 1, 1)  # kept to a plausible range
MAX_ID = 2**63 - 1  # ids are int64 keys, never negative
ID_DIGITS = "0|[1-9][0-9]{0,18}"
"""An id written as text (proto3's JSON of an int64, a JSON export's INT64): digits, no sign or
leading zero; its range is checked as a number's."""


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
