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
from features.incremental import KIND_TX
from features.stream import with_labels
from features.table import read_transactions

Publish = Callable[[str, bytes, dict[str, str]], object]


def messages(
    df: pd.DataFrame, label_delay: timedelta, seen: int = 0, trailing_labels: bool = True
) -> Iterator[tuple[str, bytes, dict, int]]:
    """(kind, payload, attributes, arrival ns) in arrival order; kind is ``tx`` or ``label``.

    The first ``seen`` transactions of ``df``, and the labels that arrive before the last of
    them, count as delivered already (to a job started from their states, see
    :mod:`streaming.job.initial_states`): only the labels still due for them are yielded.
    ``trailing_labels=False`` ends with the last transaction (labels due later are left out).
    """
    spec = presets.BASELINE  # only its columns matter here
    events = with_labels(df, spec, label_delay)
    is_tx = np.flatnonzero(events.kind == KIND_TX)
    first = 0
    if seen > 0:  # just after the seen-th transaction
        first = int(is_tx[seen - 1]) + 1 if seen <= len(is_tx) else len(events)
    stop = int(is_tx[-1]) + 1 if not trailing_labels and len(is_tx) else len(events)
    events = events[first:stop]
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
        tx_time = pd.Timestamp(t).isoformat()
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
            body["LABEL_DATETIME"] = pd.Timestamp(arrival).isoformat()
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
    total = 2 * len(df)
    with tqdm(total=total, desc="replay", unit="msg", unit_scale=True, disable=not progress) as bar:
        feed = messages(df, label_delay, seen, trailing_labels)
        for i, (kind, data, attrs, arrival) in enumerate(feed):
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
) -> dict[str, int]:
    """The CLI: read, select the period, publish with the Pub/Sub client (emulator aware), in
    order under ``ordering_key`` when one is given (see :class:`Publisher`)."""
    df = read_transactions(inputs, presets.BASELINE)
    times = df["TX_DATETIME"]
    keep = np.ones(len(df), bool)
    if start:
        keep &= (times >= pd.Timestamp(start)).to_numpy()
    if end:
        keep &= (times < pd.Timestamp(end)).to_numpy()
    df = df[keep].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"no transaction between {start} and {end}")
    publisher = Publisher(project, ordering_key=ordering_key)
    counts = replay(
        df, publisher, topic, labels_topic, timedelta(days=label_delay_days), rate, speedup
    )
    publisher.flush()
    print(
        f"published {counts['tx']:,} transactions to {topic} and {counts['label']:,} labels "
        f"to {labels_topic}"
    )
    return counts


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
