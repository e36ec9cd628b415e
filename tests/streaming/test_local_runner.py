"""The local runner's patches: the prefetching Pub/Sub read, the DoFn caches, the timer scan."""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.transforms import core, userstate
from google.api_core import exceptions
from google.cloud.pubsub_v1.types import PubsubMessage, PullResponse, ReceivedMessage

from features import presets
from features.plan import EntityPlan
from streaming.job.arrival import _ChainLink
from streaming.job.event_time import _OrderedEntityState
from streaming.local import runner as lr

SUBSCRIPTION = "projects/p/subscriptions/s"


class _FakeSubscriber:
    """Serves queued batches; an empty queue waits out the pull's timeout like Pub/Sub."""

    def __init__(self) -> None:
        self.batches: queue.Queue = queue.Queue()
        self.pulls = 0
        self.acked: list[str] = []
        self.closed = False

    def pull(self, subscription: str, max_messages: int, timeout: float) -> PullResponse:
        self.pulls += 1
        try:
            item = self.batches.get(timeout=timeout)
        except queue.Empty:
            raise exceptions.DeadlineExceeded("no messages") from None
        if isinstance(item, Exception):
            raise item
        return item

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        time.sleep(0.05)  # an RPC
        self.acked += ack_ids

    def close(self) -> None:
        self.closed = True


def _batch(*ids: int) -> PullResponse:
    return PullResponse(
        received_messages=[
            ReceivedMessage(ack_id=f"a{i}", message=PubsubMessage(data=str(i).encode()))
            for i in ids
        ]
    )


def _ids(response: PullResponse) -> list[int]:
    return [int(m.message.data) for m in response.received_messages]


@pytest.fixture
def fake():
    lr.tune_direct_pubsub_read(max_messages=5, timeout_s=0.5, idle_wait_s=0.05)
    client = _FakeSubscriber()
    pull = lr._FastPull(client)
    yield client, pull
    pull.close()
    lr.tune_direct_pubsub_read()  # the defaults again


def _take(pull: lr._FastPull, want: int, deadline_s: float = 5.0) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < deadline:
        got += _ids(pull.pull(SUBSCRIPTION))
    return got


def test_a_read_of_an_idle_subscription_returns_after_the_idle_wait_not_the_pull_timeout(fake):
    _, pull = fake
    started = time.monotonic()
    assert _ids(pull.pull(SUBSCRIPTION)) == []
    assert time.monotonic() - started < 0.4  # the background pull waits 0.5 s; the read does not


def test_batches_pulled_meanwhile_are_handed_over_together_in_order(fake):
    client, pull = fake
    assert _ids(pull.pull(SUBSCRIPTION)) == []  # starts the prefetcher
    client.batches.put(_batch(1, 2))
    client.batches.put(_batch(3))
    time.sleep(0.3)  # both pulled before the next read
    assert _ids(pull.pull(SUBSCRIPTION)) == [1, 2, 3]
    client.batches.put(_batch(4))
    assert _take(pull, 1) == [4]


def test_the_prefetcher_stops_pulling_while_max_messages_wait(fake):
    client, pull = fake
    pull.pull(SUBSCRIPTION)
    for i in range(4):
        client.batches.put(_batch(2 * i, 2 * i + 1))  # 8 messages; max_messages is 5
    time.sleep(0.5)
    assert client.batches.qsize() == 1  # 3 batches (6 messages) held, the 4th left unpulled
    assert _take(pull, 8) == list(range(8))


def test_a_vanished_subscription_fails_every_later_read(fake):
    client, pull = fake
    pull.pull(SUBSCRIPTION)
    client.batches.put(exceptions.NotFound("gone"))
    with pytest.raises(lr.SubscriptionGone, match="does not exist any more"):
        _take(pull, 1)
    with pytest.raises(lr.SubscriptionGone):
        pull.pull(SUBSCRIPTION)


def test_close_stops_the_prefetchers_and_closes_the_client(fake):
    client, pull = fake
    pull.pull(SUBSCRIPTION)
    pull.close()
    time.sleep(0.7)  # the pending pull ends (0.5 s) and the thread sees the stop
    threads = [t.name for t in threading.enumerate() if t.name.startswith("pubsub-prefetch")]
    assert threads == [] and client.closed


def test_acknowledgements_leave_the_runners_thread_and_are_all_sent_by_close(fake):
    client, pull = fake
    started = time.monotonic()
    for i in range(5):
        pull.acknowledge(SUBSCRIPTION, [f"a{i}"])
    assert time.monotonic() - started < 0.1  # five 50 ms RPCs, none on this thread
    pull.close()
    assert client.acked == [f"a{i}" for i in range(5)]


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match="idle_wait_s >= 0"):
        lr.tune_direct_pubsub_read(idle_wait_s=-1)


def test_dofn_copies_reuse_their_originals_introspection_and_do_not_pile_up():
    lr.cache_dofn_introspection()
    dofn = beam.Map(lambda x: x + 1).fn
    copies = [pickler.roundtrip(dofn) for _ in range(50)]
    assert all(c is not dofn and c._fn is not dofn._fn for c in copies)
    specs = [userstate.get_dofn_specs(c) for c in copies]
    assert all(s == specs[0] for s in specs)
    args = [core.get_function_args_defaults(c._fn) for c in copies]
    assert all(a == (["x"], []) for a in args)
    cells = [c.cell_contents for c in core.get_function_args_defaults.__closure__]
    memo = next(c for c in cells if isinstance(c, dict))
    assert sum(1 for key in memo if key[0] == dofn._fn.__code__) == 1  # one entry, 50 copies


def test_the_timer_scan_skips_stateful_steps_without_timers():
    spec = presets.BASELINE
    customer, terminal = spec.entities
    plan = EntityPlan.build(spec, customer)

    def applied(transform: beam.PTransform) -> object:
        return type("Applied", (), {"transform": transform})()

    day = timedelta(days=1)
    link = _ChainLink(spec, customer, day, (terminal,), time.time)
    assert lr._declares_no_timers(applied(beam.ParDo(link)))
    assert not lr._declares_no_timers(applied(beam.ParDo(_OrderedEntityState(plan, day))))
    assert not lr._declares_no_timers(applied(beam.Map(lambda x: x)))  # not stateful
    assert not lr._declares_no_timers(applied(beam.GroupByKey()))


def test_objects_alive_at_start_and_after_the_settling_time_are_frozen():
    import gc

    try:
        lr.freeze_startup_objects(settle_s=0.2)
        at_start = gc.get_freeze_count()
        assert at_start > 0
        kept = [[i] for i in range(2_000)]  # tracked objects loaded by the first bundles
        time.sleep(0.5)
        assert gc.get_freeze_count() >= at_start + len(kept)
    finally:
        gc.unfreeze()
