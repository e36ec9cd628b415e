"""``ParseAndValidate`` alone: valid payloads -> typed records stamped by the clock; every bad
one -> a dead letter with the schema's reason and the stage; both counted per stage."""

from __future__ import annotations

import base64
import functools
import json
from datetime import UTC, datetime

from apache_beam import Create, DoFn, Map, ParDo
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue as Stamped

from streaming.job.common import NAMESPACE
from streaming.job.parse import ParseAndValidate
from streaming.schema import Label, Transaction, parse_label, parse_transaction, time_ns
from tests.streaming.job.stages import TX, batch_pipeline

NOW = 1_700_000_000.0
NOW_ISO = "2023-11-14T22:13:20+00:00"
LABEL = {k: v for k, v in TX.items() if k != "TX_AMOUNT"} | {
    "LABEL_DATETIME": "2018-04-08T07:19:05",
    "TX_FRAUD": 1,
}
TX_NS = time_ns(datetime(2018, 4, 1, 7, 19, 5))


def _dead(payload: str, error: str, stage: str, encoding: str = "text") -> dict:
    return {
        "payload": payload,
        "payload_encoding": encoding,
        "error": error,
        "stage": stage,
        "time": NOW_ISO,
    }


def test_records_and_dead_letters_of_transactions_and_labels() -> None:
    """Both parsers, as the job applies them: str and bytes payloads; bad JSON, a missing
    field, bytes that are not UTF-8 (kept as base64) and a label before its transaction."""
    later = json.dumps(TX | {"TRANSACTION_ID": 18, "TX_AMOUNT": 3})
    missing = json.dumps({"TRANSACTION_ID": 1})
    early = json.dumps(LABEL | {"LABEL_DATETIME": "2018-03-01T00:00:00"})
    p = batch_pipeline()
    txs = (
        p
        | "Transactions"
        >> Create([json.dumps(TX), later.encode(), "{not json", missing, b"\xff\xfe"])
        | "ParseTransactions"
        >> ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW)
    )
    labels = (
        p
        | "Labels" >> Create([json.dumps(LABEL).encode(), early])
        | "ParseLabels" >> ParseAndValidate(parse_label, "parse_labels", lambda: NOW)
    )
    assert_that(
        txs.records,
        equal_to(
            [
                Transaction(17, TX_NS, 5, 33, 57.16, received_at=NOW),
                Transaction(18, TX_NS, 5, 33, 3.0, received_at=NOW),
            ]
        ),
        label="TransactionRecords",
    )
    stage = "parse_transactions"
    assert_that(
        txs.dead_letter,
        equal_to(
            [
                _dead(
                    "{not json",
                    "payload is not JSON (Expecting property name enclosed in double quotes "
                    "at char 1)",
                    stage,
                ),
                _dead(
                    missing,
                    "missing field(s) ['TX_DATETIME', 'CUSTOMER_ID', 'TERMINAL_ID', 'TX_AMOUNT']",
                    stage,
                ),
                _dead(
                    "//4=", "payload is not UTF-8 (invalid start byte at byte 0)", stage, "base64"
                ),
            ]
        ),
        label="TransactionDeadLetters",
    )
    label_ns = time_ns(datetime(2018, 4, 8, 7, 19, 5))
    assert_that(
        labels.records,
        equal_to([Label(17, 5, 33, TX_NS, label_ns, 1, received_at=NOW)]),
        label="LabelRecords",
    )
    assert_that(
        labels.dead_letter,
        equal_to([_dead(early, "LABEL_DATETIME is before TX_DATETIME", "parse_labels")]),
        label="LabelDeadLetters",
    )
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    assert {c.key.metric.name: c.result for c in counters} == {
        "parse_transactions_ok": 2,
        "parse_transactions_dead_letter": 3,
        "parse_labels_ok": 1,
        "parse_labels_dead_letter": 1,
    }


def test_unknown_fields_are_counted_by_name_and_records_carry_their_event_time() -> None:
    """A producer's added fields are ignored and counted per name; each record is stamped
    with its own time, so the ``event_time`` attribute is optional."""

    class _Stamp(DoFn):
        def process(self, record, ts=DoFn.TimestampParam):
            yield record.transaction_id, ts.micros

    upgraded = [json.dumps(TX | {"CURRENCY": "EUR"}), json.dumps(TX | {"CURRENCY": "EUR",
                "CHANNEL": "web", "TRANSACTION_ID": 19})]  # fmt: skip
    p = batch_pipeline()
    txs = (
        p
        | Create([*upgraded, json.dumps(TX | {"TRANSACTION_ID": 20})])
        | Map(lambda payload: Stamped(payload, 0))  # a publish time unrelated to the event
        | ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW)
    )
    assert_that(
        txs.records | ParDo(_Stamp()),
        equal_to([(17, TX_NS // 1_000), (19, TX_NS // 1_000), (20, TX_NS // 1_000)]),
    )
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    got = {c.key.metric.name: c.result for c in counters}
    assert got["parse_transactions_ok"] == 3
    assert got["parse_transactions_unknown_field_CURRENCY"] == 2
    assert got["parse_transactions_unknown_field_CHANNEL"] == 1
    assert "parse_transactions_dead_letter" not in got or got["parse_transactions_dead_letter"] == 0


def test_with_ids_records_leave_pseudonymised_and_dead_letters_keep_the_payload(
    monkeypatch,
) -> None:
    """``ids``: each record's customer and terminal ids are the key's pseudonyms (a label's
    too; a transaction keeps its clear ids with ``keep_clear``), while a bad payload's dead
    letter holds it as sent."""
    from streaming.job.ids import PseudonymiseIds
    from streaming.pseudonymise import ENV_KEY, ENV_KEY_SECRET, Pseudonymiser

    key = bytes(range(32))
    monkeypatch.delenv(ENV_KEY_SECRET, raising=False)
    monkeypatch.setenv(ENV_KEY, key.hex())
    pz = Pseudonymiser(key)
    ids = PseudonymiseIds(keep_clear=True)
    p = batch_pipeline()
    txs = (
        p
        | "Transactions" >> Create([json.dumps(TX), "{not json"])
        | "ParseTransactions"
        >> ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW, ids)
    )
    labels = (
        p
        | "Labels" >> Create([json.dumps(LABEL)])
        | "ParseLabels" >> ParseAndValidate(parse_label, "parse_labels", lambda: NOW, ids)
    )
    customer, terminal = pz.customer(5), pz.terminal(33)
    assert (customer, terminal) != (5, 33)
    tx = Transaction(17, TX_NS, customer, terminal, 57.16, received_at=NOW, clear_ids=(5, 33))
    assert_that(txs.records, equal_to([tx]), label="Transactions")
    assert_that(
        labels.records | Map(lambda r: (r.customer_id, r.terminal_id)),
        equal_to([(customer, terminal)]),
        label="Labels",
    )
    assert_that(
        txs.dead_letter | Map(lambda d: d["payload"]), equal_to(["{not json"]), label="Dead"
    )
    p.run().wait_until_finish()


def test_text_ids_are_pseudonymised_by_their_keys_and_kept_as_sent_for_alerts(
    monkeypatch,
) -> None:
    """A card token and a zero-padded terminal code become the pseudonyms of their keys, as a
    label's do; the clear ids kept for investigators are the text, and the transaction's own
    text id stays for its alert (it is never pseudonymised)."""
    from features.limits import text_key
    from streaming.job.ids import PseudonymiseIds
    from streaming.pseudonymise import ENV_KEY, ENV_KEY_SECRET, Pseudonymiser

    key = bytes(range(32))
    monkeypatch.delenv(ENV_KEY_SECRET, raising=False)
    monkeypatch.setenv(ENV_KEY, key.hex())
    pz = Pseudonymiser(key)
    texts = {"TRANSACTION_ID": "txn-8f14e45f", "CUSTOMER_ID": "card_tok_9Xq", "TERMINAL_ID": "0033"}
    p = batch_pipeline()
    for keep_clear in (False, True):
        ids = PseudonymiseIds(keep_clear=keep_clear)
        txs = (
            p
            | f"Transactions{keep_clear}" >> Create([json.dumps(TX | texts)])
            | f"ParseTransactions{keep_clear}"
            >> ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW, ids)
        )
        customer, terminal = pz.customer(text_key("card_tok_9Xq")), pz.terminal(text_key("0033"))
        expected = Transaction(
            text_key("txn-8f14e45f"), TX_NS, customer, terminal, 57.16, received_at=NOW,
            clear_ids=("card_tok_9Xq", "0033") if keep_clear else None,
            text_ids=("txn-8f14e45f", None, None),
        )  # fmt: skip
        assert_that(txs.records, equal_to([expected]), label=f"Transactions{keep_clear}")
    labels = (
        p
        | "Labels" >> Create([json.dumps(LABEL | texts)])
        | "ParseLabels" >> ParseAndValidate(parse_label, "parse_labels", lambda: NOW, ids)
    )
    assert_that(
        labels.records | Map(lambda r: (r.transaction_id, r.customer_id, r.terminal_id)),
        equal_to([(text_key("txn-8f14e45f"), customer, terminal)]),
        label="Labels",
    )
    p.run().wait_until_finish()


def test_records_land_in_the_window_of_their_event_time_in_any_windowing() -> None:
    """In the global window (a Pub/Sub read's) and in event-time windows of the input: a record
    is assigned by its own time, not by the payload's."""
    from apache_beam import WindowInto
    from apache_beam.transforms.window import FixedWindows, GlobalWindow, IntervalWindow

    class _Window(DoFn):
        def process(self, record, ts=DoFn.TimestampParam, window=DoFn.WindowParam):
            yield record.transaction_id, ts.micros, window

    hour = TX_NS // 1_000_000_000 // 3600 * 3600
    for windowing, expected in [
        (None, GlobalWindow()),
        (FixedWindows(3600), IntervalWindow(hour, hour + 3600)),
    ]:
        p = batch_pipeline()
        payloads = p | Create([json.dumps(TX)]) | Map(lambda payload: Stamped(payload, 0))
        if windowing is not None:
            payloads = payloads | WindowInto(windowing)
        txs = payloads | ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW)
        assert_that(txs.records | ParDo(_Window()), equal_to([(17, TX_NS // 1_000, expected)]))
        p.run().wait_until_finish()


def test_with_schemas_messages_are_decoded_by_their_schema_and_dead_letters_keep_attributes():
    """``schemas``: ``PubsubMessage``s in; an Avro record of a schema topic and a JSON message
    of a topic without one are both records; a record the contract refuses (a negative id)
    and bytes that are not a record of the schema are dead letters holding the payload (base64)
    and the attributes naming the schema revision, to replay it."""
    import io

    import fastavro
    from apache_beam.io import PubsubMessage

    from streaming.pubsub_schemas import SchemaDecoder, SchemaRevision
    from streaming.schema import SCHEMAS

    avsc = (SCHEMAS / "transaction.avsc").read_text()
    schema = fastavro.parse_schema(json.loads(avsc))

    def avro(**fields) -> bytes:
        out = io.BytesIO()
        record = TX | {"TX_DATETIME": datetime(2018, 4, 1, 7, 19, 5, tzinfo=UTC)} | fields
        fastavro.schemaless_writer(out, schema, record)
        return out.getvalue()

    attrs = {
        "googclient_schemaname": "projects/p/schemas/tx",
        "googclient_schemarevisionid": "r1",
        "googclient_schemaencoding": "BINARY",
    }
    negative, garbage = avro(CUSTOMER_ID=-5), b"\x02"
    no_schema = json.dumps(TX | {"TRANSACTION_ID": 18}).encode()
    messages = [PubsubMessage(avro(), attrs), PubsubMessage(no_schema, {}),
                PubsubMessage(negative, attrs), PubsubMessage(garbage, attrs)]  # fmt: skip
    decoder = SchemaDecoder(functools.partial(SchemaRevision, type="AVRO", definition=avsc))
    p = batch_pipeline()
    txs = (
        p
        | Create(messages)
        | ParseAndValidate(parse_transaction, "parse_transactions", lambda: NOW, schemas=decoder)
    )
    records = [Transaction(17, TX_NS, 5, 33, 57.16, received_at=NOW),
               Transaction(18, TX_NS, 5, 33, 57.16, received_at=NOW)]  # fmt: skip
    assert_that(txs.records, equal_to(records), label="Records")

    def dead(payload: bytes, error: str) -> dict:
        encoded = base64.b64encode(payload).decode()
        return _dead(encoded, error, "parse_transactions", "base64") | {"attributes": attrs}

    letters = [
        dead(negative, "CUSTOMER_ID must be in [0, 2**63), got -5"),
        dead(garbage, "payload is not Avro BINARY of schema projects/p/schemas/tx@r1 "
                      "(EOFError: ends inside the record)"),
    ]  # fmt: skip
    assert_that(txs.dead_letter, equal_to(letters), label="DeadLetters")
    p.run().wait_until_finish()
