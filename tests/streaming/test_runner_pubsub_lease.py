"""The local runner's prefetched Pub/Sub messages on the real emulator: held past the ack
deadline while the runner is busy, they keep their lease and are not delivered twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from streaming.local import emulators as emu
from streaming.local.runner import pubsub_read as pr

DEADLINE_S = 10  # Pub/Sub's shortest ack deadline


@pytest.fixture
def fast_pull() -> Callable[[object], pr._FastPull]:
    pr.tune_direct_pubsub_read()
    made: list[pr._FastPull] = []

    def make(client: object) -> pr._FastPull:
        made.append(pr._FastPull(client))
        return made[-1]

    yield make
    for pull in made:
        pull.close()


def test_messages_held_past_the_ack_deadline_are_not_redelivered(
    pubsub_emulator: emu.EmulatorInfo,
    unique_name: Callable[[str], str],
    fast_pull: Callable[[object], pr._FastPull],
) -> None:
    """The prefetcher holds three messages while the runner is in a bundle longer than the
    subscription's 10 s deadline; the runner then takes them once, and no copy follows."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(emu.DEFAULT_PROJECT, unique_name("lease"))
    publisher.create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(emu.DEFAULT_PROJECT, unique_name("lease-sub"))
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=DEADLINE_S)
    pull = fast_pull(subscriber)
    assert pull.pull(subscription).received_messages == []  # starts the prefetcher
    for i in range(3):
        publisher.publish(topic, str(i).encode()).result(timeout=30)
    prefetcher = pull._prefetchers[subscription]
    waited = 0.0
    while len(prefetcher._held) < 3 and waited < 30:
        time.sleep(0.1)
        waited += 0.1
    assert len(prefetcher._held) == 3, "the three messages were not pulled"
    time.sleep(DEADLINE_S + 3)  # the runner's long bundle
    taken = list(pull.pull(subscription).received_messages)
    pull.acknowledge(subscription, [r.ack_id for r in taken])
    time.sleep(2 * pr.DEFAULT_TIMEOUT_S)  # a redelivered copy would be pulled by now
    taken += pull.pull(subscription).received_messages
    assert sorted(int(r.message.data) for r in taken) == [0, 1, 2]
