"""The baseline preset written the way the handbook writes it: pandas groupby-rolling.

Used as the speed reference of ``make bench`` and as an independent oracle in tests.
"""

from __future__ import annotations

import pandas as pd

WINDOWS_DAYS = (1, 7, 30)
DELAY_DAYS = 7


def _rolling(frame: pd.DataFrame, key: str, days: int, column: str, how: str) -> pd.Series:
    """``how`` of ``column`` over each row's trailing window; ``frame`` is sorted by key, time."""
    rolled = frame.groupby(key, sort=True).rolling(f"{days}D", on="TX_DATETIME")[column]
    return pd.Series(getattr(rolled, how)().to_numpy(), index=frame.index)


def baseline_features(df: pd.DataFrame) -> pd.DataFrame:
    """The 15 baseline features of every row of ``df``, indexed like ``df``."""
    out = pd.DataFrame({"TRANSACTION_ID": df["TRANSACTION_ID"], "TX_AMOUNT": df["TX_AMOUNT"]})
    out["TX_DURING_WEEKEND"] = (df["TX_DATETIME"].dt.weekday >= 5).astype(float)
    out["TX_DURING_NIGHT"] = (df["TX_DATETIME"].dt.hour <= 6).astype(float)
    cols = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
    by_customer = df[cols].sort_values(["CUSTOMER_ID", "TX_DATETIME", "TRANSACTION_ID"])
    for w in WINDOWS_DAYS:
        amount = lambda how, w=w: _rolling(by_customer, "CUSTOMER_ID", w, "TX_AMOUNT", how)  # noqa: E731
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = amount("count")
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = amount("mean")
    by_terminal = df[cols].sort_values(["TERMINAL_ID", "TX_DATETIME", "TRANSACTION_ID"])

    def fraud(days: int, how: str) -> pd.Series:
        return _rolling(by_terminal, "TERMINAL_ID", days, "TX_FRAUD", how)

    fraud_delay, count_delay = fraud(DELAY_DAYS, "sum"), fraud(DELAY_DAYS, "count")
    for w in WINDOWS_DAYS:
        frauds = fraud(DELAY_DAYS + w, "sum") - fraud_delay
        count = fraud(DELAY_DAYS + w, "count") - count_delay
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = count
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = (frauds / count).where(count > 0, 0.0)
    return out
