"""fraudstream replay: order, pacing, and a real publish to the Pub/Sub emulator."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from features.synthetic import transactions
from streaming.cli import main
from streaming.local import job_process as lj
from streaming.local.replay import Publisher, messages, period, replay
from streaming.schema import parse_label, parse_transaction

DELAY = timedelta(days=7)


def test_labels_follow_their_delay_and_parse_with_the_pipeline_schema():
    df = transactions(n=300, days=20)
    sent = []
    counts = replay(df, lambda t, d, a: sent.append((t, d, a)), "tx", "labels", DELAY)
    assert counts == {"tx": 300, "label": 300}
    seen_tx = set()
    for topic, data, attrs in sent:
        if topic == "tx":
            seen_tx.add(parse_transaction(data).transaction_id)
        else:
            label = parse_label(data)
            assert label.transaction_id in seen_tx  # a label never precedes its transaction
            assert label.label_time_ns - label.time_ns == DELAY.total_seconds() * 1e9
        assert attrs["id"] and attrs["event_time"].endswith("Z")


def test_pacing_by_rate_and_by_speedup():
    df = transactions(n=20, days=1)
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    replay(df, lambda *a: None, "t", "l", DELAY, rate=10, sleep=sleep, clock=lambda: now[0])
    assert now[0] == pytest.approx(39 / 10)  # 40 messages at 10/s
    now[0] = 0.0
    replay(
        df, lambda *a: None, "t", "l", DELAY, speedup=86_400.0, sleep=sleep, clock=lambda: now[0]
    )
    assert now[0] == pytest.approx(8.0, abs=1.0)  # ~8 days of event time at one day a second
    with pytest.raises(ValueError, match="not both"):
        replay(df, lambda *a: None, "t", "l", DELAY, rate=1, speedup=1)


def test_replay_publishes_to_the_emulator(pubsub_emulator, unique_name, tmp_path):
    from google.cloud import pubsub_v1

    project = "demo-project"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {k: unique_name(k) for k in ("tx", "labels")}
    subs = {}
    for kind, topic in topics.items():
        publisher.create_topic(name=publisher.topic_path(project, topic))
        subs[kind] = subscriber.subscription_path(project, unique_name(f"{kind}-sub"))
        subscriber.create_subscription(name=subs[kind], topic=publisher.topic_path(project, topic))
    path = tmp_path / "tx.parquet"
    transactions(n=120, days=10).to_parquet(path)
    args = [
        "replay",
        "--input",
        str(path),
        "--project",
        project,
        "--topic",
        topics["tx"],
        "--labels-topic",
        topics["labels"],
        "--start",
        "2018-04-03",
        "--ordering_key",
        "history",
        "--pending_labels",
    ]
    assert main(args) == 0
    received = {kind: lj.drain(sub, wait_s=10) for kind, sub in subs.items()}
    history = transactions(n=120, days=10)
    expected = int((history["TX_DATETIME"] >= "2018-04-03").sum())
    picked, seen = period(history, "2018-04-03", None, DELAY, pending_labels=True)
    labels = sum(m[0] == "label" for m in messages(picked, DELAY, seen))
    assert len(received["tx"]) == expected
    assert len(received["labels"]) == labels > expected  # and the earlier ones' still due
    assert all(parse_label(m.data).fraud in (0, 1) for m in received["labels"])
    assert {m.ordering_key for k in received for m in received[k]} == {"history"}
    ids = [parse_transaction(m.data).transaction_id for m in received["tx"]]
    assert ids == sorted(ids), "published under one ordering key, received in order"


def test_with_an_ordering_key_a_slow_producers_batches_arrive_in_order(
    pubsub_emulator, unique_name
):
    """A producer slower than the client's 10 ms batch latency splits its messages into many
    batches; under an ordering key the client sends them one at a time, in publish order."""
    import time

    from google.cloud import pubsub_v1

    project, n = "demo-project", 600
    topic, sub = unique_name("ordered"), unique_name("ordered-sub")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=publisher.topic_path(project, topic))
    sub = subscriber.subscription_path(project, sub)
    subscriber.create_subscription(name=sub, topic=publisher.topic_path(project, topic))
    publish = Publisher(project, ordering_key="card-42")
    assert publish.client.publisher_options.enable_message_ordering
    for i in range(n):
        publish(topic, str(i).encode(), {"id": str(i)})
        if i % 5 == 0:
            time.sleep(0.003)  # past the batch latency now and then: a new batch
    publish.flush()
    got = []
    for _ in range(50):
        response = subscriber.pull(subscription=sub, max_messages=1000, timeout=10)
        got += [m.message for m in response.received_messages]
        subscriber.acknowledge(
            subscription=sub, ack_ids=[m.ack_id for m in response.received_messages]
        )
        if len(got) >= n:
            break
    assert [int(m.data) for m in got] == list(range(n))
    assert {m.ordering_key for m in got} == {"card-42"}


def test_the_publisher_leaves_its_window_to_the_clients_flow_control(monkeypatch):
    from google.cloud.pubsub_v1.types import LimitExceededBehavior

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # no credentials; never called
    flow = Publisher("demo-project", window=7).client.publisher_options.flow_control
    assert flow.message_limit == 7
    assert flow.limit_exceeded_behavior == LimitExceededBehavior.BLOCK


def test_a_failed_publish_raises_at_flush_and_at_every_later_publish(pubsub_emulator, unique_name):
    from google.api_core import exceptions

    publish = Publisher("demo-project", window=2)
    for i in range(3):  # past the window: the client blocks until the first ones settle
        publish(unique_name("no-such-topic"), b"{}", {"id": str(i)})
    with pytest.raises(exceptions.NotFound):
        publish.flush()
    with pytest.raises(exceptions.NotFound):
        publish(unique_name("no-such-topic"), b"{}", {"id": "3"})


def test_a_feed_after_bootstrapped_transactions_has_only_what_they_did_not_see():
    """``seen=k``: the first k transactions, and the labels that arrived before the k-th, were
    applied by the bootstrap; the labels still due for them come in the feed."""
    df = transactions(n=200, days=30)
    delay = timedelta(days=7)
    everything = list(messages(df, delay))
    k = 120
    kth = next(i for i, m in enumerate(everything) if m[0] == "tx" and _id(m) == _id_of_row(df, k))
    fed = list(messages(df, delay, seen=k + 1))
    assert fed == everything[kth + 1 :]
    assert sum(m[0] == "tx" for m in fed) == len(df) - k - 1
    pending = [m for m in fed if m[0] == "label" and _id(m) <= _id_of_row(df, k)]
    assert pending  # labels of bootstrapped transactions still to come
    assert all(m[3] > everything[kth][3] for m in pending)
    last_tx = max(i for i, m in enumerate(everything) if m[0] == "tx")
    assert list(messages(df, delay, trailing_labels=False)) == everything[: last_tx + 1]
    assert last_tx + 1 < len(everything)  # labels due after the last transaction: left out


def _id(message) -> int:
    return int(message[2]["id"])


def _id_of_row(df, i: int) -> int:
    return int(df["TRANSACTION_ID"].iloc[i])


def test_pending_labels_are_those_due_after_start_for_the_delay_before_it():
    """``replay --start S --pending_labels``: the transactions from S on, and the labels still
    due for the transactions before S, exactly what follows S's last earlier transaction in
    the whole history's feed; without the option, no label of an earlier transaction."""
    df = transactions(n=400, days=40)
    start = "2018-04-21"
    everything = list(messages(df, DELAY))
    before = set(df.loc[df["TX_DATETIME"] < start, "TRANSACTION_ID"].tolist())
    last = max(i for i, m in enumerate(everything) if m[0] == "tx" and _id(m) in before)
    picked, seen = period(df, start, None, DELAY, pending_labels=True)
    assert picked["TX_DATETIME"].min() >= pd.Timestamp(start) - DELAY
    fed = list(messages(picked, DELAY, seen))
    assert fed == everything[last + 1 :]
    assert not any(m[0] == "tx" and _id(m) in before for m in fed)
    assert any(m[0] == "label" and _id(m) in before for m in fed)
    plain, none_seen = period(df, start, None, DELAY)
    assert none_seen == 0
    assert not any(_id(m) in before for m in messages(plain, DELAY))
    with pytest.raises(ValueError, match="needs --start"):
        period(df, None, None, DELAY, pending_labels=True)
    with pytest.raises(ValueError, match="no transaction"):
        period(df, "2019-01-01", None, DELAY, pending_labels=True)
