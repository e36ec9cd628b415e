"""Hypothesis strategies of malformed (and odd but valid) wire messages (streaming/schema.py).

Every strategy draws a :class:`Message`: the payload bytes as Pub/Sub delivers them, whether the
schema accepts it, its category, and (for a bad one) a substring of the reason the schema gives.
Each bad message has exactly one defect, so its reason is known. :func:`sample` draws many
messages deterministically (derandomized, no example database) for one pipeline run.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from features.limits import spelling
from streaming.schema import LABEL_FIELDS, MAX_PAYLOAD_BYTES, TRANSACTION_FIELDS

INT64_MAX = 2**63 - 1
_EPOCH_TEXT = re.compile(r"[1-9][0-9]{8,18}")  # a time since the epoch, proto3's int64 JSON
_DECIMAL_TEXT = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # an amount as text
ID_FIELDS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
# The schema accepts event times in [1970, 2200) (the engine holds int64 ns): odd valid times
# stay inside, with room for the windows subtracted from them.
ENGINE_MIN, ENGINE_MAX = datetime(1970, 2, 1), datetime(2199, 12, 31)


class Message(NamedTuple):
    payload: bytes
    valid: bool
    category: str
    reason: str = ""  # a substring of the schema's error (bad messages)


def _dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()  # allow_nan: NaN and Infinity literals, as the wire may have


ids = st.integers(0, INT64_MAX)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1))
amounts = st.floats(0, 10_000, allow_nan=False, allow_infinity=False)


@st.composite
def transaction_docs(draw) -> dict:
    """A valid transaction as a JSON object."""
    return {
        "TRANSACTION_ID": draw(ids),
        "TX_DATETIME": draw(times).isoformat(),
        "CUSTOMER_ID": draw(ids),
        "TERMINAL_ID": draw(ids),
        "TX_AMOUNT": draw(amounts),
    }


@st.composite
def label_docs(draw) -> dict:
    """A valid label as a JSON object (label time at or after the transaction's)."""
    tx = draw(times)
    later = draw(st.datetimes(min_value=tx, max_value=datetime(2031, 1, 1)))
    return {
        "TRANSACTION_ID": draw(ids),
        "CUSTOMER_ID": draw(ids),
        "TERMINAL_ID": draw(ids),
        "TX_DATETIME": tx.isoformat(),
        "LABEL_DATETIME": later.isoformat(),
        "TX_FRAUD": draw(st.sampled_from([0, 1])),
    }


# -- malformations shared by both topics --------------------------------------------------------

_BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]


@st.composite
def _not_utf8(draw, docs) -> Message:
    """A valid document with an invalid UTF-8 sequence inserted anywhere."""
    raw = _dumps(draw(docs))
    at = draw(st.integers(0, len(raw)))
    bad = draw(st.sampled_from(_BAD_UTF8))
    return Message(raw[:at] + bad + raw[at:], False, "not_utf8", "not UTF-8")


def _is_json(text: str) -> bool:
    try:
        json.loads(text.removeprefix("\ufeff"))  # the parser ignores a leading BOM
    except (ValueError, RecursionError):
        return False
    return True


@st.composite
def _not_json(draw, docs) -> Message:
    """Text that is not JSON: a truncated or corrupted document, or arbitrary text."""
    raw = json.dumps(draw(docs))
    how = draw(st.sampled_from(["truncate", "corrupt", "text"]))
    if how == "truncate":
        text = raw[: draw(st.integers(0, len(raw) - 1))]  # a proper prefix of an object
    elif how == "corrupt":
        at = draw(st.integers(0, len(raw) - 1))
        text = raw[:at] + draw(st.sampled_from(list("{}[],:'\\"))) + raw[at + 1 :]
    else:
        text = draw(st.text(max_size=64))
    if _is_json(text):
        text = "{" + text  # an unclosed object: never JSON
    return Message(text.encode(), False, "not_json", "not JSON")


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_NOT_OBJECTS = _SCALARS | st.lists(_SCALARS, max_size=3) | st.lists(st.lists(_SCALARS), max_size=2)
_JSON_VALUES = _NOT_OBJECTS | st.dictionaries(st.text(max_size=4), _SCALARS, max_size=2)


@st.composite
def _not_object(draw) -> Message:
    """Valid JSON that is not an object (an array, a number, a string, null, a boolean)."""
    value = draw(_NOT_OBJECTS)
    return Message(_dumps(value), False, "not_object", "must be a JSON object")


@st.composite
def _missing_fields(draw, docs) -> Message:
    doc = draw(docs)
    drop = draw(st.sets(st.sampled_from(sorted(doc)), min_size=1))
    return Message(
        _dumps({k: v for k, v in doc.items() if k not in drop}), False, "missing_fields", "missing"
    )


@st.composite
def _oversize(draw, docs) -> Message:
    """A valid document padded (whitespace, or a long string field) past the size limit."""
    raw = _dumps(draw(docs))
    over = draw(st.integers(MAX_PAYLOAD_BYTES + 1, 4 * MAX_PAYLOAD_BYTES))
    if draw(st.booleans()):
        payload = raw + b" " * (over - len(raw))
    else:
        payload = raw[:-1] + b', "PADDING": "' + b"x" * over + b'"}'
    return Message(payload, False, "oversize", "exceeds")


def _wrong_id_texts():
    """Strings that are no id: a signed number, a number past 2**63 - 1, text with a space at
    an end or a control character, empty, longer than 128 characters (any other string is a
    text id, and digits are a number)."""
    word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), max_size=6)
    control = st.characters(max_codepoint=31) | st.just("\x7f")
    return st.one_of(
        st.from_regex(r"[+-][0-9]{1,19}", fullmatch=True),
        st.from_regex(r"[1-9][0-9]{19,24}", fullmatch=True),
        st.tuples(word, st.sampled_from(" \u00a0\u3000"), st.booleans()).map(
            lambda t: t[1] + t[0] if t[2] else t[0] + t[1]
        ),
        st.tuples(word, control, word).map("".join),
        st.just(""),
        st.integers(129, 300).map(lambda n: "x" * n),
    )


def _wrong_id_values():
    return st.one_of(
        _wrong_id_texts(),  # "17" and "card_5" are ids
        st.floats(),  # 17.0 too: ids are JSON integers
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.integers(max_value=-1),
        st.integers(min_value=INT64_MAX + 1, max_value=2**200),
    )


@st.composite
def _wrong_id(draw, docs) -> Message:
    doc = draw(docs)
    name = draw(st.sampled_from(ID_FIELDS))
    doc[name] = draw(_wrong_id_values())
    return Message(_dumps(doc), False, "wrong_id", name)


def _not_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return True
    return False


_MAX_EPOCH_S = 7_258_118_400  # 2200-01-01, in seconds


def _wrong_epochs():
    """Numbers that are no time since the epoch: negative, before 1973-03-03 in every unit,
    in the gaps between the units' ranges, past 2200 in nanoseconds, not finite."""
    gaps = [(-(2**70), 10**8 - 1)] + [(_MAX_EPOCH_S * 10**k, 10 ** (11 + k) - 1) for k in (0, 3, 6)]
    return st.one_of(
        *(st.integers(lo, hi) for lo, hi in gaps),
        st.integers(_MAX_EPOCH_S * 10**9, 2**70),
        st.floats(max_value=1e8, exclude_max=True),
        st.floats(_MAX_EPOCH_S * 1.0, 1e11, exclude_max=True),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    )


def _wrong_time_values():
    return st.one_of(
        _wrong_epochs(),
        st.none(),
        st.booleans(),
        st.lists(st.text(max_size=4), max_size=2),
        st.text(max_size=24).filter(lambda t: _not_iso(t) and not _EPOCH_TEXT.fullmatch(t)),
        # out of Python's datetime range (year 0 or > 9999), or impossible dates and times
        st.sampled_from(
            [
                "10000-01-01T00:00:00",
                "0000-12-31T00:00:00",
                "2018-02-30T00:00:00",
                "2018-13-01T00:00:00",
                "2018-04-01T24:00:01",
                "2018-04-01T07:19:05 UTC",
                "-2018-04-01T00:00:00",
                "+12018-04-01T00:00:00",
            ]
        ),
        # ISO 8601 forms that are not RFC 3339 date-times: a date alone, the basic format,
        # minutes without seconds, a lower-case separator
        st.builds(
            lambda dt, form: form(dt),
            times,
            st.sampled_from(
                [
                    lambda dt: dt.date().isoformat(),
                    lambda dt: dt.strftime("%Y%m%dT%H%M%S"),
                    lambda dt: dt.strftime("%Y-%m-%dT%H:%M"),
                    lambda dt: dt.strftime("%Y-%m-%dt%H:%M:%S"),
                ]
            ),
        ),
    )


@st.composite
def _wrong_time(draw, docs, fields: tuple[str, ...]) -> Message:
    doc = draw(docs)
    name = draw(st.sampled_from([f for f in fields if f.endswith("DATETIME")]))
    doc[name] = draw(_wrong_time_values())
    return Message(_dumps(doc), False, "wrong_time", name)


@st.composite
def _huge_int_literal(draw, docs) -> Message:
    """An integer literal longer than Python's 4300-digit limit (``json.loads`` refuses it)."""
    doc = draw(docs)
    name = draw(st.sampled_from(ID_FIELDS))
    doc[name] = 0
    digits = "9" * draw(st.integers(4301, 6000))
    raw = _dumps(doc).replace(f'"{name}": 0'.encode(), f'"{name}": {digits}'.encode())
    return Message(raw, False, "huge_number_literal", "4300")


# -- transactions -------------------------------------------------------------------------------


@st.composite
def _wrong_amount(draw) -> Message:
    doc = draw(transaction_docs())
    doc["TX_AMOUNT"] = draw(
        st.one_of(
            st.text(max_size=8).filter(lambda t: not _DECIMAL_TEXT.fullmatch(t)),  # "5" is one
            st.booleans(),
            st.none(),
            st.lists(amounts, max_size=2),
        )
    )
    return Message(_dumps(doc), False, "wrong_amount_type", "TX_AMOUNT must be a number")


@st.composite
def _nan_inf_amount(draw) -> Message:
    """NaN, Infinity, -Infinity literals, or a literal beyond float64 (parsed as inf)."""
    doc = draw(transaction_docs())
    doc["TX_AMOUNT"] = 0.5
    literal = draw(
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-1e400", "1" + "0" * 400 + ".0"])
    )
    raw = _dumps(doc).replace(b'"TX_AMOUNT": 0.5', f'"TX_AMOUNT": {literal}'.encode())
    return Message(raw, False, "nan_inf_amount", "finite")


@st.composite
def _negative_amount(draw) -> Message:
    doc = draw(transaction_docs())
    doc["TX_AMOUNT"] = draw(
        st.floats(max_value=-math.ulp(0.0), allow_infinity=False)  # -0.0 is >= 0: valid
        | st.integers(max_value=-1)
    )
    return Message(_dumps(doc), False, "negative_amount", ">= 0")


def bad_transactions() -> st.SearchStrategy[Message]:
    """Every category of malformed transaction, one defect each."""
    docs = transaction_docs()
    return st.one_of(
        _not_utf8(docs),
        _not_json(docs),
        _not_object(),
        _missing_fields(docs),
        _oversize(docs),
        _wrong_id(docs),
        _wrong_time(docs, TRANSACTION_FIELDS),
        _wrong_amount(),
        _nan_inf_amount(),
        _negative_amount(),
        _huge_int_literal(docs),
    )


# -- labels -------------------------------------------------------------------------------------


@st.composite
def _bad_fraud(draw) -> Message:
    doc = draw(label_docs())
    doc["TX_FRAUD"] = draw(
        st.integers().filter(lambda v: v not in (0, 1))
        | st.floats()
        | st.none()
        | st.text(max_size=3)
    )
    return Message(_dumps(doc), False, "bad_fraud", "TX_FRAUD")


@st.composite
def _label_before_tx(draw) -> Message:
    doc = draw(label_docs())
    tx = datetime.fromisoformat(doc["TX_DATETIME"])
    doc["LABEL_DATETIME"] = draw(
        st.datetimes(
            min_value=datetime(1970, 1, 1),
            max_value=tx.replace(microsecond=0) if tx.microsecond else tx,
        )
        .filter(lambda d: d < tx)
        .map(datetime.isoformat)
    )
    return Message(_dumps(doc), False, "label_before_tx", "before TX_DATETIME")


def bad_labels() -> st.SearchStrategy[Message]:
    """Every category of malformed label, one defect each."""
    docs = label_docs()
    return st.one_of(
        _not_utf8(docs),
        _not_json(docs),
        _not_object(),
        _missing_fields(docs),
        _oversize(docs),
        _wrong_id(docs),
        _wrong_time(docs, LABEL_FIELDS),
        _bad_fraud(),
        _label_before_tx(),
    )


# -- odd but valid: the schema accepts these (the issue calls some of them malformed) ----------


@st.composite
def odd_valid_transactions(draw) -> Message:
    """Transactions the schema accepts although they look suspicious: large amounts (up to the
    schema's 1e9), times far in the past or future (inside [1970, 2200)), -0.0,
    integer amounts, RFC 3339's lenient forms, times since the epoch (seconds, a fraction,
    milliseconds, microseconds, nanoseconds, digits), duplicate keys (the last wins), fields the
    contract does not know (ignored), ids as strings of digits, field names in a producer's
    spelling (``transaction_id``, ``transactionId``, ``TRANSACTIONID``). Their ids are
    placeholders (0): the caller assigns unique, unknown ones with :func:`with_ids`."""
    doc = {"TRANSACTION_ID": 0, "TX_DATETIME": "", "CUSTOMER_ID": 0, "TERMINAL_ID": 0}
    doc["TX_DATETIME"] = draw(times).isoformat()
    doc["TX_AMOUNT"] = draw(amounts)
    category = draw(
        st.sampled_from(
            [
                "unknown_entity_ids",
                "huge_amount",
                "far_past_time",
                "far_future_time",
                "odd_amount_form",
                "lenient_time_form",
                "duplicate_keys",
                "added_fields",
                "ids_as_text",
                "respelled_names",
                "epoch_time",
            ]
        )
    )
    if category == "huge_amount":
        doc["TX_AMOUNT"] = draw(st.floats(1e6, 1e9))  # the schema's maximum is 1e9
    elif category == "far_past_time":
        doc["TX_DATETIME"] = draw(
            st.datetimes(min_value=ENGINE_MIN, max_value=datetime(1999, 12, 31))
        ).isoformat()
    elif category == "far_future_time":
        doc["TX_DATETIME"] = draw(
            st.datetimes(min_value=datetime(2100, 1, 1), max_value=ENGINE_MAX)
        ).isoformat()
    elif category == "odd_amount_form":
        doc["TX_AMOUNT"] = draw(st.sampled_from([-0.0, 0, 0.0, 5e-324, 17, "57.16", "1E+3"]))
    elif category == "lenient_time_form":  # RFC 3339's forms: a space, Z, an offset, nanoseconds
        dt = draw(times).replace(microsecond=0)
        offset = timezone(timedelta(minutes=draw(st.integers(-23 * 60, 23 * 60))))
        doc["TX_DATETIME"] = draw(
            st.sampled_from(
                [
                    dt.isoformat(sep=" "),
                    dt.isoformat() + "Z",
                    dt.replace(tzinfo=offset).isoformat(),
                    dt.isoformat() + ".123456789Z",
                ]
            )
        )
    elif category == "epoch_time":  # time.time(), Date.now(), Go's UnixNano, protobuf's int64
        seconds = draw(times).replace(tzinfo=UTC).timestamp()
        doc["TX_DATETIME"] = draw(
            st.sampled_from(
                [
                    int(seconds),
                    seconds + 0.25,
                    int(seconds) * 1_000 + 7,
                    int(seconds) * 1_000_000,
                    int(seconds) * 10**9 + 123,
                    str(int(seconds) * 1_000),
                ]
            )
        )
    elif category == "ids_as_text":  # proto3's JSON mapping writes an int64 as a string
        doc |= {name: "0" for name in ID_FIELDS}
    elif category == "added_fields":  # a producer's upgrade: ignored, counted
        names = st.text(max_size=12).filter(lambda k: spelling(k) not in _SPELLED_FIELDS)
        doc |= draw(st.dictionaries(names, _JSON_VALUES, min_size=1, max_size=3))
    elif category == "respelled_names":  # what serialisers write by default
        respell = draw(st.sampled_from([str.lower, _camel, lambda n: n.replace("_", "")]))
        doc = {respell(name): value for name, value in doc.items()}
    raw = json.dumps(doc)
    if category == "duplicate_keys":
        raw = '{"TX_AMOUNT": "not this one", ' + raw[1:]
    return Message(raw.encode(), True, category)


_SPELLED_FIELDS = {spelling(f) for f in (*TRANSACTION_FIELDS, *LABEL_FIELDS)}


def _camel(name: str) -> str:
    """``TRANSACTION_ID`` -> ``transactionId`` (Jackson's and JavaScript's spelling)."""
    first, *rest = name.lower().split("_")
    return first + "".join(part.title() for part in rest)


def with_ids(message: Message, txid: int, customer: int, terminal: int) -> Message:
    """``message`` (from :func:`odd_valid_transactions`) with these ids."""
    raw = message.payload.decode()
    for name, value in (
        ("TRANSACTION_ID", txid),
        ("CUSTOMER_ID", customer),
        ("TERMINAL_ID", terminal),
    ):
        for spelled in (name, name.lower(), _camel(name), name.replace("_", "")):
            raw = raw.replace(f'"{spelled}": 0', f'"{spelled}": {value}', 1)
            raw = raw.replace(f'"{spelled}": "0"', f'"{spelled}": "{value}"', 1)
    return message._replace(payload=raw.encode())


# -- deterministic bulk draws -------------------------------------------------------------------


def sample(strategy: st.SearchStrategy, n: int, per_example: int = 100) -> list:
    """``n`` values of ``strategy``, the same on every run: lists of ``per_example`` values
    drawn by a derandomized ``@given`` (no example database, generation phase only)."""
    out: list = []
    batches = st.lists(strategy, min_size=per_example, max_size=per_example, unique_by=_key)

    @settings(
        max_examples=-(-n // per_example),
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(batches)
    def collect(batch: list) -> None:
        out.extend(batch)

    collect()
    assert len(out) >= n, f"hypothesis stopped after {len(out)} of {n} values"
    return out[:n]


def _key(value: object) -> object:
    return value.payload if isinstance(value, Message) else value
