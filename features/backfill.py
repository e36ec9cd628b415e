"""Backfill: a whole history in, every feature of every event out, as seen at its own time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import kernels
from features.plan import EntityPlan, fill_derived
from features.spec import FeatureSpec
from features.table import event_times_ns


def entity_order(
    ids: np.ndarray, times: np.ndarray, txids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by (entity, time, transaction id) and each entity's start in that order.

    The transaction id is the arrival order. Rows already in (time, id) order, the usual case,
    take an O(n) counting sort; others a lexsort.
    """
    codes, uniques = pd.factorize(ids)
    in_order = bool(
        np.all((times[1:] > times[:-1]) | ((times[1:] == times[:-1]) & (txids[1:] > txids[:-1])))
    )
    if in_order:
        return kernels.counting_order(codes.astype(np.int64), len(uniques))
    order = np.lexsort((txids, times, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1], True])
    return order, starts.astype(np.int64)


def compute(spec: FeatureSpec, times: np.ndarray, txids: np.ndarray, ids: dict[str, np.ndarray],
            values: dict[str, np.ndarray]) -> np.ndarray:  # fmt: skip
    """Feature matrix (rows = events, columns = ``spec.names``) from column arrays.

    ``ids`` maps entity key columns to ids, ``values`` numeric columns to float64 values.
    """
    out = np.empty((len(times), len(spec.names)), np.float64)
    for entity in spec.entities:
        plan = EntityPlan.build(spec, entity)
        if not plan.n_out:
            continue
        cols = [values[c] for c in plan.columns] or [np.zeros(len(times))]
        vals = np.ascontiguousarray(np.column_stack(cols), np.float64)
        order, starts = entity_order(ids[entity.key], times, txids)
        kernels.backfill_entity(
            order, starts, times, vals,
            plan.win, plan.dly, plan.fslot, plan.fcol, plan.fop, plan.since_prev,
            out, plan.offset,
        )  # fmt: skip
    fill_derived(spec, out, times, values)
    return out


def backfill(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Features of every row of ``df`` (validated by :func:`features.table.validate`).

    Returns a frame with ``TRANSACTION_ID`` and one float64 column per ``spec.names``, in the
    row order of ``df``. Labels are taken as known: delayed aggregates use them once they are
    ``delay`` old, exactly what the stream sees when each label arrives within its delay.
    """
    times = event_times_ns(df)
    txids = df["TRANSACTION_ID"].to_numpy(np.int64)
    ids = {e.key: df[e.key].to_numpy(np.int64) for e in spec.entities}
    values = {c: df[c].to_numpy(np.float64) for c in spec.value_columns}
    matrix = compute(spec, times, txids, ids, values)
    out = pd.DataFrame(matrix, columns=spec.names, index=df.index, copy=False)
    out.insert(0, "TRANSACTION_ID", txids)
    return out
