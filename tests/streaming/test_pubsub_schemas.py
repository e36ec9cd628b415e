"""Messages of Pub/Sub schema topics: Avro records, written by fastavro as a producer would,
decoded with the revision named in their attributes and read by the wire contract's parsers.
The schema service is a function here; its real client runs against the emulator at the end
(and the whole job, fed by Node.js's avsc, in ``test_real_producers.py``)."""

from __future__ import annotations

import io
import json
import pickle
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.local.job_process import PROJECT
from streaming.pubsub_schemas import (
    RETRY_S,
    SCHEMA_ENCODING,
    SCHEMA_NAME,
    SCHEMA_REVISION,
    SchemaDecoder,
    SchemaRevision,
    fetch_from_pubsub,
)
from streaming.schema import (
    LABEL_FIELDS,
    SCHEMAS,
    TRANSACTION_FIELDS,
    WireContract,
    parse_label,
    parse_transaction,
    time_ns,
)

NAME = "projects/acme/schemas/transaction"
TX_AVSC = json.loads((SCHEMAS / "transaction.avsc").read_text())
LABEL_AVSC = json.loads((SCHEMAS / "label.avsc").read_text())
WHEN = datetime(2018, 8, 15, 10, 2, tzinfo=UTC)
TX = {"TRANSACTION_ID": 17, "TX_DATETIME": WHEN, "CUSTOMER_ID": 2**62 + 5, "TERMINAL_ID": 33,
      "TX_AMOUNT": 57.16}  # fmt: skip


def attributes(revision: str = "r1", encoding: str = "BINARY", name: str = NAME) -> dict:
    return {SCHEMA_NAME: name, SCHEMA_REVISION: revision, SCHEMA_ENCODING: encoding}


def avro_bytes(schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def avro_payload(schema: dict, record: dict, encoding: str) -> bytes:
    """``record`` as a producer publishes it to a topic in ``encoding`` (BINARY or JSON)."""
    if encoding == "BINARY":
        return avro_bytes(schema, record)
    text = io.StringIO()
    fastavro.json_writer(text, fastavro.parse_schema(schema), [record])
    return text.getvalue().encode()


class Service:
    """Schema revisions by ``name@revision``, as the schema service keeps them; counts fetches."""

    def __init__(self, revisions: dict[str, dict | str], kind: str = "AVRO") -> None:
        self.revisions, self.kind, self.fetched = revisions, kind, []

    def __call__(self, name: str) -> SchemaRevision:
        self.fetched.append(name)
        definition = self.revisions.get(name.rsplit("@", 1)[-1])
        if definition is None:
            raise LookupError("404 Schema revision not found")
        if not isinstance(definition, str):
            definition = json.dumps(definition)
        return SchemaRevision(name, self.kind, definition)


def test_a_binary_record_of_the_published_schema_is_a_transaction() -> None:
    service = Service({"r1": TX_AVSC})
    decode = SchemaDecoder(service)
    fields = decode(avro_bytes(TX_AVSC, TX), attributes())
    tx = parse_transaction(fields)
    assert (tx.transaction_id, tx.customer_id, tx.terminal_id) == (17, 2**62 + 5, 33)
    assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2)) and tx.amount == 57.16
    assert service.fetched == [f"{NAME}@r1"]


def test_a_label_in_avro_json_encoding() -> None:
    label = {"TRANSACTION_ID": 17, "CUSTOMER_ID": 5, "TERMINAL_ID": 33, "TX_DATETIME": WHEN,
             "LABEL_DATETIME": WHEN.replace(day=22), "TX_FRAUD": True}  # fmt: skip
    writer = fastavro.parse_schema(LABEL_AVSC)
    text = io.StringIO()
    fastavro.json_writer(text, writer, [label])
    decode = SchemaDecoder(Service({"r1": LABEL_AVSC}))
    parsed = parse_label(decode(text.getvalue().encode(), attributes(encoding="JSON")))
    assert parsed.fraud == 1 and parsed.label_time_ns - parsed.time_ns == 7 * 86_400 * 10**9


def test_a_teams_own_schema_with_unions_decimals_and_local_times() -> None:
    """Nullable ids (unions: ``{"long": 5}`` in Avro's JSON), a ``decimal`` amount, a local
    time read in the job's naive time zone, a text time and an extra field."""
    schema = {
        "type": "record",
        "name": "Payment",
        "fields": [
            {"name": "TRANSACTION_ID", "type": ["null", "long"]},
            {"name": "TX_DATETIME", "type": {"type": "long",
                                             "logicalType": "local-timestamp-millis"}},
            {"name": "CUSTOMER_ID", "type": ["null", "long"]},
            {"name": "TERMINAL_ID", "type": "long"},
            {"name": "TX_AMOUNT", "type": {"type": "bytes", "logicalType": "decimal",
                                           "precision": 12, "scale": 2}},
            {"name": "CHANNEL", "type": "string"},
        ],
    }  # fmt: skip
    record = {"TRANSACTION_ID": 17, "TX_DATETIME": datetime(2018, 8, 15, 12, 2),
              "CUSTOMER_ID": 5, "TERMINAL_ID": 33, "TX_AMOUNT": Decimal("57.16"),
              "CHANNEL": "web"}  # fmt: skip
    paris = WireContract(naive_time_zone="Europe/Paris")
    decode = SchemaDecoder(Service({"r1": schema}))
    unknown: list[list[str]] = []
    for encoding in ("BINARY", "JSON"):
        data = avro_payload(schema, record, encoding)
        if encoding == "JSON":
            assert b'{"long": 17}' in data
        tx = parse_transaction(decode(data, attributes(encoding=encoding)), contract=paris,
                               unknown=unknown.append)  # fmt: skip
        assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2)) and tx.amount == 57.16
    assert unknown == [["CHANNEL"], ["CHANNEL"]]
    record["CUSTOMER_ID"] = None
    with pytest.raises(
        ValueError, match="CUSTOMER_ID must be an integer or a string, got NoneType"
    ):
        parse_transaction(decode(avro_bytes(schema, record), attributes()))


def test_a_schema_with_uuid_and_string_ids_gives_text_ids() -> None:
    """A team whose schema keys payments by a ``uuid`` (Avro's logical type) and cards and
    terminals by strings: the ids are text ids, keyed by their text, kept for the alert."""
    from uuid import UUID

    from features.limits import text_key

    text = {"type": "string"}
    fields = {"TRANSACTION_ID": {"type": "string", "logicalType": "uuid"}, "CUSTOMER_ID": text,
              "TERMINAL_ID": text}  # fmt: skip
    schema = TX_AVSC | {
        "fields": [f | {"type": fields.get(f["name"], f["type"])} for f in TX_AVSC["fields"]]
    }
    tid = UUID("9b2f0c1e-4a8d-4c57-9e3a-2f6d1b7c8e90")
    record = TX | {"TRANSACTION_ID": tid, "CUSTOMER_ID": "card_tok_17", "TERMINAL_ID": "0033"}
    decode = SchemaDecoder(Service({"r1": schema}))
    for encoding in ("BINARY", "JSON"):
        data = avro_payload(schema, record, encoding)
        tx = parse_transaction(decode(data, attributes(encoding=encoding)))
        assert tx.text_ids == (str(tid), "card_tok_17", "0033")
        assert (tx.transaction_id, tx.customer_id) == (text_key(str(tid)), text_key("card_tok_17"))


def test_a_schema_with_snake_case_names_is_read_under_the_contracts_names() -> None:
    schema = TX_AVSC | {"fields": [f | {"name": f["name"].lower()} for f in TX_AVSC["fields"]]}
    record = {name.lower(): value for name, value in TX.items()}
    decode = SchemaDecoder(Service({"r1": schema}))
    tx = parse_transaction(decode(avro_bytes(schema, record), attributes()))
    assert (tx.transaction_id, tx.customer_id, tx.amount) == (17, 2**62 + 5, 57.16)


def test_each_revision_is_fetched_once_and_decodes_its_own_messages() -> None:
    """A record of revision 2 (a field added) is read with revision 2: with revision 1's
    schema its added field would be bytes after the record."""
    added = TX_AVSC | {"fields": [*TX_AVSC["fields"], {"name": "CURRENCY", "type": "string",
                                                        "default": ""}]}  # fmt: skip
    service = Service({"r1": TX_AVSC, "r2": added})
    decode = SchemaDecoder(service)
    for _ in range(3):
        assert decode(avro_bytes(TX_AVSC, TX), attributes("r1"))["TRANSACTION_ID"] == 17
        assert (
            decode(avro_bytes(added, TX | {"CURRENCY": "EUR"}), attributes("r2"))["CURRENCY"]
            == "EUR"
        )
    assert service.fetched == [f"{NAME}@r1", f"{NAME}@r2"]
    with pytest.raises(ValueError, match=r"not Avro BINARY of schema .*@r1 .*1 bytes after"):
        decode(avro_bytes(TX_AVSC, TX) + b"\x00", attributes("r1"))


def test_a_message_without_schema_attributes_passes_through_as_json() -> None:
    service = Service({})
    data = b'{"TRANSACTION_ID": 1}'
    assert SchemaDecoder(service)(data, {"event_time": "2018-08-15T10:02:00Z"}) is data
    assert service.fetched == []


def test_a_revision_the_service_refuses_is_asked_again_after_a_while() -> None:
    now = [0.0]
    service = Service({})
    decode = SchemaDecoder(service, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"schema {NAME}@r9 cannot be read: 404"):
            decode(b"\x02", attributes("r9"))
    assert len(service.fetched) == 1
    now[0] = RETRY_S + 1
    service.revisions["r9"] = TX_AVSC
    assert decode(avro_bytes(TX_AVSC, TX), attributes("r9"))["TERMINAL_ID"] == 33
    assert len(service.fetched) == 2


def test_a_failing_schema_service_propagates_for_the_runner_to_retry() -> None:
    calls = []

    def unavailable(name: str) -> SchemaRevision:
        calls.append(name)
        raise ConnectionError("503 unavailable")

    decode = SchemaDecoder(unavailable)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            decode(b"\x02", attributes())
    assert len(calls) == 2  # not remembered: the next message asks again


PROTO = """syntax = "proto3";
package payments;
message Transaction {
  int64 TRANSACTION_ID = 1;
  string TX_DATETIME = 2;
  int64 CUSTOMER_ID = 3;
  int64 TERMINAL_ID = 4;
  double TX_AMOUNT = 5;
  enum Channel { WEB = 0; POS = 1; }
  Channel CHANNEL = 6;
}
"""


@pytest.mark.parametrize(
    ("service", "encoding", "reason"),
    [
        (Service({"r1": "syntax = 'proto3'; message T {"}, kind="PROTOCOL_BUFFER"), "BINARY",
         r"does not compile: schema.proto:1:\d+: "),
        (Service({"r1": PROTO + "message Refund { int64 ID = 1; }"}, kind="PROTOCOL_BUFFER"),
         "JSON", r"must define one top-level message, not \['Transaction', 'Refund'\]"),
        (Service({"r1": TX_AVSC}, kind="THRIFT"), "BINARY", "is THRIFT, not AVRO or PROTOCOL"),
        (Service({"r1": {"type": "array", "items": "long"}}), "BINARY", "is not an Avro record"),
        (Service({"r1": "{not json"}), "BINARY", "is not a valid Avro schema"),
        (Service({"r1": TX_AVSC}), "THRIFT", "encoding 'THRIFT' .* is not BINARY or JSON"),
    ],
)  # fmt: skip
def test_schemas_the_job_cannot_read_are_refused_once(service, encoding, reason) -> None:
    decode = SchemaDecoder(service)
    for _ in range(3):
        with pytest.raises(ValueError, match=reason):
            decode(b"\x02", attributes(encoding=encoding))
    assert len(service.fetched) == 1


def test_a_protobuf_revision_decodes_binary_and_json_with_default_values_kept() -> None:
    """proto3 leaves a field at its default value (an id of 0) out of both forms; the decoder
    puts it back, as the binary form cannot tell it from an absent field. Enums arrive by name
    and ``int64`` as proto3's JSON strings of digits, which the contract reads."""
    service = Service({"r1": PROTO}, kind="PROTOCOL_BUFFER")
    decode = SchemaDecoder(service)
    message_class = type(decode_message_class(Service({"r1": PROTO}, kind="PROTOCOL_BUFFER")))
    message = message_class(TRANSACTION_ID=0, TX_DATETIME="2018-08-15T12:02:00+02:00",
                            CUSTOMER_ID=2**62 + 5, TERMINAL_ID=33, TX_AMOUNT=57.16)  # fmt: skip
    from google.protobuf import json_format

    binary = message.SerializeToString()
    text = json_format.MessageToJson(message).encode()
    assert b"TRANSACTION_ID" not in text  # left out at its default
    unknown: list[list[str]] = []
    for data, encoding in ((binary, "BINARY"), (text, "JSON")):
        fields = decode(data, attributes(encoding=encoding))
        assert fields["CHANNEL"] == "WEB" and fields["CUSTOMER_ID"] == str(2**62 + 5)
        tx = parse_transaction(fields, unknown=unknown.append)
        assert (tx.transaction_id, tx.customer_id, tx.amount) == (0, 2**62 + 5, 57.16)
        assert tx.time_ns == time_ns(datetime(2018, 8, 15, 10, 2))
    assert unknown == [["CHANNEL"], ["CHANNEL"]] and len(service.fetched) == 1
    with pytest.raises(ValueError, match=r"not protobuf BINARY of schema .*@r1 \(DecodeError"):
        decode(b"\xff\xff", attributes())


def decode_message_class(service: Service):
    """A message of the service's revision, compiled as the decoder compiles it."""
    from streaming.pubsub_schemas import _message_class

    return _message_class(service(f"{NAME}@r1"))()


def test_an_oversized_payload_is_refused_before_decoding() -> None:
    service = Service({"r1": TX_AVSC})
    with pytest.raises(ValueError, match="exceeds"):
        SchemaDecoder(service)(b"\x02" * 20_000, attributes())
    assert service.fetched == []


DECODERS = {
    "AVRO": SchemaDecoder(Service({"r1": TX_AVSC})),
    "PROTOCOL_BUFFER": SchemaDecoder(Service({"r1": PROTO}, kind="PROTOCOL_BUFFER")),
}


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64),
    encoding=st.sampled_from(["BINARY", "JSON"]),
    kind=st.sampled_from(sorted(DECODERS)),
)
def test_any_bytes_decode_or_raise_value_error(data: bytes, encoding: str, kind: str) -> None:
    try:
        fields = DECODERS[kind](data, attributes(encoding=encoding))
    except ValueError:
        return
    assert set(TRANSACTION_FIELDS) <= set(fields)


def test_the_decoder_pickles_without_its_cache() -> None:
    """A DoFn's copy on each worker starts empty and fetches for itself."""
    decode = SchemaDecoder(Service({"r1": TX_AVSC}))
    decode(avro_bytes(TX_AVSC, TX), attributes())
    copy = pickle.loads(pickle.dumps(decode))
    assert copy.fetch.fetched == [f"{NAME}@r1"] and copy._decoders == {}
    assert copy(avro_bytes(TX_AVSC, TX), attributes())["TRANSACTION_ID"] == 17
    assert copy.fetch.fetched == [f"{NAME}@r1"] * 2


def test_the_published_avro_schemas_carry_the_contracts_fields() -> None:
    assert tuple(f["name"] for f in TX_AVSC["fields"]) == TRANSACTION_FIELDS
    assert tuple(f["name"] for f in LABEL_AVSC["fields"]) == LABEL_FIELDS


@pytest.mark.parametrize(("kind", "fields"), [("transaction", TRANSACTION_FIELDS),
                                              ("label", LABEL_FIELDS)])  # fmt: skip
def test_the_published_protos_compile_and_carry_the_contracts_fields(kind, fields) -> None:
    """Each ``.proto`` compiles as the decoder compiles a revision, and a message of it with
    every field at its default value still decodes to every field of the contract."""
    proto = (SCHEMAS / f"{kind}.proto").read_text()
    service = Service({"r1": proto}, kind="PROTOCOL_BUFFER")
    assert tuple(f.name for f in decode_message_class(service).DESCRIPTOR.fields) == fields
    assert tuple(SchemaDecoder(service)(b"", attributes())) == fields


@pytest.mark.emulator
def test_revisions_come_from_the_schema_service(pubsub_emulator, unique_name) -> None:
    from google.cloud import pubsub_v1
    from google.pubsub_v1.types import Schema

    client = pubsub_v1.SchemaServiceClient()
    schema_id = unique_name("tx-schema")
    created = client.create_schema(
        parent=f"projects/{PROJECT}",
        schema=Schema(type_=Schema.Type.AVRO, definition=json.dumps(TX_AVSC)),
        schema_id=schema_id,
    )
    revision = fetch_from_pubsub(f"{created.name}@{created.revision_id}")
    assert revision.type == "AVRO" and json.loads(revision.definition) == TX_AVSC
    with pytest.raises(LookupError, match="404"):
        fetch_from_pubsub(f"{created.name}@deadbeef")
    decode = SchemaDecoder()
    fields = decode(avro_bytes(TX_AVSC, TX), attributes(created.revision_id, name=created.name))
    assert parse_transaction(fields).customer_id == 2**62 + 5


@pytest.mark.emulator
def test_a_local_launch_refuses_a_binary_schema_topic_without_the_option(
    pubsub_emulator, unique_name, caplog
) -> None:
    """Without ``--pubsub_schemas`` every message of a ``BINARY`` schema topic would be a dead
    letter: the launch says so at once; a ``JSON`` one is a warning, a plain topic nothing."""
    import logging

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.cloud import pubsub_v1
    from google.pubsub_v1.types import Encoding, Schema

    from streaming.job.pipeline import build
    from streaming.pubsub_schemas import topic_schema

    schemas, publisher = pubsub_v1.SchemaServiceClient(), pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    schema = schemas.create_schema(
        parent=f"projects/{PROJECT}",
        schema=Schema(type_=Schema.Type.AVRO, definition=json.dumps(TX_AVSC)),
        schema_id=unique_name("launch-schema"),
    )
    subs = {}
    for encoding in ("BINARY", "JSON", None):
        topic = publisher.topic_path(PROJECT, unique_name(f"launch-{encoding}"))
        settings = {"schema": schema.name, "encoding": Encoding[encoding]} if encoding else None
        publisher.create_topic(request={"name": topic, "schema_settings": settings})
        subs[encoding] = subscriber.subscription_path(PROJECT, unique_name(f"sub-{encoding}"))
        subscriber.create_subscription(name=subs[encoding], topic=topic)
    assert topic_schema(subs["BINARY"]) == (schema.name, "BINARY")
    assert topic_schema(subs[None]) is None

    def launch(tx: str, *flags: str) -> None:
        options = PipelineOptions(["--model_dir", "/no/models", "--transactions_subscription",
                                   tx, "--labels_subscription", subs[None], *flags])  # fmt: skip
        build(beam.Pipeline(runner="DirectRunner", options=options), options)

    with pytest.raises(ValueError, match=r"in BINARY encoding: run the job with --pubsub_sch"):
        launch(subs["BINARY"])
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no such model"):
        launch(subs["JSON"], "--pseudonymise_ids", "off")  # gets past the topics' check
    assert "in JSON encoding: run the job with --pubsub_schemas" in caplog.text
    with pytest.raises(ValueError, match="no such model"):
        launch(subs["BINARY"], "--pseudonymise_ids", "off", "--pubsub_schemas")
