"""Producers nobody here wrote publish to the emulator and the job scores what they send: the
``gcloud pubsub topics publish`` CLI, a service written with Pub/Sub's official Node.js
client (``tests/producers/node``), and a Python service that keeps its transactions as
protobuf messages and publishes protobuf's own JSON form of them. Every message of the wire
contract's cases gets its alert (the job runs with threshold 0, so every scored transaction
alerts) or its dead letter with the field and the reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from features import presets
from features.backfill import backfill
from features.synthetic import transactions
from features.table import validate
from streaming.local import job_process as lj
from streaming.schema import parse_transaction
from training import model as models
from training.registry import Registry, model_meta

SPEC = presets.BASELINE
NODE_PRODUCER = Path(__file__).resolve().parents[1] / "producers" / "node"


def contract_cases(base_id: int, floats_stay_floats: bool = True) -> list[tuple]:
    """(message, attributes, expected dead-letter reason or None for an alert): RFC 3339 with
    Z and with an offset, a naive time, an added field, an integer amount, no event_time
    attribute, names in camelCase (a JavaScript object's), text ids (a token, a zero-padded
    code), times since the epoch (milliseconds, seconds); an id written as a float, a boolean
    id, a text id ending in a space, a number between the seconds' and the milliseconds' range.
    ``floats_stay_floats``: False for a JavaScript producer, whose JSON.stringify writes 5.0
    as 5 (a valid id)."""

    def tx(i: int, **fields) -> dict:
        i += base_id
        doc = {"TRANSACTION_ID": i, "TX_DATETIME": "2018-08-15T10:02:00Z", "CUSTOMER_ID": i,
               "TERMINAL_ID": i, "TX_AMOUNT": 42.5}  # fmt: skip
        return doc | fields

    stamp = {"event_time": "2018-08-15T10:02:00Z"}
    return [
        (tx(0), stamp, None),
        (tx(1, TX_DATETIME="2018-08-15T12:02:00+02:00"), stamp, None),
        (tx(2, TX_DATETIME="2018-08-15T10:02:00"), stamp, None),
        (tx(3, CURRENCY="EUR"), stamp, None),
        (tx(4, TX_AMOUNT=42), stamp, None),
        (tx(5), {}, None),
        (
            tx(6, CUSTOMER_ID=5.0),
            stamp,
            "CUSTOMER_ID must be an integer" if floats_stay_floats else None,
        ),
        (tx(7, TERMINAL_ID=True), stamp, "TERMINAL_ID must be an integer"),
        ({_camel(k): v for k, v in tx(8).items()}, stamp, None),  # a JavaScript object's keys
        (tx(9, TRANSACTION_ID=f"txn-{base_id + 9}-9b2f0c1e", CUSTOMER_ID=f"card_tok_{base_id}",
            TERMINAL_ID=f"{base_id + 9:012d}"), stamp, None),  # text ids: echoed in the alert
        (tx(10, TRANSACTION_ID=f"txn-{base_id + 10}", TERMINAL_ID=f"T{base_id} "), stamp,
         "TERMINAL_ID has spaces at an end"),
        (tx(11, TX_DATETIME=1534327320000), stamp, None),  # Date.now(): epoch milliseconds
        (tx(12, TX_DATETIME=1534327320), stamp, None),  # Go's Unix(): epoch seconds
        (tx(13, TX_DATETIME=15343273200), stamp, "TX_DATETIME must be a time since the epoch"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    df = validate(transactions(n=1_500, customers=40, terminals=30, days=20), SPEC)
    X = backfill(df, SPEC)[SPEC.names].to_numpy(np.float32)
    booster = models.train(X, df["TX_FRAUD"].to_numpy(), models.Params(10))
    registry = Registry(tmp_path_factory.mktemp("models"))
    meta = model_meta(SPEC, 0.5)
    registry.promote(registry.save(booster, meta))
    return Path(registry.root)


@pytest.fixture
def job(pubsub_emulator, model_dir, tmp_path):
    """The job on its own topics, every accepted transaction alerting (threshold 0)."""
    topics = lj.Topics.create("producers")
    args = lj.job_args(topics, model_dir, SPEC.name, tmp_path / "scored",
                       extra=["--threshold", "0", "--pseudonymise_ids", "off",
                              "--device", "cpu"])  # fmt: skip
    process = lj.start(args, tmp_path / "job.log")
    try:
        yield topics, process, tmp_path / "job.log"
    finally:
        lj.stop(process)


def _camel(name: str) -> str:
    first, *rest = name.lower().split("_")
    return first + "".join(part.title() for part in rest)


def _tid(message: dict) -> int | str:
    """A case's transaction id as its alert carries it, whichever spelling its message uses."""
    tid = message.get("TRANSACTION_ID", message.get("transactionId"))
    return int(tid) if isinstance(tid, int) or tid.isdigit() else tid


def _wait_for(job, cases) -> tuple[dict[int, dict], dict[int, dict]]:
    """Alerts and dead letters by transaction id, once every case has one."""
    topics, process, log = job
    alerts, dead, deadline = {}, {}, time.monotonic() + 180
    while len(alerts) + len(dead) < len(cases):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{len(alerts)} alerts, {len(dead)} dead letters"
        for m in lj.drain(topics.subscriptions["alerts"], wait_s=2):
            alert = json.loads(m.data)
            alerts[alert["transaction_id"]] = alert
        for m in lj.drain(topics.subscriptions["dlq"], wait_s=2):
            letter = json.loads(m.data)
            dead[_tid(json.loads(letter["payload"]))] = letter
    return alerts, dead


def _assert_per_message(cases, alerts: dict, dead: dict) -> None:
    for message, _, reason in cases:
        tid = _tid(message)
        if reason is None:
            assert tid in alerts and tid not in dead, (message, dead.get(tid))
            assert alerts[tid]["event_time"] == "2018-08-15T10:02:00", message  # in UTC
            assert alerts[tid]["model_version"] == "v0001"
            for name in ("CUSTOMER_ID", "TERMINAL_ID"):  # text ids as sent, numbers as numbers
                sent = message.get(name, message.get(_camel(name)))
                assert alerts[tid][name.lower()] == (sent if isinstance(sent, str) else int(sent))
        else:
            assert tid in dead and tid not in alerts, message
            assert reason in dead[tid]["error"] and dead[tid]["stage"] == "parse_transactions"


def _gcloud_env(tmp_path: Path) -> dict[str, str]:
    """The environment in which ``gcloud pubsub`` talks to the emulator."""
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud not found on PATH (the Google Cloud SDK)")
    token = tmp_path / "token"
    token.write_text("emulator")  # the emulator takes any token; gcloud wants one
    return os.environ | {
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{os.environ['PUBSUB_EMULATOR_HOST']}/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": lj.PROJECT,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }


@pytest.mark.slow
def test_the_gcloud_cli_as_producer(job, tmp_path: Path) -> None:
    env = _gcloud_env(tmp_path)
    topics = job[0]
    cases = contract_cases(9_000_000)
    for message, attributes, _ in cases:
        command = ["gcloud", "pubsub", "topics", "publish", topics.topic_id("tx"),
                   f"--message={json.dumps(message)}"]  # fmt: skip
        if attributes:
            command.append("--attribute=" + ",".join(f"{k}={v}" for k, v in attributes.items()))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "messageIds" in done.stdout
    alerts, dead = _wait_for(job, cases)
    _assert_per_message(cases, alerts, dead)


@pytest.mark.slow
def test_a_node_service_with_the_official_client_as_producer(job, node: str) -> None:
    topics = job[0]
    cases = contract_cases(9_100_000, floats_stay_floats=False)
    lines = "".join(json.dumps({"data": m, "attributes": a}) + "\n" for m, a, _ in cases)
    done = subprocess.run([node, "publish.mjs", lj.PROJECT, topics.topic_id("tx")],
                          input=lines, cwd=NODE_PRODUCER, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == len(cases)
    alerts, dead = _wait_for(job, cases)
    _assert_per_message(cases, alerts, dead)


def _protobuf_transaction_class() -> type:
    """A service's ``payments.Transaction`` protobuf message, built as protoc would from::

    message Transaction { int64 TRANSACTION_ID = 1; string TX_DATETIME = 2;
      int64 CUSTOMER_ID = 3; int64 TERMINAL_ID = 4; double TX_AMOUNT = 5;
      string CURRENCY = 6; }
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="payments/transaction.proto", package="payments", syntax="proto3"
    )
    message = proto.message_type.add(name="Transaction")
    for number, (name, kind) in enumerate(
        [("TRANSACTION_ID", field.TYPE_INT64), ("TX_DATETIME", field.TYPE_STRING),
         ("CUSTOMER_ID", field.TYPE_INT64), ("TERMINAL_ID", field.TYPE_INT64),
         ("TX_AMOUNT", field.TYPE_DOUBLE), ("CURRENCY", field.TYPE_STRING)],
        start=1,
    ):  # fmt: skip
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("payments.Transaction"))


@pytest.mark.slow
def test_a_service_publishing_protobufs_json_form_as_producer(job) -> None:
    """proto3's JSON mapping writes every int64 as a string ("17"), and an id past 2**53 is
    exact only so; the job reads them as the integers they are. A negative id (int64 allows
    it) is a dead letter with the reason."""
    from google.cloud import pubsub_v1
    from google.protobuf import json_format

    transaction = _protobuf_transaction_class()
    base, big = 9_200_000, 2**62 + 12_345
    ids = [(base, base, base), (base + 1, big, big + 1), (base + 2, base, base), (base + 3, -5, 1)]
    extra = [{}, {}, {"CURRENCY": "EUR", "TX_DATETIME": "2018-08-15T12:02:00+02:00"}, {}]
    reasons = [None, None, None, "CUSTOMER_ID is a signed number ('-5'): ids are never negative"]
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(lj.PROJECT, job[0].topic_id("tx"))
    published = []
    for (tid, customer, terminal), fields, reason in zip(ids, extra, reasons, strict=True):
        doc = {"TRANSACTION_ID": tid, "CUSTOMER_ID": customer, "TERMINAL_ID": terminal,
               "TX_DATETIME": "2018-08-15T10:02:00Z", "TX_AMOUNT": 42.5} | fields  # fmt: skip
        payload = json_format.MessageToJson(transaction(**doc), preserving_proto_field_name=True)
        assert f'"TRANSACTION_ID": "{tid}"' in payload  # protobuf's JSON: a string
        publisher.publish(topic, payload.encode()).result(timeout=60)
        published.append((doc, {}, reason))
    alerts, dead = _wait_for(job, published)
    _assert_per_message(published, alerts, dead)
    assert alerts[base + 1]["customer_id"] == big and alerts[base + 1]["terminal_id"] == big + 1


def _schema_topic(env: dict, kind: str, avsc: Path, encoding: str, tag: str) -> tuple[str, str]:
    """A schema, a topic with it in ``encoding`` and a subscription, made with ``gcloud``
    as a team would; returns (schema name, subscription path)."""
    schema, topic, sub = f"{kind}-schema-{tag}", f"{kind}-avro-{tag}", f"{kind}-avro-{tag}-sub"
    for command in (
        ["schemas", "create", schema, "--type=avro", f"--definition-file={avsc}"],
        ["topics", "create", topic, f"--schema={schema}", f"--message-encoding={encoding}"],
        ["subscriptions", "create", sub, f"--topic={topic}"],
    ):
        done = subprocess.run(["gcloud", "pubsub", *command], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    return f"projects/{lj.PROJECT}/schemas/{schema}", f"projects/{lj.PROJECT}/subscriptions/{sub}"


@pytest.mark.slow
def test_a_node_service_publishing_avro_to_schema_topics(
    pubsub_emulator, model_dir, tmp_path: Path, node: str
) -> None:
    """Topics with the published Avro schemas, made with ``gcloud`` (transactions in BINARY,
    labels in JSON encoding); a Node.js service encodes records with avsc as Pub/Sub's own
    sample does. The job (``--pubsub_schemas``) scores every valid transaction, of the first
    revision and of a second one that adds a field; the contract's refusals (a negative id,
    a label before its transaction) are dead letters naming the schema revision."""
    import uuid

    from streaming.schema import SCHEMAS

    env = _gcloud_env(tmp_path)
    tag = uuid.uuid4().hex[:8]
    tx_schema, tx_sub = _schema_topic(env, "tx", SCHEMAS / "transaction.avsc", "binary", tag)
    _, label_sub = _schema_topic(env, "labels", SCHEMAS / "label.avsc", "json", tag)
    topics = lj.Topics.create("schemas")
    args = lj.job_args(topics, model_dir, SPEC.name, tmp_path / "scored",
                       extra=["--transactions_subscription", tx_sub, "--labels_subscription",
                              label_sub, "--pubsub_schemas", "--threshold", "0",
                              "--pseudonymise_ids", "off", "--device", "cpu"])  # fmt: skip
    process = lj.start(args, tmp_path / "job.log")
    micros = 1_534_327_320_000_000  # 2018-08-15T10:02:00Z

    def publish(topic: str, records: list[dict]) -> None:
        lines = "".join(json.dumps({"record": r}) + "\n" for r in records)
        done = subprocess.run([node, "publish_avro.mjs", lj.PROJECT, topic], input=lines,
                              cwd=NODE_PRODUCER, capture_output=True, text=True, timeout=120,
                              env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)) == len(records)

    def tx(tid: int, **fields) -> dict:
        return {"TRANSACTION_ID": tid, "TX_DATETIME": micros, "CUSTOMER_ID": tid,
                "TERMINAL_ID": tid, "TX_AMOUNT": 42.5} | fields  # fmt: skip

    base = 9_300_000
    try:
        publish(f"tx-avro-{tag}", [tx(base), tx(base + 1, CUSTOMER_ID=2**52 + 1),
                                   tx(base + 2, CUSTOMER_ID=-5)])  # fmt: skip
        added = json.loads((SCHEMAS / "transaction.avsc").read_text())
        added["fields"].append({"name": "CURRENCY", "type": "string", "default": ""})
        (tmp_path / "tx2.avsc").write_text(json.dumps(added))
        commit = ["gcloud", "pubsub", "schemas", "commit", tx_schema, "--type=avro",
                  f"--definition-file={tmp_path / 'tx2.avsc'}"]  # fmt: skip
        committed = subprocess.run(commit, env=env, capture_output=True, text=True, timeout=120)
        assert committed.returncode == 0, committed.stderr
        publish(f"tx-avro-{tag}", [tx(base + 3, CURRENCY="EUR")])
        label = {"TRANSACTION_ID": base, "CUSTOMER_ID": base, "TERMINAL_ID": base,
                 "TX_DATETIME": micros, "LABEL_DATETIME": micros - 1, "TX_FRAUD": True}  # fmt: skip
        publish(f"labels-avro-{tag}", [label | {"LABEL_DATETIME": micros + 1}, label])
        alerts, letters, deadline = {}, [], time.monotonic() + 180
        while len(alerts) + len(letters) < 5:  # one outcome per message
            assert process.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{alerts}, {letters}"
            for m in lj.drain(topics.subscriptions["alerts"], wait_s=2):
                alert = json.loads(m.data)
                alerts[alert["transaction_id"]] = alert
            letters += [json.loads(m.data) for m in lj.drain(topics.subscriptions["dlq"], 2)]
    finally:
        lj.stop(process)
    assert sorted(alerts) == [base, base + 1, base + 3]
    assert alerts[base + 1]["customer_id"] == 2**52 + 1
    assert {a["event_time"] for a in alerts.values()} == {"2018-08-15T10:02:00"}
    by_stage = {letter["stage"]: letter for letter in letters}
    assert len(letters) == 2 and set(by_stage) == {"parse_transactions", "parse_labels"}
    refused_tx, refused_label = by_stage["parse_transactions"], by_stage["parse_labels"]
    assert refused_tx["error"] == "CUSTOMER_ID must be in [0, 2**63), got -5"
    assert refused_tx["payload_encoding"] == "base64"
    assert refused_tx["attributes"]["googclient_schemaname"] == tx_schema
    assert refused_label["error"] == "LABEL_DATETIME is before TX_DATETIME"
    assert refused_label["attributes"]["googclient_schemaencoding"] == "JSON"
    assert json.loads(refused_label["payload"])["TX_FRAUD"] is True


@pytest.mark.slow
def test_a_node_service_encoding_protobuf_for_a_schema_topic(tmp_path: Path, node: str) -> None:
    """Messages a Node.js service encodes with protobufjs for a topic with a protobuf schema
    (Pub/Sub's sample for such topics), in both encodings, read by the job's decoder with that
    ``.proto`` as the schema revision: an int64 past 2**53 exact, fields never set (proto3's
    0: left out of both forms) read as 0, a negative id refused by the contract. The Pub/Sub
    emulator does not implement protobuf schemas, so the schema service is a function here and
    nothing is published."""
    from streaming.pubsub_schemas import SchemaDecoder, SchemaRevision
    from tests.streaming.test_pubsub_schemas import PROTO as TEAM_PROTO  # a team's own .proto

    (tmp_path / "transaction.proto").write_text(TEAM_PROTO)
    big = 2**62 + 99
    objects = [
        {"TRANSACTION_ID": 9_400_000, "TX_DATETIME": "2018-08-15T10:02:00Z", "CUSTOMER_ID":
         str(big), "TERMINAL_ID": 7, "TX_AMOUNT": 42.5, "CHANNEL": "POS"},
        {"TX_DATETIME": "2018-08-15T12:02:00+02:00", "CUSTOMER_ID": 5, "TERMINAL_ID": 7},
        {"TRANSACTION_ID": 9_400_002, "TX_DATETIME": "2018-08-15T10:02:00Z", "CUSTOMER_ID": -5,
         "TERMINAL_ID": 7, "TX_AMOUNT": 1.5},
    ]  # fmt: skip
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    decode = SchemaDecoder(lambda name: SchemaRevision(name, "PROTOCOL_BUFFER", TEAM_PROTO))
    for encoding in ("BINARY", "JSON"):
        done = subprocess.run([node, "encode_protobuf.mjs", str(tmp_path / "transaction.proto"),
                               "payments.Transaction", encoding], input=lines, cwd=NODE_PRODUCER,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        payloads = [base64.b64decode(line) for line in done.stdout.split()]
        assert len(payloads) == len(objects)
        assert b"TRANSACTION_ID" not in payloads[1]  # never set: not on the wire
        attributes = {"googclient_schemaname": "projects/acme/schemas/transaction",
                      "googclient_schemarevisionid": "r1",
                      "googclient_schemaencoding": encoding}  # fmt: skip
        first, zero = (parse_transaction(decode(p, attributes)) for p in payloads[:2])
        assert (first.customer_id, first.amount) == (big, 42.5)
        assert (zero.transaction_id, zero.amount) == (0, 0.0)
        assert zero.time_ns == first.time_ns  # 12:02+02:00 is 10:02Z
        with pytest.raises(ValueError, match="CUSTOMER_ID is a signed number"):
            parse_transaction(decode(payloads[2], attributes))


@pytest.mark.slow
def test_avro_dead_letters_are_redriven_to_a_schema_topic(
    pubsub_emulator, model_dir, tmp_path
) -> None:
    """A producer starts sending Avro to the job's plain topic: its messages become dead
    letters. The team makes a topic with the Avro schema and runs the job on it with
    ``--pubsub_schemas``; ``fraudstream redrive`` republishes the dead letters there, Pub/Sub
    stamps the schema attributes on them and every transaction is scored. (A local launch
    without the option on a ``BINARY`` schema topic is refused at once: its dead letters come
    from a producer, or from a remote job, that did not know.)"""
    import io
    import uuid

    import fastavro
    from google.cloud import pubsub_v1

    from streaming.cli import main
    from streaming.schema import SCHEMAS

    env, tag = _gcloud_env(tmp_path), uuid.uuid4().hex[:8]
    _, tx_sub = _schema_topic(env, "tx", SCHEMAS / "transaction.avsc", "binary", tag)
    tx_topic = f"projects/{lj.PROJECT}/topics/tx-avro-{tag}"
    topics = lj.Topics.create("redrive")
    watch = f"{topics.subscriptions['dlq']}-watch"  # read here; redrive reads the job's own
    pubsub_v1.SubscriberClient().create_subscription(name=watch, topic=topics.topics["dlq"])
    schema = fastavro.parse_schema(json.loads((SCHEMAS / "transaction.avsc").read_text()))
    publisher = pubsub_v1.PublisherClient()
    ids = [9_500_000, 9_500_001]
    for tid in ids:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, {"TRANSACTION_ID": tid, "CUSTOMER_ID": tid,
                                                 "TERMINAL_ID": tid, "TX_AMOUNT": 42.5,
                                                 "TX_DATETIME": 1_534_327_320_000_000})  # fmt: skip
        publisher.publish(topics.topics["tx"], out.getvalue()).result(timeout=60)

    def run(sub: str, *flags: str):
        extra = ["--transactions_subscription", sub, "--threshold", "0",
                 "--pseudonymise_ids", "off", "--device", "cpu", *flags]  # fmt: skip
        args = lj.job_args(topics, model_dir, SPEC.name, tmp_path / "scored", extra=extra)
        return lj.start(args, tmp_path / f"job{len(flags)}.log")

    def wait(subscription: str, n: int, process) -> list:
        got, deadline = [], time.monotonic() + 180
        while len(got) < n:
            assert process.poll() is None and time.monotonic() < deadline, got
            got += lj.drain(subscription, wait_s=2)
        return got

    without = run(topics.subscriptions["tx"])
    try:
        letters = [json.loads(m.data) for m in wait(watch, 2, without)]
    finally:
        lj.stop(without)
    assert {letter["stage"] for letter in letters} == {"parse_transactions"}
    assert all("not UTF-8" in x["error"] or "not JSON" in x["error"] for x in letters), letters
    with_option = run(tx_sub, "--pubsub_schemas")
    try:
        argv = ["redrive", "--subscription", topics.subscriptions["dlq"],
                "--transactions_topic", tx_topic]  # fmt: skip
        assert main(argv) == 0
        alerts = wait(topics.subscriptions["alerts"], 2, with_option)
    finally:
        lj.stop(with_option)
    assert sorted(json.loads(m.data)["transaction_id"] for m in alerts) == ids
