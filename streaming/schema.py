"""Wire contract of the pipeline's inputs: transactions and late fraud labels (JSON, UTF-8).

The contract is published as JSON Schema in ``streaming/schemas/`` (``transaction.json``,
``label.json``, with a version); the parsers here read their time pattern from it and the
tests hold them to it. Transaction message::

    {"TRANSACTION_ID": 17, "TX_DATETIME": "2018-04-01T07:19:05Z", "CUSTOMER_ID": 5,
     "TERMINAL_ID": 33, "TX_AMOUNT": 57.16}

Label message (fraud feedback, published after the transaction)::

    {"TRANSACTION_ID": 17, "CUSTOMER_ID": 5, "TERMINAL_ID": 33,
     "TX_DATETIME": "2018-04-01T07:19:05Z", "LABEL_DATETIME": "2018-04-08T07:19:05Z",
     "TX_FRAUD": 1}

What real producers write is accepted: times in RFC 3339 with ``Z`` or an offset (converted to
UTC, up to nanoseconds), naive ISO 8601 (read in :attr:`WireContract.naive_time_zone`, UTC by
default) or as numbers since the epoch in any unit (:func:`features.limits.epoch_ns`); ids as
JSON integers, as strings of their digits (proto3's JSON form of an int64) or as text ids (a
card token, a UUID, a zero-padded code ``"000123"``: keyed by :func:`features.limits.text_key`,
and echoed as sent in alerts); amounts as JSON integers or decimals, or as decimal strings
(``"57.16"``, what decimal types serialise to); field names in another spelling (case and
underscores aside: ``transaction_id``, ``transactionId``, protobuf's ``TRANSACTIONID``); fields
this version does not know, which are ignored and reported to an ``unknown`` callback (refused
with ``strict_fields``). Refused, with a ``ValueError`` that names the field and the reason: ids
that are none of these (booleans, floats such as ``5.0``, negative numbers and ``"-5"``, text
with a space at an end or control characters, longer than 128 characters), amounts outside [0,
:data:`MAX_AMOUNT`], times outside [1970, 2200), ``TX_FRAUD`` other than 0, 1, false or true, a
field given in two spellings, payloads over :data:`MAX_PAYLOAD_BYTES`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from features.incremental import Status
from features.limits import (
    MAX_AMOUNT,
    MAX_ID,
    MAX_TIME,
    MIN_TIME,
    epoch_ns,
    id_of_text,
    respelled,
)

MAX_PAYLOAD_BYTES = 16 * 1024
_EPOCH = datetime(1970, 1, 1)

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def load_schema(kind: str) -> dict:
    """The published JSON Schema of ``transaction`` or ``label`` messages."""
    return json.loads((SCHEMAS / f"{kind}.json").read_text())


_TRANSACTION_SCHEMA = load_schema("transaction")
WIRE_VERSION: str = _TRANSACTION_SCHEMA["version"]
"""The version of the wire contract (both schemas carry it)."""
_TIME_FORMS = _TRANSACTION_SCHEMA["$defs"]["time"]["oneOf"]
_TIME = re.compile(_TIME_FORMS[0]["pattern"])
_EPOCH_DIGITS = re.compile(_TIME_FORMS[2]["pattern"].replace("$", r"\Z"))
_YEAR = re.compile(r"^([0-9]{4})-")
_FRACTION = re.compile(r"\.(\d{1,9})")

ID_FIELDS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
TRANSACTION_FIELDS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
SCORED_COLUMNS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "event_time",
    "score",
    "threshold",
    "alert",
    "model_version",
    "status",
    "latency_ms",
)
"""The fixed columns of a scored event (:func:`scored_record`); one column per model input
follows them."""
LABEL_FIELDS = (
    "TRANSACTION_ID",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_DATETIME",
    "LABEL_DATETIME",
    "TX_FRAUD",
)


@dataclass(frozen=True)
class WireContract:
    """How tolerant the parsers are: the time zone of naive times, and whether fields this
    version does not know are refused (``strict_fields``) or ignored and reported."""

    naive_time_zone: str = "UTC"
    strict_fields: bool = False

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.naive_time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"--naive_time_zone {self.naive_time_zone!r}: not an IANA time zone "
                "(e.g. UTC, Europe/Brussels)"
            ) from exc

    @property
    def zone(self) -> ZoneInfo | None:
        """The zone of naive times; None for UTC (no conversion needed)."""
        return (
            None if self.naive_time_zone in ("UTC", "Etc/UTC") else ZoneInfo(self.naive_time_zone)
        )


DEFAULT_CONTRACT = WireContract()
Unknown = Callable[[list[str]], None]
"""Called with the sorted names of the fields a message has and this version does not know."""


def time_ns(dt: datetime) -> int:
    """A naive datetime as int64 nanoseconds since the epoch (the engine's time unit)."""
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 10**9 + d.microseconds * 1_000


def from_ns(ns: int) -> datetime:
    """Inverse of :func:`time_ns` (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


@dataclass(frozen=True, slots=True)
class Transaction:
    """A validated card transaction; ``time_ns`` is ``TX_DATETIME`` in epoch nanoseconds."""

    transaction_id: int
    time_ns: int
    customer_id: int
    terminal_id: int
    amount: float
    received_at: float = 0.0  # processing time (seconds since the epoch) when parsed
    clear_ids: tuple[int | str, int | str] | None = None  # (customer, terminal) as sent,
    # kept only when clear ids are asked for in alerts (``--clear_ids_in_alerts``)
    lookups: tuple[float, ...] | None = None  # the spec's looked-up batch features
    # (``spec.lookup_names``), set by ``EnrichFromFeatureStore`` for presets with lookups
    text_ids: tuple[str | None, str | None, str | None] | None = None  # the (transaction,
    # customer, terminal) ids sent as text ids, for alerts; the ids above are their keys


@dataclass(frozen=True, slots=True)
class Label:
    """A validated fraud label of an earlier transaction."""

    transaction_id: int
    customer_id: int
    terminal_id: int
    time_ns: int  # the transaction's time
    label_time_ns: int
    fraud: int
    received_at: float = 0.0


_BOM = b"\xef\xbb\xbf"


def _decode(payload: bytes | str) -> dict:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if payload.startswith(_BOM):  # RFC 8259 lets a parser ignore it; Windows tools write one
        payload = payload[len(_BOM) :]
    try:
        doc = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON ({exc.msg} at char {exc.pos})") from exc
    except RecursionError as exc:
        raise ValueError("payload is JSON nested too deeply") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"payload must be a JSON object, got {type(doc).__name__}")
    return doc


def _check_fields(
    doc: dict, fields: tuple[str, ...], contract: WireContract, unknown: Unknown | None
) -> dict:
    """``doc`` with the contract's field names (respelled where a producer spelled one
    otherwise: :func:`features.limits.respelled`); ``ValueError`` for a missing field or a
    field given twice."""
    if len(doc) == len(fields) and all(f in doc for f in fields):
        return doc  # the contract's spelling, nothing added
    renames, twice = respelled(doc, fields)
    if twice:
        raise ValueError(f"field(s) {twice} given twice, in two spellings")
    if renames:
        doc = {renames.get(k, k): v for k, v in doc.items()}
    missing = [f for f in fields if f not in doc]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    if len(doc) == len(fields):
        return doc
    extra = sorted(set(doc) - set(fields))
    if contract.strict_fields:
        raise ValueError(f"unexpected field(s) {extra} (--strict_fields)")
    if unknown is not None:
        unknown(extra)
    return doc


def _id(doc: dict, name: str) -> int:
    """An id's int64 key: a JSON integer in [0, 2**63), or a string (:func:`_text_id`)."""
    value = doc[name]
    if type(value) is str:
        return _text_id(value, name)[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name} must be an integer or a string, got {type(value).__name__} {value!r}"
        )
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"{name} must be in [0, 2**63), got {value}")
    return value


def _text_id(value: str, name: str) -> tuple[int, bool]:
    """A string id -> (its key, whether it is a text id): the digits of a number (proto3's JSON
    of an int64) or a text id, keyed by :func:`features.limits.text_key`."""
    try:
        return id_of_text(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


def _string_ids(doc: dict) -> tuple[tuple[int, int, int], tuple[str | None, ...] | None]:
    """The keys of ``doc``'s ids, of which one at least is a string, and those sent as text
    ids (``None`` when all are numbers)."""
    keys, texts = [], [None, None, None]
    for i, name in enumerate(ID_FIELDS):
        value = doc[name]
        if type(value) is str:
            key, is_text = _text_id(value, name)
            if is_text:
                texts[i] = value
        else:
            key = _id(doc, name)
        keys.append(key)
    return (keys[0], keys[1], keys[2]), None if texts == [None, None, None] else tuple(texts)


def _time(doc: dict, name: str, zone: ZoneInfo | None) -> int:
    """Epoch nanoseconds (UTC) of an RFC 3339 or naive ISO 8601 time, or of a number since the
    epoch (its unit told by its size, :func:`features.limits.epoch_ns`; also as a string of
    digits, proto3's JSON of an ``int64``)."""
    value = doc[name]
    if type(value) is not str:
        if type(value) is int or type(value) is float:
            return _epoch(value, name)
        raise ValueError(
            f"{name} must be an RFC 3339 time or a number since the epoch, got "
            f"{type(value).__name__} {value!r}"
        )
    if not _TIME.match(value):
        if _EPOCH_DIGITS.match(value):
            return _epoch(int(value), name)
        year = _YEAR.match(value)
        if year and not MIN_TIME.year <= int(year.group(1)) < MAX_TIME.year:
            raise ValueError(
                f"{name} must be in [{MIN_TIME:%Y-%m-%d}, {MAX_TIME:%Y-%m-%d}) UTC, got {value!r}"
            )
        raise ValueError(
            f"{name} is not an RFC 3339 or ISO 8601 time (e.g. 2018-08-15T10:02:00Z): {value!r}"
        )
    nanos = 0
    fraction = _FRACTION.search(value)
    if fraction is not None and len(fraction.group(1)) > 6:  # datetime keeps microseconds
        digits = fraction.group(1)
        nanos = int(digits[6:].ljust(3, "0"))
        value = value[: fraction.start(1) + 6] + value[fraction.end(1) :]
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:  # e.g. February 30th
        raise ValueError(f"{name} is not a valid time: {value!r} ({exc})") from exc
    if dt.tzinfo is None and zone is not None:
        dt = dt.replace(tzinfo=zone)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    if not MIN_TIME <= dt < MAX_TIME:
        raise ValueError(
            f"{name} must be in [{MIN_TIME:%Y-%m-%d}, {MAX_TIME:%Y-%m-%d}) UTC, got {doc[name]!r}"
        )
    return time_ns(dt) + nanos


def _epoch(value: int | float, name: str) -> int:
    try:
        return epoch_ns(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
"""An amount as text, in JSON's number grammar without a sign: what decimal types serialise to
(pydantic's ``Decimal``, Go's shopspring/decimal: ``"57.16"``, ``"1E+3"``)."""


def _amount(doc: dict, name: str) -> float:
    value = doc[name]
    if type(value) is str and _DECIMAL.match(value):
        value = float(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f'{name} must be a number or a decimal string ("57.16"), got '
            f"{type(value).__name__} {value!r}"
        )
    value = float(value)
    if not math.isfinite(value) or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be finite and >= 0 (at most {MAX_AMOUNT:.0e}), got {value}")
    return value


def parse_transaction(
    payload: bytes | str | dict,
    received_at: float = 0.0,
    contract: WireContract = DEFAULT_CONTRACT,
    unknown: Unknown | None = None,
) -> Transaction:
    """A :class:`Transaction` from a JSON payload, or from the fields of one a schema decoder
    has read (:mod:`streaming.pubsub_schemas`); ``ValueError`` says what is wrong."""
    doc = payload if type(payload) is dict else _decode(payload)
    doc = _check_fields(doc, TRANSACTION_FIELDS, contract, unknown)
    if (
        str is type(doc["TRANSACTION_ID"])
        or str is type(doc["CUSTOMER_ID"])
        or str is type(doc["TERMINAL_ID"])
    ):  # digits or text ids
        (transaction, customer, terminal), texts = _string_ids(doc)
    else:
        transaction, texts = _id(doc, "TRANSACTION_ID"), None
        customer, terminal = _id(doc, "CUSTOMER_ID"), _id(doc, "TERMINAL_ID")
    return Transaction(
        transaction_id=transaction,
        time_ns=_time(doc, "TX_DATETIME", contract.zone),
        customer_id=customer,
        terminal_id=terminal,
        amount=_amount(doc, "TX_AMOUNT"),
        received_at=received_at,
        text_ids=texts,  # type: ignore[arg-type]
    )


def parse_label(
    payload: bytes | str | dict,
    received_at: float = 0.0,
    contract: WireContract = DEFAULT_CONTRACT,
    unknown: Unknown | None = None,
) -> Label:
    """A :class:`Label` from a JSON payload or a decoded one's fields (as
    :func:`parse_transaction`); ``ValueError`` says what is wrong."""
    doc = payload if type(payload) is dict else _decode(payload)
    doc = _check_fields(doc, LABEL_FIELDS, contract, unknown)
    fraud = doc["TX_FRAUD"]
    if type(fraud) is bool:  # a boolean field's JSON (protobuf's, most serialisers')
        fraud = int(fraud)
    elif type(fraud) is not int or fraud not in (0, 1):
        raise ValueError(f"TX_FRAUD must be 0 or 1 (or false or true), got {fraud!r}")
    tx_time = _time(doc, "TX_DATETIME", contract.zone)
    label_time = _time(doc, "LABEL_DATETIME", contract.zone)
    if label_time < tx_time:
        raise ValueError("LABEL_DATETIME is before TX_DATETIME")
    return Label(
        transaction_id=_id(doc, "TRANSACTION_ID"),
        customer_id=_id(doc, "CUSTOMER_ID"),
        terminal_id=_id(doc, "TERMINAL_ID"),
        time_ns=tx_time,
        label_time_ns=label_time,
        fraud=fraud,
        received_at=received_at,
    )


def transaction_json(tx: Transaction) -> str:
    """The wire form of ``tx`` (for replays and tests)."""
    return json.dumps(
        {
            "TRANSACTION_ID": tx.transaction_id,
            "TX_DATETIME": from_ns(tx.time_ns).isoformat(),
            "CUSTOMER_ID": tx.customer_id,
            "TERMINAL_ID": tx.terminal_id,
            "TX_AMOUNT": tx.amount,
        }
    )


def label_json(label: Label) -> str:
    """The wire form of ``label``."""
    return json.dumps(
        {
            "TRANSACTION_ID": label.transaction_id,
            "CUSTOMER_ID": label.customer_id,
            "TERMINAL_ID": label.terminal_id,
            "TX_DATETIME": from_ns(label.time_ns).isoformat(),
            "LABEL_DATETIME": from_ns(label.label_time_ns).isoformat(),
            "TX_FRAUD": label.fraud,
        }
    )


def scored_record(scored: Any, features: list[str], clock: Callable[[], float] = time.time) -> dict:
    """One scored transaction as a flat row: :data:`~streaming.schema.SCORED_COLUMNS`, then one
    column per model input (NaN kept). The row of both the parquet and the BigQuery sink."""
    tx = scored.tx
    row = {
        "transaction_id": tx.transaction_id,
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "event_time": from_ns(tx.time_ns),
        "score": scored.score,
        "threshold": scored.threshold,
        "alert": bool(scored.accepted and scored.score >= scored.threshold),
        "model_version": scored.model_version,
        "status": Status(scored.status).name,
        "latency_ms": round((clock() - tx.received_at) * 1000.0, 3),
    }
    row.update(zip(features, scored.features.tolist(), strict=True))
    return row


@dataclass(frozen=True)
class ScoredPart:
    """Scored transactions as columns: what the scored files' grouping (a bundle's of one event
    hour and shard) and the monitoring windows (a list's of one window) carry. A few arrays
    encode far faster than a dict per row and need no conversion to be written or counted;
    :meth:`table` gives the rows of :func:`scored_record`."""

    ids: np.ndarray  # int64 (n, 3): transaction, customer, terminal
    time_ns: np.ndarray  # int64
    values: np.ndarray  # float64 (n, 3): score, threshold, latency_ms
    alert: np.ndarray  # bool
    status: np.ndarray  # int8, a Status each
    model_version: np.ndarray  # object: str
    features: np.ndarray  # float64 (n, model inputs)

    @classmethod
    def of(cls, scored: Sequence[Any], now: float) -> ScoredPart:
        """The part of ``scored`` (:class:`~streaming.job.scoring.Scored`, at least one), their
        latency measured at ``now`` (seconds, the clock of ``Transaction.received_at``)."""
        txs = [s.tx for s in scored]
        values = np.array([(s.score, s.threshold, s.tx.received_at) for s in scored], np.float64)
        values[:, 2] = np.round((now - values[:, 2]) * 1000.0, 3)
        accepted = np.array([s.accepted for s in scored], bool)
        return cls(
            ids=np.array([(t.transaction_id, t.customer_id, t.terminal_id) for t in txs], np.int64),
            time_ns=np.array([t.time_ns for t in txs], np.int64),
            values=values,
            alert=accepted & (values[:, 0] >= values[:, 1]),  # score >= threshold
            status=np.array([s.status for s in scored], np.int8),
            model_version=np.array([s.model_version for s in scored], object),
            features=np.stack([s.features for s in scored]).astype(np.float64, copy=False),
        )

    @property
    def scores(self) -> np.ndarray:
        return self.values[:, 0]

    @property
    def thresholds(self) -> np.ndarray:
        return self.values[:, 1]

    @property
    def latency_ms(self) -> np.ndarray:
        return self.values[:, 2]

    def table(self, features: Sequence[str]) -> Any:
        """The part as a ``pyarrow.Table`` of :func:`scored_record` rows (its columns, their
        order and types)."""
        import pyarrow as pa

        fixed = (
            self.ids[:, 0],
            self.ids[:, 1],
            self.ids[:, 2],
            pa.array(self.time_ns // 1_000, pa.timestamp("us")),
            self.scores,
            self.thresholds,
            self.alert,
            pa.array(self.model_version, pa.string()),
            pa.array(_STATUS_NAMES[self.status], pa.string()),
            self.latency_ms,
        )
        columns = dict(zip(SCORED_COLUMNS, fixed, strict=True))
        columns.update(zip(features, self.features.T, strict=True))
        return pa.table(columns)

    @staticmethod
    def concat(parts: Sequence[ScoredPart]) -> ScoredPart:
        """One part of all ``parts`` (non-empty), in order."""
        columns = (np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ScoredPart))
        return ScoredPart(*columns)


def _status_names() -> np.ndarray:
    """Each status code's name, indexed by the code."""
    names = np.empty(max(Status) + 1, object)
    for status in Status:
        names[status] = status.name
    return names


_STATUS_NAMES = _status_names()


def scored_files(directory: str) -> list[str]:
    """The scored sink's finished ``part-*.parquet`` files under ``directory`` (a local path or
    a ``gs://`` URI), sorted; files being written have hidden temporary names and are skipped."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(str(directory), "part-*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def read_scored(directory: str) -> Any:
    """Every scored row written under ``directory`` so far, as a pandas DataFrame (empty if
    none); the sink's file names are deterministic, so each row is in one file."""
    import pandas as pd
    import pyarrow.parquet as pq
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    frames = []
    for path in scored_files(directory):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            frames.append(pq.read_table(f).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def count_scored(directory: str) -> int:
    """How many scored rows are written under ``directory`` (reads parquet footers only)."""
    return ScoredCounter(directory)()


class ScoredCounter:
    """:func:`count_scored` for polling: each file's footer is read once. A file's name is a
    function of its rows' window, firing and shard, so a file written again under its name (a
    retried bundle) holds the same rows; a poll reads only the files new since the last."""

    def __init__(self, directory: str) -> None:
        self.directory = str(directory)
        self.rows: dict[str, int] = {}

    def __call__(self) -> int:
        import pyarrow.parquet as pq
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        for path in scored_files(self.directory):
            if path not in self.rows:
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    self.rows[path] = pq.ParquetFile(f).metadata.num_rows
        return sum(self.rows.values())
