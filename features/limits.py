"""The values and names the engine takes, from a history table (:mod:`features.table`) and from
a message in the stream (``streaming.schema``) alike: a history the stream would refuse a row of
is refused too, so no training feature counts what the stream never would."""

from __future__ import annotations

from datetime import datetime

MAX_AMOUNT = 1e9  # above it, a typo or an attack; and float32 (the model's input) stays finite
MIN_TIME = datetime(1970, 1, 1)  # event times the engine represents (int64 ns: 1677..2262),
MAX_TIME = datetime(2200, 1, 1)  # kept to a plausible range
MAX_ID = 2**63 - 1  # ids are int64 keys, never negative


def spelling(name: str) -> str:
    """A field's or column's name without case and underscores: ``transaction_id``,
    ``transactionId`` and ``TRANSACTIONID`` (protobuf's JSON name of ``TRANSACTION_ID``) are
    all ``TRANSACTION_ID``, as producers' serialisers and warehouses write it by default."""
    return name.replace("_", "").upper()
