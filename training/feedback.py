"""Investigator feedback: the labels of each day's alerted cards become known that day.

A replay feeds the stream day by day. At the end of each day the deployed model's 100 highest
scored cards (not already confirmed) are "investigated": the labels of all their transactions
of that day arrive at once, besides the regular labels that arrive after the delay. Features
that count labels as they arrive (``known_only``, preset ``feedback``) then see them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import xgboost as xgb
from tqdm import tqdm

from features.incremental import KIND_LABEL, KIND_TX, Batch, IncrementalEngine
from features.spec import FeatureSpec, to_ns
from features.stream import with_labels
from training import model as models

DAY_NS = 86_400 * 10**9


def _take(batch: Batch, idx: np.ndarray) -> Batch:
    return Batch(batch.kind[idx], batch.transaction_id[idx], batch.time_ns[idx],
                 {k: v[idx] for k, v in batch.ids.items()},
                 {k: v[idx] for k, v in batch.values.items()})  # fmt: skip


class FeedbackReplay:
    """Replays a history through the stream with daily investigator feedback."""

    def __init__(self, df: pd.DataFrame, spec: FeatureSpec, cards_per_day: int = 100) -> None:
        self.df, self.spec, self.k = df, spec, cards_per_day
        self.engine = IncrementalEngine(spec)
        self.events = with_labels(df, spec)
        is_label = self.events.kind == KIND_LABEL
        self.arrival = self.events.time_ns + np.where(is_label, to_ns(spec.label_delay), 0)
        self.row_of_event = np.full(len(self.events), -1)
        self.row_of_event[~is_label] = np.arange(len(df))
        self.features = np.full((len(df), len(spec.names)), np.nan)
        self.confirmed: set[int] = set()
        self.done = 0  # events applied so far
        self.feedback_labels = 0

    def run_until(self, end: pd.Timestamp, model: Callable[[np.ndarray], np.ndarray]) -> None:
        """Apply every event arriving before ``end``; ``model`` scores each day's features."""
        stop = int(np.searchsorted(self.arrival, end.value, side="left"))
        bar = tqdm(total=stop - self.done, desc="feedback replay", unit="ev", unit_scale=True)
        while self.done < stop:
            day_end = (self.arrival[self.done] // DAY_NS + 1) * DAY_NS
            z = min(int(np.searchsorted(self.arrival, day_end, side="left")), stop)
            idx = np.arange(self.done, z)
            feats, _ = self.engine.process(_take(self.events, idx))
            tx = self.events.kind[idx] == KIND_TX
            rows = self.row_of_event[idx[tx]]
            self.features[rows] = feats[tx]
            if len(rows):
                self._investigate(rows, model(feats[tx]))
            bar.update(z - self.done)
            self.done = z
        bar.close()

    def _investigate(self, rows: np.ndarray, scores: np.ndarray) -> None:
        """Labels of the day's top cards arrive now; confirmed cards are not checked again."""
        day = self.df.iloc[rows]
        cards = day["CUSTOMER_ID"].to_numpy()
        per_card = pd.Series(scores).groupby(cards).max()
        per_card = per_card[~per_card.index.isin(list(self.confirmed))]
        top = per_card.sort_values(ascending=False, kind="stable").index[: self.k]
        checked = np.isin(cards, top)
        fraud = day["TX_FRAUD"].to_numpy()
        self.confirmed |= set(cards[checked & (fraud == 1)].tolist())
        sel = rows[checked]
        labels = Batch(
            kind=np.full(len(sel), KIND_LABEL),
            transaction_id=self.df["TRANSACTION_ID"].to_numpy()[sel],
            time_ns=self.df["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)[sel],
            ids={e.key: self.df[e.key].to_numpy()[sel] for e in self.spec.entities},
            values={c: self.df[c].to_numpy(np.float64)[sel] for c in self.spec.value_columns},
        )
        self.engine.process(labels)
        self.feedback_labels += len(sel)


def scorer(booster: xgb.Booster, columns: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Score rows of the replay's feature matrix with a model trained on ``columns`` of it."""
    return lambda feats: models.predict(booster, feats[:, columns])
