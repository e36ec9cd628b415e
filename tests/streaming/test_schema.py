"""Wire schema: valid payloads parse to typed records, bad ones raise ValueError with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streaming.schema import (
    MAX_PAYLOAD_BYTES,
    Label,
    Transaction,
    label_json,
    parse_label,
    parse_transaction,
    transaction_json,
)
from tests.streaming.job.stages import TX


def test_transaction_round_trip() -> None:
    tx = parse_transaction(json.dumps(TX).encode())
    assert tx == Transaction(17, 1522567145 * 10**9, 5, 33, 57.16)
    assert parse_transaction(transaction_json(tx)) == tx


def test_label_round_trip() -> None:
    label = Label(17, 5, 33, 10**18, 10**18 + 7 * 86_400 * 10**9, 1)
    assert parse_label(label_json(label)) == label


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (json.dumps({k: v for k, v in TX.items() if k != "TX_AMOUNT"}), "missing"),
        (json.dumps({**TX, "CUSTOMER_ID": 5.0}), "CUSTOMER_ID must be an integer"),
        (json.dumps({**TX, "CUSTOMER_ID": None}), "CUSTOMER_ID must be an integer or a string"),
        (json.dumps({**TX, "CUSTOMER_ID": "-5"}), "CUSTOMER_ID is a signed number"),
        (json.dumps({**TX, "CUSTOMER_ID": str(2**63)}), r"must be in \[0, 2\*\*63\)"),
        (json.dumps({**TX, "CUSTOMER_ID": True}), "CUSTOMER_ID must be an integer"),
        (json.dumps({**TX, "TX_AMOUNT": -1}), "finite and >= 0"),
        (json.dumps({**TX, "TX_AMOUNT": float("nan")}), "finite and >= 0"),
        (json.dumps({**TX, "TX_AMOUNT": float("inf")}), "finite and >= 0"),
        (json.dumps({**TX, "TX_DATETIME": "yesterday"}), "not an RFC 3339"),
        (json.dumps({**TX, "TX_DATETIME": "2018-02-30T07:19:05Z"}), "not a valid time"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
    ],
)
def test_bad_transactions_say_why(payload: bytes | str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_transaction(payload)


def test_ids_written_as_strings_of_digits_are_the_same_ids() -> None:
    """proto3's JSON mapping writes every int64 as a string: the same transaction."""
    as_text = {**TX, **{k: str(TX[k]) for k in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")}}
    assert parse_transaction(json.dumps(as_text)) == parse_transaction(json.dumps(TX))
    big = parse_transaction(json.dumps({**TX, "CUSTOMER_ID": str(2**63 - 1)}))
    assert big.customer_id == 2**63 - 1


def test_a_services_uuid_and_token_ids_are_text_ids_keyed_alike_in_labels() -> None:
    """A FastAPI service's model with a UUID transaction id, a card token and a terminal code:
    pydantic writes each as a string; the job keys them by their text and keeps it for the
    alert, and the service's label of that transaction carries the same keys."""
    from uuid import UUID, uuid4

    from pydantic import BaseModel

    from features.limits import text_key

    class Payment(BaseModel):
        transaction_id: UUID
        tx_datetime: datetime
        customer_id: str
        terminal_id: str
        tx_amount: float

    class Outcome(BaseModel):
        transaction_id: UUID
        customer_id: str
        terminal_id: str
        tx_datetime: datetime
        label_datetime: datetime
        tx_fraud: bool

    at, tid = datetime(2018, 8, 15, 10, 2, tzinfo=UTC), uuid4()
    ids = {"transaction_id": tid, "customer_id": "card_1NqL8e2eZvKYlo2C", "terminal_id": "00042"}
    tx = parse_transaction(Payment(**ids, tx_datetime=at, tx_amount=12.5).model_dump_json())
    assert tx.text_ids == (str(tid), "card_1NqL8e2eZvKYlo2C", "00042")
    assert (tx.transaction_id, tx.customer_id, tx.terminal_id) == tuple(map(text_key, tx.text_ids))
    label = parse_label(
        Outcome(**ids, tx_datetime=at, label_datetime=at, tx_fraud=True).model_dump_json()
    )
    assert (label.transaction_id, label.customer_id, label.terminal_id, label.fraud) == (
        tx.transaction_id, tx.customer_id, tx.terminal_id, 1,
    )  # fmt: skip
    assert UUID(tx.text_ids[0]) == tid


def test_an_amount_as_a_decimal_string_is_the_same_amount() -> None:
    """pydantic's Decimal and Go's shopspring/decimal serialise to strings ("57.16", "1E+3")."""
    from decimal import Decimal

    from pydantic import BaseModel

    class Payment(BaseModel):  # a FastAPI service's model
        TRANSACTION_ID: int
        TX_DATETIME: datetime
        CUSTOMER_ID: int
        TERMINAL_ID: int
        TX_AMOUNT: Decimal

    at = datetime(2018, 8, 15, 10, 2, tzinfo=UTC)
    for amount in ("57.16", "1E+3", "0.00"):
        payload = Payment(TRANSACTION_ID=17, TX_DATETIME=at, CUSTOMER_ID=5, TERMINAL_ID=33,
                          TX_AMOUNT=Decimal(amount)).model_dump_json()  # fmt: skip
        assert f'"TX_AMOUNT":"{amount}"' in payload
        assert parse_transaction(payload).amount == float(amount)
    for bad in ("-1", "57,16", "NaN", ".5", "2e9"):
        with pytest.raises(ValueError, match="TX_AMOUNT"):
            parse_transaction(json.dumps({**TX, "TX_AMOUNT": bad}))


def test_a_leading_byte_order_mark_is_ignored() -> None:
    """RFC 8259 lets a parser ignore one; PowerShell's and some .NET writers' UTF-8 has one."""
    payload = json.dumps(TX).encode()
    assert parse_transaction(b"\xef\xbb\xbf" + payload) == parse_transaction(payload)
    assert parse_transaction("\ufeff" + json.dumps(TX)) == parse_transaction(payload)
    with pytest.raises(ValueError, match="not JSON"):  # only a leading one
        parse_transaction(payload[:1] + b"\xef\xbb\xbf" + payload[1:])
    with pytest.raises(ValueError, match="not UTF-8"):  # UTF-16 is not the contract
        parse_transaction(json.dumps(TX).encode("utf-16"))


def test_bad_label_fraud_flag() -> None:
    label = json.loads(label_json(Label(1, 2, 3, 0, 0, 1)))
    for bad in (2, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"TX_FRAUD must be 0 or 1 \(or false or true\)"):
            parse_label(json.dumps({**label, "TX_FRAUD": bad}))


def test_a_boolean_fraud_flag_is_the_same_label() -> None:
    label = json.loads(label_json(Label(1, 2, 3, 0, 0, 1)))
    assert parse_label(json.dumps({**label, "TX_FRAUD": True})).fraud == 1
    assert parse_label(json.dumps({**label, "TX_FRAUD": False})).fraud == 0
    assert type(parse_label(json.dumps({**label, "TX_FRAUD": True})).fraud) is int
