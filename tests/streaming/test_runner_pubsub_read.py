"""The local runner's prefetching Pub/Sub read, on a fake subscriber the test steps through.

No test reads the clock: the fake's pulls return only what the test queues, the runner's timed
waits are recorded and end at once, the prefetchers' lease clock is the test's, and the test
waits for the events it needs (a pull started, a thread ended) rather than for a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1.types import PubsubMessage, PullResponse, ReceivedMessage

from streaming.local.runner import pubsub_read as pr

SUBSCRIPTION = "projects/p/subscriptions/s"
IDLE_WAIT_S = 0.05
EVENT_S = 10.0  # how long a test waits for an event before it fails


class _FakeSubscriber:
    """Serves the batches (or errors) a test queues; a pull waits until there is one, as a
    pull of an idle subscription waits out its timeout. ``close`` ends a pending pull."""

    def __init__(self) -> None:
        self.batches: queue.Queue = queue.Queue()
        self.pulls = 0  # pulls started
        self.acked: list[str] = []
        self.leased: list[tuple[list[str], int]] = []  # (ack ids, deadline s) per extension
        self.lease_sent = threading.Event()
        self.ack_threads: set[str] = set()
        self.acks_answer = threading.Event()  # cleared: an acknowledgement RPC waits for it
        self.acks_answer.set()
        self.closed = False
        self._pulled = threading.Condition()

    def pull(self, subscription: str, max_messages: int, timeout: float) -> PullResponse:
        with self._pulled:
            self.pulls += 1
            self._pulled.notify_all()
        item = self.batches.get()
        if isinstance(item, Exception):
            raise item
        return item

    def wait_for_pulls(self, n: int) -> None:
        with self._pulled:
            assert self._pulled.wait_for(lambda: self.pulls >= n, EVENT_S), self.pulls

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        assert self.acks_answer.wait(EVENT_S)
        self.ack_threads.add(threading.current_thread().name)
        self.acked += ack_ids

    def modify_ack_deadline(
        self, subscription: str, ack_ids: list[str], ack_deadline_seconds: int
    ) -> None:
        self.leased.append((list(ack_ids), ack_deadline_seconds))
        self.lease_sent.set()

    def close(self) -> None:
        self.closed = True
        self.batches.put(exceptions.DeadlineExceeded("closed"))


class _Waits:
    """The waits on the prefetchers' condition: the runner's read's (timed: its idle wait) is
    recorded and ends at once, as if the time had passed; a prefetcher's (for room to pull
    more, or for its lease to be due) sets ``for_room`` and waits to be notified: the test's
    clock stands still until the test moves it."""

    def __init__(self) -> None:
        self.timed: list[float] = []
        self.for_room = threading.Event()

    def __call__(self, timeout: float | None) -> bool:
        if not threading.current_thread().name.startswith("pubsub-prefetch"):
            self.timed.append(timeout)
            return False
        self.for_room.set()
        return pr._ARRIVED.wait()


class _Clock:
    """The prefetchers' clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = _Clock()  # the fixture's prefetchers' clock


@pytest.fixture
def fake() -> Iterator[tuple[_FakeSubscriber, pr._FastPull, _Waits]]:
    pr.tune_direct_pubsub_read(max_messages=5, timeout_s=0.5, idle_wait_s=IDLE_WAIT_S)
    client, waits = _FakeSubscriber(), _Waits()
    pull = pr._FastPull(client, wait=waits, clock=CLOCK)
    CLOCK.now = 0.0
    yield client, pull, waits
    pull.close()
    pr.tune_direct_pubsub_read()  # the defaults again


def _batch(*ids: int) -> PullResponse:
    return PullResponse(
        received_messages=[
            ReceivedMessage(ack_id=f"a{i}", message=PubsubMessage(data=str(i).encode()))
            for i in ids
        ]
    )


def _ids(response: PullResponse) -> list[int]:
    return [int(m.message.data) for m in response.received_messages]


def _prefetch_thread(pull: pr._FastPull) -> threading.Thread:
    return pull._prefetchers[SUBSCRIPTION]._thread


def test_a_read_of_an_idle_subscription_waits_the_idle_wait_not_for_the_pull(fake):
    client, pull, waits = fake
    assert _ids(pull.pull(SUBSCRIPTION)) == []
    client.wait_for_pulls(1)
    assert waits.timed == [IDLE_WAIT_S]  # and the background pull has not returned
    assert client.batches.empty() and _prefetch_thread(pull).is_alive()


def test_a_busy_runners_read_does_not_wait(fake):
    _, pull, waits = fake
    work: queue.Queue = queue.Queue()
    work.put("the runner's monitor task")
    work.put("a bundle to process")
    pr._reading.work = work
    try:
        assert _ids(pull.pull(SUBSCRIPTION)) == []
    finally:
        pr._reading.work = None
    assert waits.timed == []


def test_batches_pulled_meanwhile_are_handed_over_together_in_order(fake):
    client, pull, _ = fake
    assert _ids(pull.pull(SUBSCRIPTION)) == []  # starts the prefetcher
    client.batches.put(_batch(1, 2))
    client.batches.put(_batch(3))
    client.wait_for_pulls(3)  # the third pull starts once the first two batches are held
    assert _ids(pull.pull(SUBSCRIPTION)) == [1, 2, 3]
    client.batches.put(_batch(4))
    client.wait_for_pulls(4)
    assert _ids(pull.pull(SUBSCRIPTION)) == [4]


def test_the_prefetcher_stops_pulling_while_max_messages_wait(fake):
    client, pull, waits = fake
    pull.pull(SUBSCRIPTION)
    for i in range(4):
        client.batches.put(_batch(2 * i, 2 * i + 1))  # 8 messages; max_messages is 5
    assert waits.for_room.wait(EVENT_S)
    assert client.pulls == 3 and client.batches.qsize() == 1  # 6 held, the 4th batch left
    assert _ids(pull.pull(SUBSCRIPTION)) == list(range(6))
    client.wait_for_pulls(5)  # room again: the 4th batch pulled, then the next pull
    assert _ids(pull.pull(SUBSCRIPTION)) == [6, 7]


def test_a_vanished_subscription_fails_every_later_read(fake):
    client, pull, _ = fake
    pull.pull(SUBSCRIPTION)
    client.batches.put(exceptions.NotFound("gone"))
    _prefetch_thread(pull).join(EVENT_S)
    assert not _prefetch_thread(pull).is_alive()
    assert client.pulls == 1  # not retried
    with pytest.raises(pr.SubscriptionGone, match="does not exist any more"):
        pull.pull(SUBSCRIPTION)
    with pytest.raises(pr.SubscriptionGone):
        pull.pull(SUBSCRIPTION)


def test_an_unavailable_pubsub_is_pulled_again(fake):
    client, _, waits = fake
    retry = pr.UNAVAILABLE_RETRY.with_delay(initial=0.001, maximum=0.001)
    pull = pr._FastPull(client, wait=waits, retry=retry)
    try:
        pull.pull(SUBSCRIPTION)
        client.batches.put(exceptions.ServiceUnavailable("restarting"))
        client.batches.put(exceptions.ServiceUnavailable("restarting"))
        client.batches.put(_batch(1))
        client.wait_for_pulls(4)  # two failed, one served, the next one pending
        assert _ids(pull.pull(SUBSCRIPTION)) == [1]
    finally:
        pull.close()


def test_an_unavailable_pubsub_past_the_budget_fails_the_read(fake):
    client, _, waits = fake
    assert pr.UNAVAILABLE_RETRY.timeout == pr.UNAVAILABLE_BUDGET_S
    pull = pr._FastPull(client, wait=waits, retry=pr.UNAVAILABLE_RETRY.with_timeout(0.0))
    try:
        pull.pull(SUBSCRIPTION)
        client.batches.put(exceptions.ServiceUnavailable("down"))
        _prefetch_thread(pull).join(EVENT_S)
        with pytest.raises(exceptions.RetryError) as failed:
            pull.pull(SUBSCRIPTION)
        assert isinstance(failed.value.cause, exceptions.ServiceUnavailable)
    finally:
        pull.close()


def test_close_stops_the_prefetchers_and_closes_the_client(fake):
    client, pull, _ = fake
    pull.pull(SUBSCRIPTION)
    client.wait_for_pulls(1)
    pull.close()
    _prefetch_thread(pull).join(EVENT_S)  # the pending pull ends, the thread sees the stop
    assert not _prefetch_thread(pull).is_alive() and client.closed


def test_acknowledgements_leave_the_runners_thread_and_are_all_sent_by_close(fake):
    client, pull, _ = fake
    client.acks_answer.clear()  # every acknowledgement RPC waits for the test
    for i in range(5):
        pull.acknowledge(SUBSCRIPTION, [f"a{i}"])
    assert client.acked == []  # each call returned with its RPC not answered
    client.acks_answer.set()
    pull.close()
    assert client.acked == [f"a{i}" for i in range(5)]
    assert all(name.startswith("pubsub-ack") for name in client.ack_threads)


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match="idle_wait_s >= 0"):
        pr.tune_direct_pubsub_read(idle_wait_s=-1)


def test_held_messages_keep_their_lease_until_the_runner_takes_them(fake):
    """A runner busy past the messages' ack deadline does not get them redelivered: every
    ``LEASE_EVERY_S`` the held messages' deadline is set ``LEASE_S`` ahead (the real emulator's
    redelivery is in ``test_runner_pubsub_lease.py``)."""
    client, pull, _ = fake
    pull.pull(SUBSCRIPTION)
    client.batches.put(_batch(1, 2))
    client.wait_for_pulls(2)  # held, leased at 0
    CLOCK.now = pr.LEASE_EVERY_S - 0.5
    client.batches.put(_batch(3))
    client.wait_for_pulls(3)
    assert client.leased == []  # not due yet
    CLOCK.now = pr.LEASE_EVERY_S
    client.batches.put(_batch(4))
    assert client.lease_sent.wait(EVENT_S)
    assert client.leased == [(["a1", "a2", "a3", "a4"], pr.LEASE_S)]
    client.wait_for_pulls(4)
    assert _ids(pull.pull(SUBSCRIPTION)) == [1, 2, 3, 4]
    CLOCK.now = 10 * pr.LEASE_EVERY_S  # long after: new messages are leased from their pull
    client.batches.put(_batch(5))
    client.wait_for_pulls(5)
    assert len(client.leased) == 1


def test_a_full_prefetcher_keeps_the_lease_while_it_waits_for_room(fake):
    client, pull, waits = fake
    pull.pull(SUBSCRIPTION)
    for i in range(3):
        client.batches.put(_batch(2 * i, 2 * i + 1))  # 6 held: max_messages is 5
    assert waits.for_room.wait(EVENT_S)
    CLOCK.now = pr.LEASE_EVERY_S
    with pr._ARRIVED:
        pr._ARRIVED.notify_all()  # the wait's timeout, as the clock has moved
    assert client.lease_sent.wait(EVENT_S)
    assert client.leased == [([f"a{i}" for i in range(6)], pr.LEASE_S)]
    assert client.pulls == 3  # still full: no pull meanwhile
    assert _ids(pull.pull(SUBSCRIPTION)) == list(range(6))
