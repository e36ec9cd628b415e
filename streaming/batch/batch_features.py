"""``fraudstream batch-features``: the daily batch job of a preset's lookups, on one machine.

Reads the history, computes the snapshots (:func:`features.batch.snapshots`) of the ``days``
as-of midnights ending at ``as_of``, writes them to the offline store of the Feast profile
(:func:`streaming.store.materialize.write_batch_offline`: one ``as_of=YYYY-MM-DD.parquet`` per
day in each batch view's directory, replaced when a day is run again; BigQuery: appended) and,
with ``materialize``, loads each entity's newest row of those days into the online store.

Run daily after midnight with the history up to it; the Beam version of the same computation
for Dataflow is :mod:`streaming.batch.batch_features_beam`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from features import presets
from features.batch import DAY_NS, snapshot_days, snapshots
from features.spec import FeatureSpec
from features.table import event_times_ns
from streaming.store.materialize import (
    open_store,
    pseudonymise_keys,
    registered_views,
    write_batch_offline,
)
from streaming.store.names import REPO, batch_entities, batch_view_name
from training.files import read_transactions


def run_batch_features(
    inputs: Sequence[str | Path],
    preset: str = "enriched",
    as_of: str | None = None,
    days: int = 1,
    profile: str = "local",
    repo: str | Path = REPO,
    materialize: bool = False,
    store: Any = None,
    naive_time_zone: str = "UTC",
) -> dict[str, Any]:
    """Compute and write the batch views of ``preset`` for ``days`` as-of midnights ending at
    ``as_of`` (a date, ``YYYY-MM-DD``; default: the day after the history's last transaction);
    with ``materialize``, load them into the online store. Returns a summary.

    Entity keys are pseudonymised as the streaming job does when ``$FRAUDSTREAM_ID_KEY`` is set.
    ``store``: a ready ``feast.FeatureStore`` (else one is built for ``profile`` and ``repo``).
    Raises ValueError for a preset without lookups, a bad ``as_of`` or ``days``, and a registry
    without the preset's batch views (run ``feast apply``).
    """
    spec = presets.get(preset)
    require_lookups(spec)
    as_of_days(0, as_of, days)  # refuse bad values before reading anything
    if store is None:
        store = open_store(profile, repo)
    views = registered_views(store, [batch_view_name(spec, e) for e in batch_entities(spec)])
    t0 = time.perf_counter()
    df = read_transactions(list(inputs), spec, naive_time_zone=naive_time_zone)
    id_key = pseudonymise_keys(df, spec)
    first, last = as_of_days(snapshot_days(event_times_ns(df))[1], as_of, days)
    tables = snapshots(df, spec, (first, last))
    t_compute = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = write_batch_offline(store, spec, tables, (first, last))
    if materialize:
        store.materialize(
            start_date=pd.Timestamp(first).to_pydatetime(),
            end_date=pd.Timestamp(last).to_pydatetime() + timedelta(seconds=1),
            feature_views=views,
        )
    summary: dict[str, Any] = {"preset": spec.name, "transactions": len(df), "id_key": id_key}
    summary["as_of"] = f"{pd.Timestamp(first):%Y-%m-%d} .. {pd.Timestamp(last):%Y-%m-%d}"
    for entity in batch_entities(spec):
        name = batch_view_name(spec, entity)
        summary[f"{name}_rows"] = rows[entity.name]
        summary[f"{name}_entities"] = tables[entity.name][entity.key].nunique()
    summary["materialized"] = materialize
    summary["compute_s"] = round(t_compute, 2)
    summary["offline_and_materialize_s"] = round(time.perf_counter() - t0, 2)
    return summary


def require_lookups(spec: FeatureSpec) -> None:
    """ValueError naming the preset when it has no batch features (nothing to compute)."""
    if not spec.lookups:
        with_lookups = [name for name, s in presets.PRESETS.items() if s.lookups]
        raise ValueError(
            f"preset {spec.name!r} has no batch features (lookups); presets with them: "
            f"{with_lookups}"
        )


def as_of_days(default_ns: int, as_of: str | None, days: int) -> tuple[int, int]:
    """``(first, last)`` as-of midnights (ns): ``days`` of them ending at ``as_of`` (a date,
    ``YYYY-MM-DD``), or at ``default_ns`` without one. ValueError naming ``as_of`` or ``days``
    for a value that is not a date or not positive."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if as_of is None:
        return default_ns - (days - 1) * DAY_NS, default_ns
    try:
        stamp = pd.Timestamp(as_of)
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is not None or stamp != stamp.normalize():
        raise ValueError(f"as_of must be a date (YYYY-MM-DD), got {as_of!r}")
    return stamp.value - (days - 1) * DAY_NS, stamp.value
