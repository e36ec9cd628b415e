"""``Alerts`` alone: accepted scored transactions at or above the threshold -> alert records;
those below it and rejected ones -> nothing."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from apache_beam import Create
from apache_beam.testing.util import assert_that, equal_to

from features.incremental import Status
from streaming.job.alerts import Alerts
from streaming.job.scoring import Scored
from streaming.schema import Transaction, time_ns
from tests.streaming.job.stages import batch_pipeline

NOW = 1_700_000_000.0
FEATURES = ["TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW"]
EVENT = datetime(2018, 4, 1, 7, 19, 5)


def _scored(
    transaction_id: int,
    score: float,
    status: Status = Status.OK,
    clear_ids: tuple[int | str, int | str] | None = None,
    text_ids: tuple[str | None, str | None, str | None] | None = None,
) -> Scored:
    """Parsed 0.5 s and assembled 0.25 s before ``NOW``; the second feature NaN."""
    tx = Transaction(
        transaction_id, time_ns(EVENT), 5, 33, 57.16, NOW - 0.5, clear_ids, text_ids=text_ids
    )
    reasons = (("TX_AMOUNT", 57.16, 1.5), ("CUSTOMER_ID_NB_TX_1DAY_WINDOW", float("nan"), 0.25))
    return Scored(
        tx=tx,
        score=score,
        threshold=0.5,
        model_version="v0007",
        reasons=reasons if score >= 0.5 else (),
        status=int(status),
        accepted=status <= Status.LATE,
        features=np.array([57.16, np.nan, 0.125]),
        computed_at=NOW - 0.25,
    )


def _alert(transaction_id: int | str, score: float) -> dict:
    return {
        "transaction_id": transaction_id,
        "customer_id": 5,
        "terminal_id": 33,
        "score": score,
        "threshold": 0.5,
        "model_version": "v0007",
        "reasons": [
            {"feature": "TX_AMOUNT", "value": 57.16, "contribution": 1.5},
            {"feature": "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "value": None, "contribution": 0.25},
        ],
        "features": {
            "TX_AMOUNT": 57.16,
            "CUSTOMER_ID_NB_TX_1DAY_WINDOW": None,  # NaN: JSON has none
            "TERMINAL_ID_RISK_7DAY_WINDOW": 0.125,
        },
        "feature_age_ms": 250.0,
        "event_time": "2018-04-01T07:19:05",
        "processing_latency_ms": 500.0,
    }


def test_alerts_at_or_above_the_threshold_for_accepted_transactions_only() -> None:
    scored = [
        _scored(1, 0.9),
        _scored(2, 0.5),  # at the threshold: alerts
        _scored(3, 0.4999),
        _scored(4, 0.7, Status.LATE),  # late but accepted: alerts
        _scored(5, 0.99, Status.TOO_LATE),  # rejected: never alerts
        _scored(6, 0.8, clear_ids=(105, 133)),  # the clear ids the job kept for investigators
        _scored(7, 0.8, text_ids=("txn-7", None, "0033")),  # text ids: echoed as sent
        _scored(8, 0.8, clear_ids=("card_tok", 133), text_ids=("txn-8", None, None)),
    ]
    expected = [
        _alert(1, 0.9),
        _alert(2, 0.5),
        _alert(4, 0.7),
        _alert(6, 0.8) | {"customer_id_clear": 105, "terminal_id_clear": 133},
        _alert("txn-7", 0.8) | {"terminal_id": "0033"},
        _alert("txn-8", 0.8) | {"customer_id_clear": "card_tok", "terminal_id_clear": 133},
    ]
    with batch_pipeline() as p:
        alerts = p | Create([scored[:2], scored[2:]]) | Alerts(FEATURES, clock=lambda: NOW)
        assert_that(alerts, equal_to(expected))
