"""The local runner's Pub/Sub write: Beam's messages serialized with the protobuf class, a
flush sent in one request through one publisher per process."""

from __future__ import annotations

import pytest
from apache_beam.io.gcp import pubsub as beam_pubsub
from google.pubsub_v1.types import PubsubMessage

from streaming.local import job_process as lj
from streaming.local.runner import publishers

MESSAGES = [
    beam_pubsub.PubsubMessage(b'{"transaction_id": 1}', {"dedupe": "1"}),
    beam_pubsub.PubsubMessage(b"", {"only": "attributes", "\u00e9": "\u00fc" * 10}),
    beam_pubsub.PubsubMessage(b"\x00\xff binary", {}, ordering_key="card-7"),
    beam_pubsub.PubsubMessage(b"x" * 70_000, None),
]


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch applied (it stays: every test wants it), an empty client cache."""
    assert publishers.tune_direct_pubsub_write()
    monkeypatch.setattr(publishers, "_publisher", [])


def _beam(message: beam_pubsub.PubsubMessage) -> PubsubMessage:
    """What Beam's own serialization gives, parsed."""
    return PubsubMessage.deserialize(message._to_proto_str(for_publish=True))


def _write_dofn(topic: str, with_attributes: bool = True) -> beam_pubsub._PubSubWriteDoFn:
    dofn = beam_pubsub._PubSubWriteDoFn.__new__(beam_pubsub._PubSubWriteDoFn)
    _, project, _, dofn.short_topic_name = topic.split("/")
    dofn.project, dofn.with_ordering, dofn.with_attributes = project, False, with_attributes
    return dofn


@pytest.mark.parametrize("message", MESSAGES, ids=["json", "attributes-only", "ordered", "large"])
def test_a_message_is_serialized_as_beam_serializes_it(tuned, message):
    ours = beam_pubsub.WriteToPubSub.message_to_proto_str(message)
    assert PubsubMessage.deserialize(ours) == _beam(message)
    payload_only = beam_pubsub.WriteToPubSub.bytes_to_proto_str(message.data)
    assert PubsubMessage.deserialize(payload_only) == _beam(
        beam_pubsub.PubsubMessage(message.data, {})
    )


@pytest.mark.parametrize(
    "message",
    [
        beam_pubsub.PubsubMessage(b"x", {f"k{i}": "v" for i in range(101)}),
        beam_pubsub.PubsubMessage(b"x", {"k" * 257: "v"}),
        beam_pubsub.PubsubMessage(b"x", {"k": "v" * 1025}),
        beam_pubsub.PubsubMessage(b"x", {}, ordering_key="o" * 1025),
        beam_pubsub.PubsubMessage(b"x" * 10_000_001, {}),
    ],
    ids=["attributes", "key", "value", "ordering-key", "data"],
)
def test_past_pubsubs_limits_the_error_is_beams(tuned, message):
    with pytest.raises(ValueError) as beams:
        message._to_proto_str(for_publish=True)
    with pytest.raises(ValueError, match=str(beams.value)):
        beam_pubsub.WriteToPubSub.message_to_proto_str(message)


def test_what_beam_serializes_differently_stays_beams(tuned):
    """A str payload (proto-plus reads it as base64) and an element that is no message."""
    assert beam_pubsub.WriteToPubSub.bytes_to_proto_str("aGk=") == (
        beam_pubsub.PubsubMessage("aGk=", {})._to_proto_str(for_publish=True)
    )
    with pytest.raises(TypeError, match="expected: PubsubMessage"):
        beam_pubsub.WriteToPubSub.message_to_proto_str(b"not a message")


def test_requests_keep_the_order_within_pubsubs_limits():
    small = [publishers.serialized(str(i).encode(), {"a": "b"}, "") for i in range(2_500)]
    sent = list(publishers.requests("projects/p/topics/t", small, with_attributes=True))
    assert [len(r.messages) for r in sent] == [1_000, 1_000, 500]
    assert [m.data for r in sent for m in r.messages] == [str(i).encode() for i in range(2_500)]
    assert all(r.topic == "projects/p/topics/t" for r in sent)

    large = [publishers.serialized(bytes([i]) * 4_000_000, {}, "") for i in range(5)]
    sent = list(publishers.requests("projects/p/topics/t", large, with_attributes=True))
    assert [len(r.messages) for r in sent] == [2, 2, 1]
    assert all(r.ByteSize() <= 10_000_000 for r in sent)

    [plain] = publishers.requests("projects/p/topics/t", small[:3], with_attributes=False)
    assert [dict(m.attributes) for m in plain.messages] == [{}, {}, {}]


def test_every_write_dofn_shares_one_client(tuned, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # never called
    dofns = [_write_dofn("projects/p/topics/alerts") for _ in range(3)]
    for dofn in dofns:
        dofn.setup()
    assert len({id(d._pub_client) for d in dofns}) == 1
    assert dofns[0]._topic == "projects/p/topics/alerts"


@pytest.mark.parametrize("with_attributes", [True, False])
def test_a_bundle_is_published_whole_through_the_emulator(
    tuned, pubsub_emulator, with_attributes, monkeypatch: pytest.MonkeyPatch
):
    """More messages than Beam's write buffers (it flushes every 100): a request per flush,
    read back by a plain subscriber."""
    from google.pubsub_v1.services.publisher import PublisherClient as GapicPublisher

    calls, gapic_publish = [], GapicPublisher.publish
    monkeypatch.setattr(
        GapicPublisher, "publish", lambda *a, **kw: calls.append(1) or gapic_publish(*a, **kw)
    )
    topics = lj.Topics.create("publishers")
    dofn = _write_dofn(topics.topics["alerts"], with_attributes)
    sent = [beam_pubsub.PubsubMessage(f"{i}".encode(), {"dedupe": str(i)}) for i in range(250)]
    dofn.setup()
    dofn.start_bundle()
    for message in sent:
        dofn.process(beam_pubsub.WriteToPubSub.message_to_proto_str(message))
    dofn.finish_bundle()
    assert len(calls) == 3
    got = lj.drain(topics.subscriptions["alerts"], wait_s=2)
    expected = {(m.data, tuple(m.attributes.items()) if with_attributes else ()) for m in sent}
    assert {(m.data, tuple(m.attributes.items())) for m in got} == expected
    assert len(got) == len(sent)
