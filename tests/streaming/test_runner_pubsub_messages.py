"""The local Pub/Sub read's messages as Beam's read evaluator takes them: every field read out of
the pulled protobuf, what Beam builds from them unchanged."""

from __future__ import annotations

from apache_beam.io.gcp.pubsub import PubsubMessage as BeamMessage
from google.cloud.pubsub_v1.types import PubsubMessage, ReceivedMessage
from google.protobuf import timestamp_pb2

from streaming.local.runner.pubsub_read import _Received


def test_a_pulled_message_gives_beam_the_same_message():
    published = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5_000)
    pulled = ReceivedMessage(
        ack_id="ack-1",
        message=PubsubMessage(
            data=b'{"TRANSACTION_ID": 1}',
            attributes={"event_time": "2023-11-14T22:13:20Z", "id": "1"},
            message_id="m-1",
            publish_time=published,
            ordering_key="k",
        ),
    )
    received = _Received.of(ReceivedMessage.pb(pulled))
    assert received.ack_id == "ack-1"
    ours, theirs = (
        BeamMessage._from_message(received.message),
        BeamMessage._from_message(pulled.message),
    )
    assert ours == theirs
    assert (ours.message_id, ours.publish_time, ours.ordering_key) == (
        theirs.message_id,
        theirs.publish_time,
        theirs.ordering_key,
    )
    assert ours.publish_time.nanosecond == 5_000


def test_a_message_without_publish_time_or_attributes():
    pulled = ReceivedMessage(ack_id="a", message=PubsubMessage(data=b"x"))
    received = _Received.of(ReceivedMessage.pb(pulled))
    assert received.message.publish_time is None
    assert BeamMessage._from_message(received.message) == BeamMessage(b"x", {})
