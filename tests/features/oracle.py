"""A brute-force feature computation: an independent oracle for the kernels (slow, obvious)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.plan import calendar
from features.spec import Aggregate, FeatureSpec, Op, to_ns


def _aggregate(agg: Aggregate, values: np.ndarray) -> float:
    if agg.op is Op.COUNT:
        return float(len(values))
    if len(values) == 0:
        return np.nan if agg.op in (Op.MIN, Op.MAX) else 0.0
    return float(
        {Op.SUM: np.sum, Op.MEAN: np.mean, Op.STD: np.std, Op.MIN: np.min, Op.MAX: np.max}[agg.op](
            values
        )
    )


def oracle(df: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Features of each row of ``df`` (sorted by arrival = TRANSACTION_ID) by scanning history."""
    times = df["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64)
    out = np.empty((len(df), len(spec.names)))
    names = spec.names
    for i in range(len(df)):
        row = {}
        for col in spec.raw:
            row[col.name] = df[col.name].iloc[i]
        for cal in spec.calendar:
            row[cal.value] = calendar(cal, times[i : i + 1])[0]
        for entity in spec.entities:
            same = df[entity.key].to_numpy() == df[entity.key].iloc[i]
            arrived = np.arange(len(df)) <= i
            for agg in spec.entity_aggregates(entity):
                hi = times[i] - to_ns(agg.delay)
                lo = hi - to_ns(agg.window)
                # delayed windows end before the event, so later arrivals there are older events
                mask = same & (times > lo) & (times <= hi) & (arrived | (to_ns(agg.delay) > 0))
                order = np.lexsort((df["TRANSACTION_ID"].to_numpy()[mask], times[mask]))
                vals = df[agg.column.name].to_numpy(np.float64)[mask][order]
                row[agg.name(spec.label_delay)] = _aggregate(agg, vals)
            if spec.entity_since_previous(entity):
                prev = times[same & (np.arange(len(df)) < i)]
                name = f"{entity.key}_SECONDS_SINCE_PREV_TX"
                row[name] = (times[i] - prev.max()) / 1e9 if len(prev) else np.nan
        for ratio in spec.ratios:
            denom = row[ratio.aggregate.name(spec.label_delay)]
            row[ratio.name(spec.label_delay)] = (
                df[ratio.column.name].iloc[i] / denom if denom != 0 else np.nan
            )
        out[i] = [row[n] for n in names]
    return out
