"""One Pub/Sub publisher per process for the DirectRunner's ``WriteToPubSub``.

The Pub/Sub write DoFn builds a new ``PublisherClient`` (a gRPC channel and its threads) in
``setup``, which the DirectRunner calls for every bundle: :func:`share_pubsub_publishers` makes
it reuse one client per process (the client is thread-safe), which sends a batch at once (the
DoFn waits for it at the end of every bundle).
"""

from __future__ import annotations

import threading
from typing import Any

from streaming.local.runner.guard import Replaced, fits

PUBLISH_MAX_LATENCY_S = 0.001
_PS = "apache_beam.io.gcp.pubsub"
REPLACED = (
    Replaced(f"{_PS}:_PubSubWriteDoFn.setup", "b88ef4fcd82fca35"),
    # what reads the client and topic that setup leaves
    Replaced(f"{_PS}:_PubSubWriteDoFn._flush", "95dd4a1c2ca1d75d"),
)

_lock = threading.Lock()
_publishers: dict[bool, Any] = {}  # with message ordering or not -> the process's client


def share_pubsub_publishers() -> bool:
    """Patch ``WriteToPubSub``'s DoFn to share one ``PublisherClient`` per process, which sends
    a batch after :data:`PUBLISH_MAX_LATENCY_S`. Idempotent; returns whether the DoFn is
    patched (False: Beam is not what the patch was written for)."""
    from apache_beam.io.gcp import pubsub as beam_pubsub

    with _lock:
        cls = beam_pubsub._PubSubWriteDoFn
        if getattr(cls, "_fraudstream_tuned", False):
            return True
        if not fits("share_pubsub_publishers", REPLACED):
            return False

        def setup(self: Any) -> None:
            self._pub_client = shared_publisher(self.with_ordering)
            self._topic = self._pub_client.topic_path(self.project, self.short_topic_name)

        cls.setup = setup
        cls._fraudstream_tuned = True
        return True


def shared_publisher(with_ordering: bool) -> Any:
    """This process's ``PublisherClient`` with or without message ordering, made on first use."""
    from google.cloud import pubsub

    with _lock:
        client = _publishers.get(with_ordering)
        if client is None:
            options = pubsub.types.PublisherOptions(enable_message_ordering=with_ordering)
            # the DoFn waits for every publish at the end of each bundle: a batch need not
            # wait for more messages (Beam's client waits 10 ms)
            batching = pubsub.types.BatchSettings(max_latency=PUBLISH_MAX_LATENCY_S)
            client = _publishers[with_ordering] = pubsub.PublisherClient(
                batch_settings=batching, publisher_options=options
            )
        return client
