"""Helpers of the stage tests: records from a transaction table, and a matcher of feature rows.

Each stage test runs one composite of :mod:`streaming.job` alone on a ``TestPipeline`` and
checks its outputs with ``assert_that``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException

from features import presets
from features.incremental import Status
from streaming.job.entity_state import arrival_key
from streaming.schema import Label, Transaction, time_ns

TX = {
    "TRANSACTION_ID": 17,
    "TX_DATETIME": "2018-04-01T07:19:05",
    "CUSTOMER_ID": 5,
    "TERMINAL_ID": 33,
    "TX_AMOUNT": 57.16,
}
"""One valid transaction message, as a producer sends it."""

SPEC = presets.BASELINE


def batch_pipeline() -> TestPipeline:
    """A batch ``TestPipeline`` on the DirectRunner (its in-process portable runner)."""
    return TestPipeline()


def streaming_pipeline() -> TestPipeline:
    """A streaming ``TestPipeline`` on the bundle-based DirectRunner, where a ``TestStream``
    delivers its events in the order given."""
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


def to_transactions(df: pd.DataFrame) -> list[Transaction]:
    """The table's rows as parsed transactions, in row order."""
    return [
        Transaction(
            transaction_id=int(row.TRANSACTION_ID),
            time_ns=time_ns(row.TX_DATETIME.to_pydatetime()),
            customer_id=int(row.CUSTOMER_ID),
            terminal_id=int(row.TERMINAL_ID),
            amount=float(row.TX_AMOUNT),
        )
        for row in df.itertuples(index=False)
    ]


def to_labels(df: pd.DataFrame) -> list[Label]:
    """Each row's fraud label, published ``SPEC.label_delay`` after the transaction."""
    delay = int(SPEC.label_delay.total_seconds()) * 10**9
    return [
        Label(
            transaction_id=tx.transaction_id,
            customer_id=tx.customer_id,
            terminal_id=tx.terminal_id,
            time_ns=tx.time_ns,
            label_time_ns=tx.time_ns + delay,
            fraud=int(fraud),
        )
        for tx, fraud in zip(to_transactions(df), df["TX_FRAUD"], strict=True)
    ]


def in_arrival_order(df: pd.DataFrame) -> list[Transaction | Label]:
    """Transactions and labels in the order a replay delivers them (:func:`arrival_key`)."""
    return sorted([*to_transactions(df), *to_labels(df)], key=arrival_key)


def rows_equal(
    expected: Mapping[tuple[int, str], np.ndarray], computed_at: float
) -> Callable[[Iterable], None]:
    """An ``assert_that`` matcher of feature rows, or of lists of them (the ``arrival`` chain's
    elements): exactly one row per ``(transaction id, status name)`` of ``expected``, with those
    features bit for bit (NaN equal to NaN), each assembled at ``computed_at`` (the stage's
    clock)."""

    def match(actual: Iterable) -> None:
        got: dict[tuple[int, str], list[np.ndarray]] = {}
        for row in (r for e in actual for r in (e if isinstance(e, list) else [e])):
            if row.computed_at != computed_at:
                raise BeamAssertException(f"computed_at {row.computed_at}, not {computed_at}")
            got.setdefault((row.tx.transaction_id, Status(row.status).name), []).append(
                row.features
            )
        counts = {key: len(rows) for key, rows in got.items()}
        if counts != dict.fromkeys(expected, 1):
            missing = sorted(set(expected) - set(got))[:5]
            extra = sorted(k for k, n in counts.items() if k not in expected or n > 1)[:5]
            raise BeamAssertException(f"rows missing {missing}, unexpected or repeated {extra}")
        for key, features in expected.items():
            try:
                np.testing.assert_array_equal(got[key][0], features)
            except AssertionError as exc:
                raise BeamAssertException(f"features of {key}: {exc}") from exc

    return match
