"""Backfill: a whole history in, every feature of every event out, as seen at its own time."""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd

from features import kernels
from features.batch import lookup_columns
from features.plan import EntityPlan, fill_derived
from features.spec import FeatureSpec
from features.table import event_times_ns


def group_keys(ids: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(keys, lo, n_groups)``: each row's group is ``keys - lo``, in ``range(n_groups)``.

    Ids spanning a range not much wider than their count are their own keys (a group per
    value in the range, empty ones cost nothing); others are factorized.
    """
    ids = np.ascontiguousarray(ids, np.int64)
    if len(ids) == 0:
        return ids, 0, 0
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < len(ids) + 65_536:
        return ids, lo, hi - lo + 1
    codes, uniques = pd.factorize(ids)
    return codes.astype(np.int64), 0, len(uniques)


def compute(
    spec: FeatureSpec,
    times: np.ndarray,
    txids: np.ndarray,
    ids: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
) -> np.ndarray:
    """Feature matrix (rows = events, columns = ``spec.names``, column-major) from column arrays.

    ``ids`` maps entity key columns to ids, ``values`` numeric columns to float64 values. Each
    entity's events are taken in (time, transaction id) order: the id is the arrival order.
    """
    if spec.needs_label_arrivals:
        raise ValueError(
            f"spec {spec.name} has features that count labels when they arrive (known_only): "
            "a history without label arrival times cannot give them; use features.stream"
        )
    n = len(times)
    out = np.empty((n, len(spec.names)), np.float64, order="F")  # column writes stay sequential
    plans = [p for p in (EntityPlan.build(spec, e) for e in spec.entities) if p.n_out]
    in_order = kernels.in_order(times, txids)
    order = np.empty(0, np.int64) if in_order else np.lexsort((txids, times))
    # scratch shared by the entities (fresh memory is costly: see kernels.backfill_entity)
    tv, rows = np.empty(n, np.int64), np.empty(n, np.int64)
    blk = np.empty(n * max((p.n_out for p in plans), default=1))
    vv_all = np.empty(n * max((p.n_cols for p in plans), default=1))
    for plan in plans:
        cols = [values[c] for c in plan.columns] or [np.zeros(n)]
        vals = np.ascontiguousarray(np.column_stack(cols), np.float64)
        vv = vv_all[: vals.size].reshape(vals.shape)
        keys, lo, n_groups = group_keys(ids[plan.entity.key])
        starts = kernels.group_rows(
            keys, lo, n_groups, order, times, vals, tv, vv, rows, numba.get_num_threads()
        )
        kernels.backfill_entity(
            starts,
            tv,
            vv,
            rows,
            plan.win,
            plan.dly,
            plan.walks,
            len(plan.fslot),
            plan.since_prev,
            blk[: n * plan.n_out].reshape(n, plan.n_out),
            out,
            plan.offset,
        )
    fill_derived(spec, out, times, values)
    return out


def backfill(
    df: pd.DataFrame, spec: FeatureSpec, lookups: dict[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """Features of every row of ``df`` (validated by :func:`features.table.validate`).

    Returns a frame with ``TRANSACTION_ID`` and one float64 column per ``spec.names``, in the
    row order of ``df``. Labels are taken as known: delayed aggregates use them once they are
    ``delay`` old, exactly what the stream sees when each label arrives within its delay.
    The spec's batch features are joined point in time from ``lookups`` (snapshot tables,
    :func:`features.batch.snapshots`; default: those of ``df`` itself).
    """
    times = event_times_ns(df)
    txids = df["TRANSACTION_ID"].to_numpy(np.int64)
    ids = {e.key: df[e.key].to_numpy(np.int64) for e in spec.entities}
    values = {c: df[c].to_numpy(np.float64) for c in spec.value_columns}
    matrix = compute(spec, times, txids, ids, values)
    if spec.lookups:
        matrix[:, len(spec.stream_names) :] = lookup_columns(df, spec, lookups)
    out = pd.DataFrame(matrix, columns=spec.names, index=df.index, copy=False)
    out.insert(0, "TRANSACTION_ID", txids)
    return out
