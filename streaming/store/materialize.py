"""``fraudstream materialize``: backfill a history -> offline store -> online store.

The backfill gives every transaction's features; per entity they become rows of the offline
store (the entity's state just after each of its events: ``<key>, event_timestamp, features``),
then Feast's ``materialize`` loads each entity's newest row into the online store. Run
``feast apply`` for the profile first (see ``feature_repo/README.md``).

Offline tables: with the ``file`` offline store (profiles local and emulator) each view's parquet
file is replaced; with any other (gcp: BigQuery) the rows are appended through
``FeatureStore.write_to_offline_store`` (not exercised by the tests here).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from features import presets
from features.backfill import backfill
from features.spec import FeatureSpec
from features.table import read_transactions
from streaming.pseudonymise import Pseudonymiser
from streaming.store.names import (
    EVENT_TIMESTAMP,
    REPO,
    offline_path,
    profile_yaml,
    stored_entities,
    view_name,
)
from streaming.store.tables import entity_tables


def run_materialize(
    inputs: Sequence[str | Path],
    preset: str,
    profile: str = "local",
    repo: str | Path = REPO,
    store: Any = None,
) -> dict[str, Any]:
    """Backfill ``inputs``, write the offline tables, materialize; returns a summary.

    When a pseudonymisation key is configured (``$FRAUDSTREAM_ID_KEY``, see
    :mod:`streaming.pseudonymise`) entity keys are pseudonymised as the streaming job does.

    ``store``: a ready ``feast.FeatureStore`` (else one is built for ``profile`` and ``repo``).
    Raises ValueError if the registry lacks the preset's views (run ``feast apply``).
    """
    spec = presets.get(preset)
    t0 = time.perf_counter()
    df = read_transactions(list(inputs), spec)
    ids = Pseudonymiser.from_env()  # the streaming job's keys, when it pseudonymises
    if ids is not None:
        for entity in stored_entities(spec):
            df[entity.key] = ids.pseudonymise_array(entity.name, df[entity.key].to_numpy())
    tables = entity_tables(df, backfill(df, spec), spec)
    t_backfill = time.perf_counter() - t0
    if store is None:
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml(profile, repo))
    views = _registered_views(store, spec)
    t0 = time.perf_counter()
    rows = write_offline(store, spec, tables)
    start = min(t[EVENT_TIMESTAMP].min() for t in tables.values())
    end = max(t[EVENT_TIMESTAMP].max() for t in tables.values()) + timedelta(seconds=1)
    store.materialize(
        start_date=start.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=views
    )
    summary: dict[str, Any] = {"preset": spec.name, "transactions": len(df)}
    summary["id_key"] = ids.fingerprint if ids is not None else "none (clear ids)"
    for entity in stored_entities(spec):
        summary[f"{view_name(spec, entity)}_rows"] = rows[entity.name]
        summary[f"{view_name(spec, entity)}_entities"] = tables[entity.name][entity.key].nunique()
    summary["backfill_s"] = round(t_backfill, 2)
    summary["offline_and_materialize_s"] = round(time.perf_counter() - t0, 2)
    return summary


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
        _placeholders(Path(store.repo_path), spec)
    return written


def _placeholders(repo: Path, done: FeatureSpec) -> None:
    """An empty parquet file for every other preset's view that has none yet.

    So that Feast commands over all views (``feast materialize-incremental``) find a source.
    """
    for spec in presets.PRESETS.values():
        for entity in stored_entities(spec) if spec is not done else ():
            path = repo / offline_path(spec, entity)
            if path.exists():
                continue
            columns = {entity.key: pd.Series(dtype="int64"),
                       EVENT_TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]")}  # fmt: skip
            columns.update({n: pd.Series(dtype="float64") for n in spec.entity_names(entity)})
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(columns).to_parquet(path, index=False)


def _registered_views(store: Any, spec: FeatureSpec) -> list[str]:
    names = [view_name(spec, e) for e in stored_entities(spec)]
    known = {v.name for v in store.list_feature_views()}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"feature views {missing} are not in the registry of project "
            f"{store.config.project!r}: run `feast apply` for this profile first"
        )
    return names
