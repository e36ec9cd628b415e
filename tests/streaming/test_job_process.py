"""``streaming.local.job_process``: the helpers that run a job on its own topics."""

from __future__ import annotations

from streaming.local import job_process as lj
from streaming.local.replay import Publisher


def test_drain_takes_every_message_once_over_several_pulls(pubsub_emulator):
    topics = lj.Topics.create("drain")
    publish = Publisher(lj.PROJECT)
    n = 2_500  # a pull returns at most 1,000
    for i in range(n):
        publish(topics.topic_id("alerts"), str(i).encode(), {})
    publish.flush()
    got = lj.drain(topics.subscriptions["alerts"], wait_s=10)
    assert sorted(int(m.data) for m in got) == list(range(n))
    assert lj.drain(topics.subscriptions["alerts"], wait_s=1) == []  # acknowledged
