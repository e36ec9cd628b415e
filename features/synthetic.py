"""A small deterministic transaction table with the reference columns (tests, demo fallback)."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2018-04-01")


def transactions(
    n: int = 2_000,
    customers: int = 40,
    terminals: int = 60,
    days: int = 60,
    seed: int = 7,
    fraud_rate: float = 0.02,
) -> pd.DataFrame:
    """``n`` transactions over ``days`` days, sorted by time, with some same-second ties."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, days * 86_400, n))
    seconds[1::97] = seconds[:-1:97]  # a few exact ties
    seconds = np.sort(seconds)
    customer = rng.integers(0, customers, n)
    customer[1::97] = customer[:-1:97]  # ties within one customer
    amounts = np.round(rng.gamma(2.0, 40.0, n), 2)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n, dtype=np.int64),
            "TX_DATETIME": START + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": customer.astype(np.int64),
            "TERMINAL_ID": rng.integers(0, terminals, n).astype(np.int64),
            "TX_AMOUNT": amounts,
            "TX_TIME_SECONDS": seconds.astype(np.int64),
            "TX_TIME_DAYS": (seconds // 86_400).astype(np.int64),
            # random frauds, plus the handbook's first scenario (amount > 220) when fraud_rate > 0
            "TX_FRAUD": ((rng.random(n) < fraud_rate) | (fraud_rate > 0) & (amounts > 220)).astype(
                np.int64
            ),
            "TX_FRAUD_SCENARIO": np.zeros(n, np.int64),
        }
    )
