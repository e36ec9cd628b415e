"""A seeded transaction simulator with the reference data's three fraud scenarios.

It follows the generator of the Fraud Detection Handbook (the reference workload's source):
customers and terminals on a 100 x 100 grid, each customer spending at terminals within a
radius, a Poisson number of transactions a day around midday, normal amounts per customer. Fraud:

1. every amount above 220 is fraudulent;
2. each day ``compromised_terminals`` terminals (2 per 10,000) are compromised: all their
   transactions of the next 28 days are fraudulent;
3. each day ``compromised_cards`` cards (3 per 5,000) are compromised: over the next 14 days a
   third of their transactions have their amount multiplied by 5 and are fraudulent.

Columns and types are those of ``shared/data/transactions.parquet``; the output is sorted by
time, with ``TRANSACTION_ID`` in that order. Vectorised with numpy: a year of 5,000 cards takes
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY_S = 86_400


@dataclass(frozen=True)
class SimulatorConfig:
    """Sizes and fraud rates; ``start`` is the first day (naive)."""

    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start: str = "2018-04-01"
    radius: float = 5.0
    compromised_terminals: int | None = None  # a day; default 2 per 10,000 terminals
    compromised_cards: int | None = None  # a day; default 3 per 5,000 cards
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def simulate(config: SimulatorConfig) -> pd.DataFrame:
    """Transactions with labels and fraud scenarios (see the module docstring)."""
    rng = np.random.default_rng(config.seed)
    n_c, n_t, days = config.customers, config.terminals, config.days
    per_day_terminals = config.compromised_terminals
    if per_day_terminals is None:
        per_day_terminals = max(1, round(2 * n_t / 10_000))
    per_day_cards = config.compromised_cards
    if per_day_cards is None:
        per_day_cards = max(1, round(3 * n_c / 5_000))
    cust_xy = rng.uniform(0, 100, (n_c, 2))
    mean_amount = rng.uniform(5, 100, n_c)
    mean_per_day = rng.uniform(0, 4, n_c)
    term_xy = rng.uniform(0, 100, (n_t, 2))

    # terminals within the radius of each customer, as one flat array with offsets
    near = [np.flatnonzero(((term_xy - xy) ** 2).sum(axis=1) < config.radius**2) for xy in cust_xy]
    counts_near = np.array([len(a) for a in near])
    offsets = np.concatenate([[0], np.cumsum(counts_near)])
    flat_near = np.concatenate(near) if counts_near.sum() else np.zeros(0, np.int64)

    per_day = rng.poisson(np.repeat(mean_per_day[None, :], days, axis=0))  # days x customers
    per_day[:, counts_near == 0] = 0
    day = np.repeat(np.arange(days), per_day.sum(axis=1))
    customer = np.concatenate([np.repeat(np.arange(n_c), per_day[d]) for d in range(days)])
    seconds_in_day = rng.normal(DAY_S / 2, 20_000, len(customer))
    keep = (seconds_in_day > 0) & (seconds_in_day < DAY_S)
    day, customer, seconds_in_day = day[keep], customer[keep], seconds_in_day[keep]
    amount = rng.normal(mean_amount[customer], mean_amount[customer] / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    pick = (rng.random(len(customer)) * counts_near[customer]).astype(np.int64)
    terminal = flat_near[offsets[customer] + pick]

    seconds = (day * DAY_S + seconds_in_day).astype(np.int64)
    order = np.argsort(seconds, kind="stable")
    seconds, customer, terminal, amount = (
        seconds[order],
        customer[order],
        terminal[order],
        amount[order],
    )
    amount = np.round(amount, 2)
    tx_day = seconds // DAY_S
    scenario = np.zeros(len(seconds), np.int64)
    scenario[amount > 220] = 1
    for d in range(days):
        hit = rng.choice(n_t, size=min(per_day_terminals, n_t), replace=False)
        window = (tx_day >= d) & (tx_day < d + 28) & np.isin(terminal, hit)
        scenario[window & (scenario == 0)] = 2
        cards = rng.choice(n_c, size=min(per_day_cards, n_c), replace=False)
        idx = np.flatnonzero((tx_day >= d) & (tx_day < d + 14) & np.isin(customer, cards))
        chosen = idx[rng.random(len(idx)) < 1 / 3]
        chosen = chosen[scenario[chosen] == 0]
        amount[chosen] = np.round(amount[chosen] * 5, 2)
        scenario[chosen] = 3
    start = pd.Timestamp(config.start)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(seconds), dtype=np.int64),
            "TX_DATETIME": start + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": customer.astype(np.int64),
            "TERMINAL_ID": terminal.astype(np.int64),
            "TX_AMOUNT": amount,
            "TX_TIME_SECONDS": seconds,
            "TX_TIME_DAYS": tx_day.astype(np.int64),
            "TX_FRAUD": (scenario > 0).astype(np.int64),
            "TX_FRAUD_SCENARIO": scenario,
        }
    )
