"""The published wire contract (``streaming/schemas/*.json``) and the parsers agree.

Each case is judged by the JSON Schema (jsonschema, draft 2020-12) and by the parser; they must
reach the same verdict. JSON Schema cannot say two things the contract says, so those cases are
listed in :data:`STRICTER_THAN_SCHEMA`: ids written as floats (``5.0`` is an integer to JSON
Schema), ids written as 19 digits above 2**63 - 1 and amounts written as strings above 1e9 (a
pattern bounds their form, not their value), calendar-invalid dates (a pattern cannot know
February has no 30th) and a field given in two spellings. The other way round,
:data:`LOOSER_THAN_SCHEMA`: the schema names each field in its canonical spelling only.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from features.limits import TEXT_ID, text_key
from streaming.schema import (
    LABEL_FIELDS,
    TRANSACTION_FIELDS,
    WIRE_VERSION,
    WireContract,
    load_schema,
    parse_label,
    parse_transaction,
    time_ns,
)

SCHEMAS = {kind: load_schema(kind) for kind in ("transaction", "label")}
REGISTRY = Registry().with_resources(
    (s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()
)
VALIDATORS = {k: Draft202012Validator(s, registry=REGISTRY) for k, s in SCHEMAS.items()}
PARSERS = {"transaction": parse_transaction, "label": parse_label}
NODE_PRODUCER = Path(__file__).resolve().parents[1] / "producers" / "node"

TX = {"TRANSACTION_ID": 17, "TX_DATETIME": "2018-08-15T10:02:00", "CUSTOMER_ID": 5,
      "TERMINAL_ID": 33, "TX_AMOUNT": 57.16}  # fmt: skip
LABEL = {"TRANSACTION_ID": 17, "CUSTOMER_ID": 5, "TERMINAL_ID": 33,
         "TX_DATETIME": "2018-08-15T10:02:00Z", "LABEL_DATETIME": "2018-08-22T10:02:00Z",
         "TX_FRAUD": 1}  # fmt: skip

SPELLED = [
    ("transaction", {"transaction_id": 17, "tx_datetime": "2018-08-15T10:02:00Z",
                     "customer_id": 5, "terminal_id": 33, "tx_amount": 57.16}),
    ("transaction", {"transactionId": 17, "txDatetime": "2018-08-15T10:02:00Z",
                     "customerId": "5", "terminalId": 33, "txAmount": 57.16}),
    ("transaction", {"TRANSACTIONID": "17", "TXDATETIME": "2018-08-15T10:02:00Z",
                     "CUSTOMERID": "5", "TERMINALID": "33", "TXAMOUNT": 57.16}),
    ("label", {"transactionId": 17, "customerId": 5, "terminalId": 33,
               "txDatetime": "2018-08-15T10:02:00Z", "labelDatetime": "2018-08-22T10:02:00Z",
               "txFraud": True}),
]  # fmt: skip
"""Accepted with each field under another spelling of its name (case and underscores aside)."""
EPOCHS = [
    ("transaction", {**TX, "TX_DATETIME": 1534327320}),  # time.time() // 1, Go's Unix()
    ("transaction", {**TX, "TX_DATETIME": 1534327320.123456}),  # time.time(), Jackson Instant
    ("transaction", {**TX, "TX_DATETIME": 1534327320123}),  # Date.now(), Jackson's Date
    ("transaction", {**TX, "TX_DATETIME": 1534327320123456}),  # BigQuery's TIMESTAMP micros
    ("transaction", {**TX, "TX_DATETIME": 1534327320123456789}),  # Go's UnixNano()
    ("transaction", {**TX, "TX_DATETIME": "1534327320123"}),  # protobuf's int64 JSON
    ("transaction", {**TX, "TX_DATETIME": 100_000_000}),  # 1973-03-03T09:46:40Z
]
"""Accepted: times since the epoch, their unit told by their size."""
TEXT_IDS = [
    ("transaction", {**TX, "TRANSACTION_ID": "9b2f0c1e-4a8d-4c57-9e3a-2f6d1b7c8e90",
                     "CUSTOMER_ID": "card_1NqL8e2eZvKYlo2C", "TERMINAL_ID": "000123"}),
    ("transaction", {**TX, "CUSTOMER_ID": "05"}),
    ("transaction", {**TX, "CUSTOMER_ID": "5.0"}),
    ("transaction", {**TX, "TERMINAL_ID": "Caf\u00e9 du Coin #7"}),
    ("transaction", {**TX, "CUSTOMER_ID": "x" * 128}),
    ("label", {**LABEL, "TRANSACTION_ID": "9b2f0c1e-4a8d-4c57-9e3a-2f6d1b7c8e90",
               "CUSTOMER_ID": "card_1NqL8e2eZvKYlo2C", "TERMINAL_ID": "000123"}),
]  # fmt: skip
"""Accepted with text ids: a UUID, a card token, a zero-padded code (text, not 123), any text
that is not a number's digits."""

CASES = [
    ("transaction", TX),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15T10:02:00Z"}),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15T12:02:00+02:00"}),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15T05:02:00.123456789-05:00"}),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15 10:02:00"}),
    ("transaction", {**TX, "CURRENCY": "EUR"}),
    ("transaction", {**TX, "TX_AMOUNT": 57}),
    ("transaction", {**TX, "TX_AMOUNT": 0}),
    ("transaction", {**TX, "TX_AMOUNT": -1}),
    ("transaction", {**TX, "TX_AMOUNT": 2e9}),
    ("transaction", {**TX, "TX_AMOUNT": "57.16"}),
    ("transaction", {**TX, "TX_AMOUNT": "1E+3"}),
    ("transaction", {**TX, "TX_AMOUNT": "0.00"}),
    ("transaction", {**TX, "TX_AMOUNT": "2e9"}),
    ("transaction", {**TX, "TX_AMOUNT": "-1"}),
    ("transaction", {**TX, "TX_AMOUNT": "057.16"}),
    ("transaction", {**TX, "TX_AMOUNT": "57,16"}),
    ("transaction", {**TX, "TX_AMOUNT": " 57.16"}),
    ("transaction", {**TX, "TX_AMOUNT": "NaN"}),
    ("transaction", {**TX, "TX_AMOUNT": ".5"}),
    ("transaction", {**TX, "CUSTOMER_ID": True}),
    ("transaction", {**TX, "CUSTOMER_ID": "5"}),
    ("transaction", {**TX, "TRANSACTION_ID": "9223372036854775807"}),
    ("transaction", {**TX, "TRANSACTION_ID": "9223372036854775808"}),
    *TEXT_IDS,
    ("transaction", {**TX, "CUSTOMER_ID": "+5"}),
    ("transaction", {**TX, "CUSTOMER_ID": "-5"}),
    ("transaction", {**TX, "CUSTOMER_ID": "-05"}),
    ("transaction", {**TX, "CUSTOMER_ID": " 5"}),
    ("transaction", {**TX, "CUSTOMER_ID": "card 5 "}),
    ("transaction", {**TX, "CUSTOMER_ID": "card\t5"}),
    ("transaction", {**TX, "CUSTOMER_ID": "x" * 129}),
    ("transaction", {**TX, "CUSTOMER_ID": ""}),
    ("transaction", {**TX, "CUSTOMER_ID": "123456789012345678901"}),
    ("label", {**LABEL, "TRANSACTION_ID": "17", "TERMINAL_ID": "33"}),
    ("transaction", {**TX, "CUSTOMER_ID": -5}),
    ("transaction", {**TX, "CUSTOMER_ID": 5.0}),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15"}),
    ("transaction", {**TX, "TX_DATETIME": "20180815T100200Z"}),
    ("transaction", {**TX, "TX_DATETIME": "2018-08-15T10:02"}),
    ("transaction", {**TX, "TX_DATETIME": "1969-12-31T23:59:59Z"}),
    ("transaction", {**TX, "TX_DATETIME": "2018-02-30T10:02:00Z"}),
    *EPOCHS,
    ("transaction", {**TX, "TX_DATETIME": 99_999_999}),  # 1973-03-03: the smallest
    ("transaction", {**TX, "TX_DATETIME": 7_258_118_400}),  # 2200 in seconds
    ("transaction", {**TX, "TX_DATETIME": 99_999_999_999}),  # between seconds and ms
    ("transaction", {**TX, "TX_DATETIME": -1534327320}),
    ("transaction", {**TX, "TX_DATETIME": True}),
    ("transaction", {**TX, "TX_DATETIME": "01534327320"}),
    ("transaction", {**TX, "TX_DATETIME": "99999999999"}),  # digits: the form, not the range
    ("label", {**LABEL, "LABEL_DATETIME": 1534932120000}),
    ("transaction", {k: v for k, v in TX.items() if k != "TERMINAL_ID"}),
    ("label", LABEL),
    ("label", {**LABEL, "SOURCE": "chargeback"}),
    ("label", {**LABEL, "TX_FRAUD": True}),
    ("label", {**LABEL, "TX_FRAUD": False}),
    ("label", {**LABEL, "TX_FRAUD": 0}),
    ("label", {**LABEL, "TX_FRAUD": None}),
    ("label", {**LABEL, "TX_FRAUD": 2}),
    ("label", {**LABEL, "TX_FRAUD": "1"}),
    ("label", {**LABEL, "LABEL_DATETIME": "2018-08-22 12:02:00+02:00"}),
    ("label", {k: v for k, v in LABEL.items() if k != "TX_FRAUD"}),
    *SPELLED,
    ("transaction", {**TX, "customerId": 6}),
    ("transaction", {**{k: v for k, v in TX.items() if k != "CUSTOMER_ID"}, "customerId": 5,
                     "customer_id": 5}),
    ("transaction", {**{k: v for k, v in TX.items() if k != "CUSTOMER_ID"}, "customerId": -5}),
    ("transaction", {**{k: v for k, v in TX.items() if k != "CUSTOMER_ID"}, "customer": 5}),
]  # fmt: skip
LOOSER_THAN_SCHEMA = {json.dumps(doc) for _, doc in SPELLED}
"""The schema lists each field's canonical name; the parser also takes other spellings of it
(case and underscores aside), and refuses one given twice, which the schema cannot say."""
STRICTER_THAN_SCHEMA = {
    json.dumps({**TX, "customerId": 6}),  # CUSTOMER_ID given twice
    json.dumps({**TX, "CUSTOMER_ID": 5.0}),
    json.dumps({**TX, "TRANSACTION_ID": "9223372036854775808"}),
    json.dumps({**TX, "TX_AMOUNT": "2e9"}),
    json.dumps({**TX, "TX_DATETIME": "2018-02-30T10:02:00Z"}),
    json.dumps({**TX, "TX_DATETIME": "99999999999"}),
}


def _parser_accepts(kind: str, payload: str) -> bool:
    try:
        PARSERS[kind](payload)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("kind", "doc"), CASES)
def test_the_parser_and_the_published_schema_agree(kind: str, doc: dict) -> None:
    payload = json.dumps(doc)
    schema_accepts = VALIDATORS[kind].is_valid(json.loads(payload))
    if payload in STRICTER_THAN_SCHEMA:
        assert schema_accepts and not _parser_accepts(kind, payload)
    elif payload in LOOSER_THAN_SCHEMA:
        assert _parser_accepts(kind, payload) and not schema_accepts
    else:
        assert _parser_accepts(kind, payload) == schema_accepts


def test_the_schemas_list_the_fields_the_parsers_require_and_carry_one_version() -> None:
    assert tuple(SCHEMAS["transaction"]["required"]) == TRANSACTION_FIELDS
    assert tuple(SCHEMAS["label"]["required"]) == LABEL_FIELDS
    assert SCHEMAS["label"]["version"] == SCHEMAS["transaction"]["version"] == WIRE_VERSION
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    "written",
    [
        "2018-08-15T10:02:00Z",
        "2018-08-15T12:02:00+02:00",
        "2018-08-15T05:02:00-05:00",
        "2018-08-15T10:02:00.000Z",
        "2018-08-15T10:02:00",
        "2018-08-15 10:02:00",
    ],
)
def test_every_spelling_of_one_instant_is_the_same_utc_time(written: str) -> None:
    tx = parse_transaction(json.dumps({**TX, "TX_DATETIME": written}))
    assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2))


def test_nanoseconds_are_kept() -> None:
    tx = parse_transaction(json.dumps({**TX, "TX_DATETIME": "2018-08-15T10:02:00.123456789Z"}))
    assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2)) + 123_456_789


def test_naive_times_are_read_in_the_configured_time_zone() -> None:
    contract = WireContract(naive_time_zone="Europe/Brussels")  # UTC+2 in August
    tx = parse_transaction(json.dumps({**TX, "TX_DATETIME": "2018-08-15T12:02:00"}), 0.0, contract)
    assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2))
    explicit = json.dumps({**TX, "TX_DATETIME": "2018-08-15T10:02:00Z"})
    assert parse_transaction(explicit, 0.0, contract).time_ns == tx.time_ns  # offset wins


def test_an_unknown_time_zone_is_refused_with_the_option_name() -> None:
    with pytest.raises(ValueError, match="--naive_time_zone 'Mars/Olympus'"):
        WireContract(naive_time_zone="Mars/Olympus")


def test_unknown_fields_are_reported_or_with_strict_fields_refused() -> None:
    payload = json.dumps({**TX, "CURRENCY": "EUR", "CHANNEL": "web"})
    seen: list[list[str]] = []
    tx = parse_transaction(payload, unknown=seen.append)
    assert tx.amount == TX["TX_AMOUNT"] and seen == [["CHANNEL", "CURRENCY"]]
    parse_transaction(json.dumps(TX), unknown=seen.append)
    assert len(seen) == 1  # nothing reported for a message without unknown fields
    with pytest.raises(ValueError, match=r"unexpected field\(s\) \['CHANNEL', 'CURRENCY'\]"):
        parse_transaction(payload, contract=WireContract(strict_fields=True))


def test_a_text_id_is_keyed_by_its_sha256_and_kept_as_sent_while_digits_are_numbers() -> None:
    _, doc = TEXT_IDS[0]
    tx = parse_transaction(json.dumps(doc))
    texts = (doc["TRANSACTION_ID"], doc["CUSTOMER_ID"], doc["TERMINAL_ID"])
    assert (tx.transaction_id, tx.customer_id, tx.terminal_id) == tuple(map(text_key, texts))
    assert tx.text_ids == texts
    assert text_key("000123") != 123 and 0 <= text_key("000123") < 2**63
    label = parse_label(json.dumps(TEXT_IDS[-1][1]))  # the same ids in a label: the same keys
    assert (label.transaction_id, label.customer_id, label.terminal_id) == tuple(
        map(text_key, texts)
    )
    mixed = parse_transaction(json.dumps({**TX, "TRANSACTION_ID": "17", "CUSTOMER_ID": "05"}))
    assert mixed.transaction_id == 17 and mixed.text_ids == (None, "05", None)
    assert parse_transaction(json.dumps({**TX, "CUSTOMER_ID": "5"})).text_ids is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [("-5", "CUSTOMER_ID is a signed number"), (" 5", "CUSTOMER_ID has spaces at an end"),
     ("a\tb", "CUSTOMER_ID holds control characters"), ("", "CUSTOMER_ID is empty"),
     ("x" * 129, "CUSTOMER_ID is 129 characters long, more than 128"),
     ("9" * 20, r"CUSTOMER_ID must be in \[0, 2\*\*63\)")],
)  # fmt: skip
def test_a_string_that_is_no_id_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_transaction(json.dumps({**TX, "CUSTOMER_ID": text}))


def test_the_schema_states_the_text_id_rule_the_parser_applies() -> None:
    patterns = [a.get("pattern") for a in SCHEMAS["transaction"]["$defs"]["id"]["oneOf"]]
    assert TEXT_ID in patterns


def test_a_node_producers_own_validator_and_hash_agree_with_the_contract(node: str) -> None:
    """Ajv (ECMAScript regular expressions, as a JavaScript service validates) reaches the
    Python validator's verdict on every case, and node:crypto computes the key a text id gets
    from the rule the schema states."""
    texts = sorted({v for _, doc in TEXT_IDS for v in doc.values() if isinstance(v, str)} - {
        TX["TX_DATETIME"], LABEL["TX_DATETIME"], LABEL["LABEL_DATETIME"]})  # fmt: skip
    request = {"schemas": SCHEMAS, "cases": [{"kind": k, "doc": d} for k, d in CASES],
               "texts": texts}  # fmt: skip
    done = subprocess.run([node, "wire_contract.mjs"], input=json.dumps(request), cwd=NODE_PRODUCER,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    python = [VALIDATORS[kind].is_valid(doc) for kind, doc in CASES]
    assert answer["valid"] == python
    assert sum(python) > len(TEXT_IDS)  # accepted and refused cases alike
    assert [int(k) for k in answer["keys"]] == [text_key(t) for t in texts]


def test_a_time_since_the_epoch_is_read_in_the_unit_its_size_tells() -> None:
    at = time_ns(datetime(2018, 8, 15, 10, 2))
    expected = [
        at,
        at + 123_456_000,
        at + 123_000_000,
        at + 123_456_000,
        at + 123_456_789,
        at + 123_000_000,
    ]
    for (_, doc), ns in zip(EPOCHS, expected, strict=False):
        assert parse_transaction(json.dumps(doc)).time_ns == ns, doc
    iso = parse_transaction(json.dumps({**TX, "TX_DATETIME": "2018-08-15T10:02:00.123Z"}))
    ms = parse_transaction(json.dumps({**TX, "TX_DATETIME": 1534327320123}))
    assert iso.time_ns == ms.time_ns
    paris = WireContract(naive_time_zone="Europe/Paris")  # a number is UTC, whatever the zone
    assert parse_transaction(json.dumps(EPOCHS[0][1]), contract=paris).time_ns == at
