"""Turning a transaction table into the event stream a production system sees.

Transactions arrive in ``TRANSACTION_ID`` order; the label of each arrives ``label_delay`` after
its transaction time (before any transaction of the same instant), as fraud feedback does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import numpy as np
import pandas as pd

from features.batch import lookup_columns
from features.incremental import KIND_LABEL, KIND_TX, Batch, IncrementalEngine, Status
from features.spec import FeatureSpec, to_ns
from features.table import event_times_ns


def with_labels(df: pd.DataFrame, spec: FeatureSpec, label_delay: timedelta | None = None) -> Batch:
    """Transactions of ``df`` (validated, sorted by id) interleaved with their labels.

    ``label_delay`` defaults to the spec's; a transaction's label is delivered before the first
    transaction whose time is at or after ``time + label_delay``.
    """
    delay = to_ns(spec.label_delay if label_delay is None else label_delay)
    times = event_times_ns(df)
    n = len(df)
    arrival = np.maximum.accumulate(times) if n else times
    label_pos = np.searchsorted(arrival, times + delay, side="left")
    # Stable merge: a label placed at position p comes right before transaction p.
    key = np.concatenate([np.arange(n) * 2 + 1, label_pos * 2])
    order = np.argsort(key, kind="stable")
    kind = np.concatenate([np.full(n, KIND_TX), np.full(n, KIND_LABEL)])[order]
    src = np.concatenate([np.arange(n), np.arange(n)])[order]
    ids = {e.key: df[e.key].to_numpy(np.int64)[src] for e in spec.entities}
    values = {c: df[c].to_numpy(np.float64)[src] for c in spec.value_columns}
    return Batch(
        kind=kind.astype(np.int64),
        transaction_id=df["TRANSACTION_ID"].to_numpy(np.int64)[src],
        time_ns=times[src],
        ids=ids,
        values=values,
    )


def slices(batch: Batch, size: int) -> Iterator[Batch]:
    """Consecutive micro-batches of at most ``size`` events."""
    for a in range(0, len(batch), size):
        yield batch[a : a + size]


def stream_features(
    df: pd.DataFrame,
    spec: FeatureSpec,
    batch_size: int = 4096,
    engine: IncrementalEngine | None = None,
    progress: Callable[[int], object] | None = None,
    lookups: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Features of every transaction of ``df`` computed by the incremental path.

    Events are fed in arrival order (labels after the delay) in micro-batches; the result is
    indexed like ``df`` with ``TRANSACTION_ID``, the features and a ``STATUS`` column.
    ``progress`` is called with the number of events of each micro-batch done. The spec's
    batch features of accepted transactions are joined point in time from ``lookups``
    (default: the snapshots of ``df`` itself), as the job looks them up.
    """
    engine = engine or IncrementalEngine(spec)
    batch = with_labels(df, spec)
    feats = np.empty((len(df), len(spec.names)))
    status = np.empty(len(df), np.int64)
    row_of_tx = np.flatnonzero(batch.kind == KIND_TX)
    src = np.empty(len(batch), np.int64)
    src[row_of_tx] = np.arange(len(row_of_tx))
    start = 0
    for part in slices(batch, batch_size):
        f, st = engine.process(part)
        is_tx = part.kind == KIND_TX
        rows = src[start : start + len(part)][is_tx]
        feats[rows] = f[is_tx]
        status[rows] = st[is_tx]
        start += len(part)
        if progress is not None:
            progress(len(part))
    if spec.lookups:
        accepted = status <= Status.LATE
        feats[accepted, len(spec.stream_names) :] = lookup_columns(df, spec, lookups)[accepted]
    out = pd.DataFrame(feats, columns=spec.names, index=df.index)
    out.insert(0, "TRANSACTION_ID", df["TRANSACTION_ID"].to_numpy())
    out["STATUS"] = status
    return out
