"""Where the backfill's time goes: its steps timed one by one, beside its memory floor.

The steps are those of :func:`features.backfill.compute`, called here one at a time on the same
arrays (fastest of ``repeat`` runs each): the order check, per entity kind its sweeps
(:mod:`features.sweep`, on the kernels' threads) and, where the spec has walks a sweep cannot do,
the grouped walks (sort and walks, :func:`features.kernels.backfill_entity`), then the raw,
calendar and ratio columns and the output frame. Run alone:
``python -m bench.backfill_profile [--preset NAME]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from features import kernels, presets
from features.backfill import Sweeps, as_frame, backfill, group_keys, walk_grouped
from features.plan import EntityPlan, fill_derived
from features.spec import FeatureSpec
from features.table import event_times_ns

Metrics = dict[str, float | int | str | None]


def _ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(1e3 * best, 1)


def write_floor(n: int, spec: FeatureSpec) -> np.ndarray:
    """The backfill's memory floor: allocate its output (the transaction id and every feature,
    column-major, as the backfill lays it out) and write each value once."""
    return np.full((n, 1 + len(spec.names)), 1.0, order="F")


def backfill_profile(df: pd.DataFrame, spec: FeatureSpec, repeat: int = 5) -> Metrics:
    """Milliseconds of each backfill step over ``df`` (validated), keys ``backfill_<step>_ms``."""
    n = len(df)
    backfill(df, spec)  # compile / load the kernels
    times, txids = event_times_ns(df), df["TRANSACTION_ID"].to_numpy(np.int64)
    values = {c: df[c].to_numpy(np.float64) for c in spec.value_columns}
    out = np.empty((n, len(spec.names)), np.float64, order="F")
    result: Metrics = {
        "backfill_whole_ms": _ms(lambda: backfill(df, spec), repeat),
        "backfill_write_floor_ms": _ms(lambda: write_floor(n, spec), repeat),
        "backfill_order_check_ms": _ms(lambda: kernels.in_order(times, txids), repeat),
    }
    in_order = kernels.in_order(times, txids)
    order = np.empty(0, np.int64) if in_order else np.lexsort((txids, times))
    for plan in (p for p in (EntityPlan.build(spec, e) for e in spec.entities) if p.n_out):
        keys, lo, n_groups = group_keys(df[plan.entity.key].to_numpy(np.int64))
        sweeps = Sweeps(times, order, values)
        walks = sweeps.add(plan, keys, lo, n_groups)
        name = plan.entity.name
        result[f"backfill_{name}_sweeps_ms"] = _ms(lambda s=sweeps: s.run(out), repeat)
        if len(walks):
            grouped = [(plan, walks, keys, lo, n_groups)]
            result[f"backfill_{name}_grouped_ms"] = _ms(
                lambda g=grouped: walk_grouped(g, times, order, values, out), repeat
            )
    result["backfill_derived_ms"] = _ms(lambda: fill_derived(spec, out, times, values), repeat)
    result["backfill_frame_ms"] = _ms(lambda: as_frame(df.index, txids, out, spec.names), repeat)
    return result


def main(argv: list[str] | None = None) -> int:
    from bench.run import DEFAULT_DATA
    from features.table import read_transactions

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=presets.BASELINE.name, choices=sorted(presets.PRESETS))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    spec = presets.get(args.preset)
    df = read_transactions([args.data], presets.DEFAULT)
    print(json.dumps(backfill_profile(df, spec), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
