"""The evaluation protocol of ``shared/EVALUATION.md`` (the Fraud Detection Handbook's).

For a start date ``D``: training ends at ``D + 7 days`` (it starts at ``D`` for the published
protocol, earlier with more history), the next 7 days are a delay whose labels are not yet known,
then 7 test days. On each test day the transactions of cards already known to be compromised
are dropped: cards with a fraud in the training week ``[D, D + 7)``, or on a delay-period day up
to the test day minus 8 (labels become known one day at a time), as the handbook's code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from features.spec import DAY

WEEK = 7 * DAY


@dataclass(frozen=True)
class Split:
    """Time windows of one evaluation, all half-open ``[start, end)`` on naive timestamps."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    week_start: pd.Timestamp  # the protocol's DATE: first day of the training week
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @classmethod
    def build(cls, train_start: str | pd.Timestamp, train_days: int = 7) -> Split:
        """The split for protocol DATE ``train_start`` with ``train_days`` of training history."""
        week = pd.Timestamp(train_start).normalize()
        if train_days < 7:
            raise ValueError(f"train_days must be >= 7 (the training week), got {train_days}")
        end = week + WEEK
        return cls(end - train_days * DAY, end, week, end + WEEK, end + 2 * WEEK)

    @property
    def train_days(self) -> int:
        return (self.train_end - self.train_start) // DAY

    def check_data(self, times: pd.Series) -> None:
        """Raise ``ValueError`` naming the dates if the data do not cover this split."""
        first, last = times.min(), times.max()
        if self.train_start < first.normalize() or self.test_end > last.normalize() + DAY:
            raise ValueError(
                f"the split needs data from {self.train_start.date()} to "
                f"{(self.test_end - DAY).date()}; the input covers {first.date()} to {last.date()}"
            )

    def shifted(self, days: int) -> Split:
        """The same split ``days`` earlier (a validation split carved from training time)."""
        d = days * DAY
        return Split(
            self.train_start - d,
            self.train_end - d,
            self.week_start - d,
            self.test_start - d,
            self.test_end - d,
        )


def in_window(times: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    return ((times >= start) & (times < end)).to_numpy()


def scored_rows(df: pd.DataFrame, split: Split) -> np.ndarray:
    """Test-week rows left after dropping known-compromised cards, day by day."""
    times = df["TX_DATETIME"]
    fraud = df["TX_FRAUD"].to_numpy() == 1
    cards = df["CUSTOMER_ID"].to_numpy()
    week = in_window(times, split.week_start, split.train_end)
    known = set(cards[week & fraud].tolist())
    keep = np.zeros(len(df), bool)
    for k in range(7):
        day = split.test_start + k * DAY
        delay_day = split.train_end + (k - 1) * DAY  # test day - 8
        if k > 0:
            known |= set(cards[in_window(times, delay_day, delay_day + DAY) & fraud].tolist())
        today = in_window(times, day, day + DAY)
        keep |= today & ~np.isin(cards, list(known))
    return keep


def card_precision_at_k(
    days: np.ndarray, cards: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 100
) -> float:
    """Mean over days of the share of compromised cards among the k highest-scored cards.

    A card's score and label on a day are its maxima that day; cards detected (compromised and
    in the top k) on earlier days are removed before ranking a day.
    """
    frame = pd.DataFrame({"day": days, "card": cards, "label": labels, "score": scores})
    detected: set = set()
    precisions = []
    for _, today in frame.groupby("day", sort=True):
        today = today[~today["card"].isin(detected)]
        per_card = today.groupby("card", sort=True)[["score", "label"]].max()
        top = per_card.sort_values("score", ascending=False, kind="stable").head(k)
        hits = top.index[top["label"] == 1]
        precisions.append(len(hits) / k)
        detected |= set(hits.tolist())
    return float(np.mean(precisions)) if precisions else float("nan")


def metrics(df: pd.DataFrame, scores: np.ndarray, k: int = 100) -> dict[str, float]:
    """AUC ROC, average precision and CP@k of ``scores`` for the rows of ``df``."""
    labels = df["TX_FRAUD"].to_numpy()
    days = df["TX_DATETIME"].dt.normalize().to_numpy()
    if labels.min() == labels.max():
        raise ValueError("the test rows hold a single class: AUC and AP are undefined")
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "cp_at_100" if k == 100 else f"cp_at_{k}": card_precision_at_k(
            days, df["CUSTOMER_ID"].to_numpy(), labels, scores, k
        ),
    }
