"""``fraudstream redrive`` on the Pub/Sub emulator: dead letters back to their input topics,
selected by stage and error, payloads and attributes as sent, the rest left in the
dead-letter subscription."""

from __future__ import annotations

import json

import pytest

from streaming.cli import main
from streaming.job.parse import dead_letter
from streaming.local import job_process as lj

TX = {"TRANSACTION_ID": 1, "TX_DATETIME": "2018-08-15T10:02:00Z", "CUSTOMER_ID": 2,
      "TERMINAL_ID": 3}  # fmt: skip
SCHEMA = {"googclient_schemaname": "projects/p/schemas/tx", "googclient_schemarevisionid": "r1",
          "googclient_schemaencoding": "BINARY", "event_time": "2018-08-15T10:02:00Z"}  # fmt: skip


def _publish(topic: str, messages: list[bytes]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for future in [publisher.publish(topic, m) for m in messages]:
        future.result(timeout=60)


@pytest.mark.emulator
def test_dead_letters_go_back_to_their_topics_and_the_rest_stay(pubsub_emulator, capsys):
    topics = lj.Topics.create("redrive")
    missing_amount = json.dumps(TX).encode()
    avro_bytes = b"\x02\x04\xff\x00"  # not UTF-8: kept as base64
    label = json.dumps(TX | {"LABEL_DATETIME": "2018-08-01T00:00:00Z", "TX_FRAUD": 1}).encode()
    letters = [
        dead_letter(missing_amount, "missing field(s) ['TX_AMOUNT']", "parse_transactions"),
        dead_letter(avro_bytes, "payload is not UTF-8", "parse_transactions", attributes=SCHEMA),
        dead_letter(label, "LABEL_DATETIME is before TX_DATETIME", "parse_labels"),
        dead_letter(json.dumps(TX), "DUPLICATE", "features"),
    ]
    assert letters[1]["payload_encoding"] == "base64"
    _publish(topics.topics["dlq"], [json.dumps(d).encode() for d in letters] + [b"not a letter"])
    base = ["redrive", "--subscription", topics.subscriptions["dlq"], "--transactions_topic",
            topics.topics["tx"], "--labels_topic", topics.topics["labels"]]  # fmt: skip

    assert main([*base, "--dry_run"]) == 0
    assert "0 redriven, 5 handed back" in capsys.readouterr().out
    assert lj.drain(topics.subscriptions["tx"], wait_s=1) == []

    assert main([*base, "--stage", "parse_labels"]) == 0
    assert "1 redriven, 4 handed back" in capsys.readouterr().out
    (relabelled,) = lj.drain(topics.subscriptions["labels"], wait_s=5)
    assert relabelled.data == label and dict(relabelled.attributes) == {}

    assert main(base) == 0
    out = capsys.readouterr().out
    assert "2 redriven, 2 handed back" in out and "not selected" in out
    resent = sorted(lj.drain(topics.subscriptions["tx"], wait_s=5), key=lambda m: m.data)
    assert [m.data for m in resent] == sorted([missing_amount, avro_bytes])
    by_data = {m.data: dict(m.attributes) for m in resent}
    assert by_data[avro_bytes] == {"event_time": "2018-08-15T10:02:00Z"}  # goog... left out
    left = sorted(m.data for m in lj.drain(topics.subscriptions["dlq"], wait_s=5))
    assert left == sorted([json.dumps(letters[3]).encode(), b"not a letter"])


def test_a_redrive_needs_a_topic_and_knows_the_stages(capsys) -> None:
    sub = ["redrive", "--subscription", "projects/p/subscriptions/dlq"]
    assert main(sub) == 2
    assert "give --transactions_topic, --labels_topic or both" in capsys.readouterr().err
    assert main([*sub, "--labels_topic", "projects/p/topics/l", "--stage", "score"]) == 2
    assert "invalid choice: 'score'" in capsys.readouterr().err
