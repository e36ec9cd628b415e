"""The local runner's shared Pub/Sub publishers."""

from __future__ import annotations

import pytest
from apache_beam.io.gcp import pubsub as beam_pubsub

from streaming.local.runner import publishers


@pytest.fixture
def no_publishers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty client cache for the test, clients that need no credentials."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # never called
    monkeypatch.setattr(publishers, "_publishers", {})


def _write_dofn(with_ordering: bool) -> beam_pubsub._PubSubWriteDoFn:
    dofn = beam_pubsub._PubSubWriteDoFn.__new__(beam_pubsub._PubSubWriteDoFn)
    dofn.project, dofn.short_topic_name, dofn.with_ordering = "p", "alerts", with_ordering
    return dofn


def test_every_write_dofn_setup_shares_one_client_per_ordering(no_publishers):
    assert publishers.share_pubsub_publishers()
    dofns = [_write_dofn(False), _write_dofn(False), _write_dofn(True)]
    for dofn in dofns:
        dofn.setup()
    plain, again, ordered = (d._pub_client for d in dofns)
    assert plain is again and ordered is not plain
    assert dofns[0]._topic == "projects/p/topics/alerts"
    assert ordered.publisher_options.enable_message_ordering
    assert not plain.publisher_options.enable_message_ordering
    assert plain.batch_settings.max_latency == publishers.PUBLISH_MAX_LATENCY_S
