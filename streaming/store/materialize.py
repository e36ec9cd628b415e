"""``fraudstream materialize``: backfill a history -> offline store -> online store.

The backfill gives every transaction's features; per entity they become rows of the offline
store (the entity's state just after each of its events: ``<key>, event_timestamp, features``),
then Feast's ``materialize`` loads each entity's newest row into the online store. A preset with
batch features (lookups) also gets its batch views: the daily snapshots of every as-of day of
the history (:func:`features.batch.snapshots`), loaded with the stream views. Run ``feast apply``
for the profile first (see ``feature_repo/README.md``).

Offline tables: with the ``file`` offline store (profiles local and emulator) each stream view's
parquet file is replaced, and a batch view's directory holds one file per as-of day
(``as_of=YYYY-MM-DD.parquet``, replaced when that day is written again); with any other (gcp:
BigQuery) the rows are appended through ``FeatureStore.write_to_offline_store`` (not exercised by
the tests here). The daily batch job (:mod:`streaming.batch.batch_features`) writes batch views
the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from features import presets
from features.backfill import backfill
from features.batch import DAY_NS, snapshot_days, snapshots
from features.spec import FeatureSpec
from features.table import event_times_ns
from streaming.pseudonymise import Pseudonymiser
from streaming.store.names import (
    EVENT_TIMESTAMP,
    REPO,
    batch_entities,
    batch_offline_dir,
    batch_view_name,
    offline_path,
    profile_yaml,
    stored_entities,
    view_name,
)
from streaming.store.tables import entity_tables
from training.files import read_transactions

PLACEHOLDER = "empty.parquet"
"""The file a batch view's directory holds before any as-of day is written (no rows)."""


def run_materialize(
    inputs: Sequence[str | Path],
    preset: str,
    profile: str = "local",
    repo: str | Path = REPO,
    store: Any = None,
    naive_time_zone: str = "UTC",
) -> dict[str, Any]:
    """Backfill ``inputs``, write the offline tables, materialize; returns a summary.

    When a pseudonymisation key is configured (``$FRAUDSTREAM_ID_KEY``, see
    :mod:`streaming.pseudonymise`) entity keys are pseudonymised as the streaming job does.
    A preset with lookups also writes and materializes its batch views (every as-of day of the
    history); the snapshots are computed once, for both the views and the backfill.

    ``store``: a ready ``feast.FeatureStore`` (else one is built for ``profile`` and ``repo``).
    Raises ValueError if the registry lacks the preset's views (run ``feast apply``).
    """
    spec = presets.get(preset)
    t0 = time.perf_counter()
    df = read_transactions(list(inputs), spec, naive_time_zone=naive_time_zone)
    id_key = pseudonymise_keys(df, spec)
    days = snapshot_days(event_times_ns(df))
    lookups = snapshots(df, spec, days) if spec.lookups else {}
    tables = entity_tables(df, backfill(df, spec, lookups=lookups or None), spec)
    t_backfill = time.perf_counter() - t0
    if store is None:
        store = open_store(profile, repo)
    views = registered_views(store, [view_name(spec, e) for e in stored_entities(spec)])
    batch_views = registered_views(store, [batch_view_name(spec, e) for e in batch_entities(spec)])
    t0 = time.perf_counter()
    rows = write_offline(store, spec, tables)
    batch_rows = write_batch_offline(store, spec, lookups, days) if lookups else {}
    start = min(t[EVENT_TIMESTAMP].min() for t in (*tables.values(), *lookups.values()))
    end = max(t[EVENT_TIMESTAMP].max() for t in (*tables.values(), *lookups.values()))
    store.materialize(
        start_date=start.to_pydatetime(),
        end_date=end.to_pydatetime() + timedelta(seconds=1),
        feature_views=views + batch_views,
    )
    summary: dict[str, Any] = {"preset": spec.name, "transactions": len(df), "id_key": id_key}
    for entity in stored_entities(spec):
        summary[f"{view_name(spec, entity)}_rows"] = rows[entity.name]
        summary[f"{view_name(spec, entity)}_entities"] = tables[entity.name][entity.key].nunique()
    for entity in batch_entities(spec):
        summary[f"{batch_view_name(spec, entity)}_rows"] = batch_rows[entity.name]
    summary["backfill_s"] = round(t_backfill, 2)
    summary["offline_and_materialize_s"] = round(time.perf_counter() - t0, 2)
    return summary


def open_store(profile: str, repo: str | Path = REPO) -> Any:
    """A ``feast.FeatureStore`` on ``repo`` with ``profile``'s yaml (imports Feast: seconds)."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml(profile, repo))


def pseudonymise_keys(df: pd.DataFrame, spec: FeatureSpec) -> str:
    """Replace ``df``'s entity keys (in place) by the streaming job's pseudonyms when a key is
    configured (:meth:`Pseudonymiser.from_env`); returns the key's fingerprint, or
    ``"none (clear ids)"``."""
    ids = Pseudonymiser.from_env()
    if ids is None:
        return "none (clear ids)"
    for entity in spec.entities:
        df[entity.key] = ids.pseudonymise_array(entity.name, df[entity.key].to_numpy())
    return ids.fingerprint


def write_offline(store: Any, spec: FeatureSpec, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Write each entity's rows to its view's batch source; rows written per entity name."""
    written = {}
    for entity in stored_entities(spec):
        table = tables[entity.name].copy()
        table[EVENT_TIMESTAMP] = table[EVENT_TIMESTAMP].dt.tz_localize("UTC")
        if store.config.offline_store.type == "file":
            path = Path(store.repo_path) / offline_path(spec, entity)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_parquet(path, index=False)
        else:
            store.write_to_offline_store(view_name(spec, entity), table)
        written[entity.name] = len(table)
    if store.config.offline_store.type == "file":
        _placeholders(Path(store.repo_path))
    return written


def write_batch_offline(
    store: Any, spec: FeatureSpec, tables: dict[str, pd.DataFrame], days: tuple[int, int]
) -> dict[str, int]:
    """Write each batch view's snapshot rows (:func:`features.batch.snapshots` for the as-of
    midnights ``days``, ns, inclusive); rows written per entity name.

    File offline store: one file ``as_of=YYYY-MM-DD.parquet`` per day of ``days`` in the view's
    directory, replacing that day's file (a day without rows gets an empty one); any other:
    appended with ``write_to_offline_store``. A tqdm bar counts the views' days.
    """
    is_file = store.config.offline_store.type == "file"
    day_list = range(days[0], days[1] + 1, DAY_NS) if is_file else range(1)
    written = {}
    with tqdm(total=len(tables) * len(day_list), desc="batch views", unit="day") as bar:
        for entity in batch_entities(spec):
            name = batch_view_name(spec, entity)
            bar.set_postfix_str(name)
            table = tables[entity.name].copy()
            at = table[EVENT_TIMESTAMP].to_numpy("datetime64[ns]").view(np.int64)
            table[EVENT_TIMESTAMP] = table[EVENT_TIMESTAMP].dt.tz_localize("UTC")
            if not is_file:
                store.write_to_offline_store(name, table)
                bar.update()
            else:
                directory = Path(store.repo_path) / batch_offline_dir(spec, entity)
                directory.mkdir(parents=True, exist_ok=True)
                order = np.argsort(at, kind="stable")  # a day's rows stay in key order
                bounds = np.searchsorted(at[order], [*day_list, days[1] + DAY_NS])
                for day, lo, hi in zip(day_list, bounds[:-1], bounds[1:], strict=True):
                    table.iloc[order[lo:hi]].to_parquet(directory / day_file(day), index=False)
                    bar.update()
                (directory / PLACEHOLDER).unlink(missing_ok=True)
            written[entity.name] = len(table)
    if is_file:
        _placeholders(Path(store.repo_path))
    return written


def day_file(day_ns: int) -> str:
    """The file of one as-of midnight in a batch view's directory: ``as_of=YYYY-MM-DD.parquet``."""
    return f"as_of={datetime.fromtimestamp(day_ns // 10**9, UTC):%Y-%m-%d}.parquet"


def _placeholders(repo: Path) -> None:
    """An empty source for every view of every preset that has none yet: a parquet file for a
    stream view, a directory holding one empty file (:data:`PLACEHOLDER`) for a batch view.

    So that Feast commands over all views (``feast materialize-incremental``) find a source.
    """
    for spec in presets.PRESETS.values():
        for entity in stored_entities(spec):
            path = repo / offline_path(spec, entity)
            if not path.exists():
                _empty_table(entity.key, spec.entity_names(entity), path)
        for entity in batch_entities(spec):
            directory = repo / batch_offline_dir(spec, entity)
            if not any(directory.glob("*.parquet")):
                _empty_table(entity.key, spec.lookup_stored_names(entity), directory / PLACEHOLDER)


def _empty_table(key: str, names: list[str], path: Path) -> None:
    columns = {key: pd.Series(dtype="int64"),
               EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]")}  # fmt: skip
    columns.update({n: pd.Series(dtype="float64") for n in names})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_parquet(path, index=False)


def registered_views(store: Any, names: list[str]) -> list[str]:
    """``names``, after checking that the registry has each view (ValueError: run feast apply)."""
    known = {v.name for v in store.list_feature_views()}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"feature views {missing} are not in the registry of project "
            f"{store.config.project!r}: run `feast apply` for this profile first"
        )
    return names
