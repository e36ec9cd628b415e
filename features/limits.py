"""The values the engine takes, from a history table (:mod:`features.table`) and from a message
in the stream (``streaming.schema``) alike: a history the stream would refuse a row of is
refused too, so no training feature counts what the stream never would."""

from __future__ import annotations

from datetime import datetime

MAX_AMOUNT = 1e9  # above it, a typo or an attack; and float32 (the model's input) stays finite
MIN_TIME = datetime(1970, 1, 1)  # event times the engine represents (int64 ns: 1677..2262),
MAX_TIME = datetime(2200, 1, 1)  # kept to a plausible range
MAX_ID = 2**63 - 1  # ids are int64 keys, never negative
