"""``fraudstream replay``: publish a transaction history to Pub/Sub as a live feed would.

Transactions go out in arrival (``TRANSACTION_ID``) order, each label ``label_delay`` after its
transaction (labels first at equal times), exactly the order ``features.stream.with_labels``
replays. Pacing: ``rate`` events per second, or ``speedup`` times event time, or as fast as
possible. Messages carry the event time in the ``event_time`` attribute (for Beam's
``timestamp_attribute``) and the transaction id in ``id`` (for de-duplication).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import timedelta

import numpy as np
import pandas as pd
from tqdm import tqdm

from features import presets
from features.incremental import KIND_TX, Batch
from features.stream import with_labels
from training.files import read_transactions

Publish = Callable[[str, bytes, dict[str, str]], object]


def feed_events(
    df: pd.DataFrame, label_delay: timedelta, seen: int = 0, trailing_labels: bool = True
) -> Batch:
    """The events of ``df`` to publish, in arrival order (transactions and their labels).

    The first ``seen`` transactions of ``df``, and the labels that arrive before the last of
    them, count as delivered already (to a job started from their states, see
    :mod:`streaming.job.initial_states`): only the labels still due for them are kept.
    ``trailing_labels=False`` ends with the last transaction (labels due later are left out).
    """
    spec = presets.BASELINE  # only its columns matter here
    events = with_labels(df, spec, label_delay)
    is_tx = np.flatnonzero(events.kind == KIND_TX)
    first = 0
    if seen > 0:  # just after the seen-th transaction
        first = int(is_tx[seen - 1]) + 1 if seen <= len(is_tx) else len(events)
    stop = int(is_tx[-1]) + 1 if not trailing_labels and len(is_tx) else len(events)
    return events[first:stop]


def messages(
    df: pd.DataFrame, label_delay: timedelta, seen: int = 0, trailing_labels: bool = True
) -> Iterator[tuple[str, bytes, dict, int]]:
    """(kind, payload, attributes, arrival ns) in arrival order; kind is ``tx`` or ``label``;
    ``seen`` and ``trailing_labels`` as in :func:`feed_events`."""
    yield from encode(feed_events(df, label_delay, seen, trailing_labels), df, label_delay)


def encode(
    events: Batch, df: pd.DataFrame, label_delay: timedelta
) -> Iterator[tuple[str, bytes, dict, int]]:
    """The messages of ``events`` (of ``df``, whose ``TX_FRAUD`` the labels carry)."""
    delay_ns = int(label_delay.total_seconds() * 1e9)
    fraud = dict(
        zip(df["TRANSACTION_ID"].to_numpy().tolist(), df["TX_FRAUD"].tolist(), strict=True)
    )
    for kind, txid, t, cust, term, amount in zip(
        events.kind.tolist(),
        events.transaction_id.tolist(),
        events.time_ns.tolist(),
        events.ids["CUSTOMER_ID"].tolist(),
        events.ids["TERMINAL_ID"].tolist(),
        events.values["TX_AMOUNT"].tolist(),
        strict=True,
    ):
        tx_time = pd.Timestamp(t).isoformat() + "Z"  # UTC, whatever the job's --naive_time_zone
        body = {
            "TRANSACTION_ID": txid,
            "TX_DATETIME": tx_time,
            "CUSTOMER_ID": cust,
            "TERMINAL_ID": term,
        }
        if kind == KIND_TX:
            body["TX_AMOUNT"] = amount
            arrival = t
        else:
            arrival = t + delay_ns
            body["LABEL_DATETIME"] = pd.Timestamp(arrival).isoformat() + "Z"
            body["TX_FRAUD"] = int(fraud[txid])
        attrs = {"event_time": pd.Timestamp(arrival).isoformat() + "Z", "id": str(txid)}
        yield ("tx" if kind == KIND_TX else "label"), json.dumps(body).encode(), attrs, arrival


def replay(
    df: pd.DataFrame,
    publish: Publish,
    topic: str,
    labels_topic: str,
    label_delay: timedelta = timedelta(days=7),
    rate: float | None = None,
    speedup: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: bool = True,
    seen: int = 0,
    trailing_labels: bool = True,
) -> dict[str, int]:
    """Publish ``df``'s transactions and labels; returns the counts published per kind.
    ``progress``: a progress bar on stderr; ``seen``, ``trailing_labels``: see
    :func:`messages`."""
    if rate is not None and speedup is not None:
        raise ValueError("give --rate or --speedup, not both")
    if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
        raise ValueError(f"rate and speedup must be positive, got {rate=} {speedup=}")
    counts = {"tx": 0, "label": 0}
    start, first = clock(), None
    events = feed_events(df, label_delay, seen, trailing_labels)
    total = len(events)
    with tqdm(total=total, desc="replay", unit="msg", unit_scale=True, disable=not progress) as bar:
        for i, (kind, data, attrs, arrival) in enumerate(encode(events, df, label_delay)):
            first = arrival if first is None else first
            if rate is not None:
                due = i / rate
            elif speedup is not None:
                due = (arrival - first) / 1e9 / speedup
            else:
                due = 0.0
            wait = due - (clock() - start)
            if wait > 0:
                sleep(wait)
            publish(topic if kind == "tx" else labels_topic, data, attrs)
            counts[kind] += 1
            bar.update()
    return counts


def run_replay(
    inputs: list[str],
    project: str,
    topic: str,
    labels_topic: str,
    start: str | None,
    end: str | None,
    rate: float | None,
    speedup: float | None,
    label_delay_days: float,
    ordering_key: str | None = None,
    pending_labels: bool = False,
    naive_time_zone: str = "UTC",
) -> dict[str, int]:
    """The CLI: read, select the period, publish with the Pub/Sub client (emulator aware), in
    order under ``ordering_key`` when one is given (see :class:`Publisher`).

    ``pending_labels`` (needs ``start``): also the labels still due after ``start`` for the
    transactions of the label delay before it, which a job started from the states of the
    history up to ``start`` (``fraudstream bootstrap``) waits for; those transactions
    themselves are not published again.
    """
    delay = timedelta(days=label_delay_days)
    history = read_transactions(inputs, presets.BASELINE, naive_time_zone=naive_time_zone)
    df, seen = period(history, start, end, delay, pending_labels)
    publisher = Publisher(project, ordering_key=ordering_key)
    counts = replay(df, publisher, topic, labels_topic, delay, rate, speedup, seen=seen)
    publisher.flush()
    print(
        f"published {counts['tx']:,} transactions to {topic} and {counts['label']:,} labels "
        f"to {labels_topic}"
    )
    return counts


def period(
    df: pd.DataFrame,
    start: str | None,
    end: str | None,
    label_delay: timedelta,
    pending_labels: bool = False,
) -> tuple[pd.DataFrame, int]:
    """The transactions to replay from ``start`` (inclusive) to ``end`` (exclusive), and how many
    of them count as seen (``replay``'s ``seen``): with ``pending_labels``, the transactions of
    the label delay before ``start`` come first, seen, so that only their labels still due are
    published. ``ValueError`` if nothing is left to publish."""
    if pending_labels and not start:
        raise ValueError("--pending_labels needs --start: the labels of which transactions?")
    times = df["TX_DATETIME"]
    keep = np.ones(len(df), bool)
    if start:
        since = pd.Timestamp(start) - (label_delay if pending_labels else timedelta(0))
        keep &= (times >= since).to_numpy()
    if end:
        keep &= (times < pd.Timestamp(end)).to_numpy()
    df = df[keep].reset_index(drop=True)
    seen = int((df["TX_DATETIME"] < pd.Timestamp(start)).sum()) if pending_labels else 0
    if len(df) == seen:
        raise ValueError(f"no transaction between {start} and {end}")
    return df, seen


class Publisher:
    """A :data:`Publish` to topic ids of one project with the Pub/Sub client (the emulator when
    ``PUBSUB_EMULATOR_HOST`` is set). Publishes are asynchronous; the client's flow control
    blocks a publish while ``window`` messages are unsent. A failed publish raises at the next
    publish or at :meth:`flush`, which waits until every message is accepted.

    The client sends a topic's batches concurrently, so a later batch can reach Pub/Sub before
    an earlier one (a producer slower than the 10 ms batch latency splits its messages into
    many batches). With ``ordering_key`` every message carries that Pub/Sub ordering key and the
    client sends each topic's batches one at a time, in publish order; Pub/Sub allows about
    1 MB/s per ordering key.
    """

    def __init__(self, project: str, window: int = 1_000, ordering_key: str | None = None) -> None:
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.types import LimitExceededBehavior, PublishFlowControl

        flow = PublishFlowControl(
            message_limit=window, limit_exceeded_behavior=LimitExceededBehavior.BLOCK
        )
        options = pubsub_v1.types.PublisherOptions(
            flow_control=flow, enable_message_ordering=ordering_key is not None
        )
        self.client = pubsub_v1.PublisherClient(publisher_options=options)
        self.project, self.window = project, window
        self._key = {} if ordering_key is None else {"ordering_key": ordering_key}
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._failed: BaseException | None = None

    def __call__(self, topic: str, data: bytes, attrs: dict[str, str]) -> None:
        self._raise_failed()
        path = self.client.topic_path(self.project, topic)
        future = self.client.publish(path, data, **self._key, **attrs)  # blocks while `window`
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)

    def flush(self) -> None:
        """Wait until every message published so far is accepted; raise the first failure."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            error = future.exception()
            if error is not None:
                raise error
        self._raise_failed()

    def _settled(self, future: Future) -> None:
        error = future.exception()
        with self._lock:
            self._pending.discard(future)
            if error is not None and self._failed is None:
                self._failed = error

    def _raise_failed(self) -> None:
        with self._lock:
            failed = self._failed
        if failed is not None:
            raise failed
