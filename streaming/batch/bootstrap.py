"""``fraudstream bootstrap``: replay a history through the job's engine and write every card's
and terminal's state for ``fraudstream run --initial_state``: to a parquet file, to the
Bigtable state table of the job's Feast settings (``--to_store``), or both.

The file format and the reader the job uses are in :mod:`streaming.job.initial_states`; the
state table's layout in :mod:`streaming.store.bigtable.states`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from features import presets
from features.incremental import KIND_TX, IncrementalEngine
from features.spec import CUSTOMER, DEFAULT_MAX_LATENESS, HOUR, TERMINAL, Entity, FeatureSpec
from features.stream import slices, with_labels
from features.table import event_times_ns
from streaming.job.initial_states import META_KEY, StateFileInfo
from streaming.store.feast_store import StoreSettings
from training.files import create, read_transactions

if TYPE_CHECKING:
    from streaming.store.bigtable.states import StateTable

_BATCH = 65_536


def replay_states(
    df: pd.DataFrame,
    spec: FeatureSpec,
    max_lateness: timedelta = DEFAULT_MAX_LATENESS,
    progress: bool = False,
) -> dict[Entity, dict[int, bytes]]:
    """Each entity's exported state after replaying ``df`` (validated, arrival order); a
    progress bar on stderr with ``progress``.

    Labels are applied when they arrive (``label_delay`` after their transaction); those that
    arrive after the last transaction are left to the live feed.
    """
    events = with_labels(df, spec)
    is_tx = np.flatnonzero(events.kind == KIND_TX)
    known = events[: int(is_tx[-1]) + 1] if len(is_tx) else events  # labels due by the end
    engine = IncrementalEngine(spec, max_lateness)
    with tqdm(total=len(known), desc="bootstrap", unit="ev", unit_scale=True,
              disable=not progress) as bar:  # fmt: skip
        for part in slices(known, _BATCH):
            engine.process(part)
            bar.update(len(part))
    return {e: {key: engine.export(e, key) for key in engine.stores[e]} for e in spec.entities}


def write_states(
    path: str | Path,
    states: dict[Entity, dict[int, bytes]],
    spec: FeatureSpec,
    end_ns: int,
    id_key: str = "",
) -> StateFileInfo:
    """Write ``states`` (from :func:`replay_states`) with the metadata the job checks, to a
    local path or a ``gs://`` URI."""
    rows = [(e.name, key, blob) for e, by_key in states.items() for key, blob in by_key.items()]
    info = StateFileInfo(spec.name, list(spec.names), id_key, int(end_ns), len(rows))
    table = pa.table(
        {
            "entity": pa.array([r[0] for r in rows], pa.string()),
            "id": pa.array([r[1] for r in rows], pa.int64()),
            "state": pa.array([r[2] for r in rows], pa.binary()),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(info.__dict__).encode()})
    with create(str(path)) as f:
        pq.write_table(table, f)
    return info


def store_states(
    table: StateTable,
    states: dict[Entity, dict[int, bytes]],
    spec: FeatureSpec,
    end_ns: int,
    id_key: str = "",
    progress: bool = False,
) -> StateFileInfo:
    """Replace the contents of the Bigtable state ``table`` with ``states`` (from
    :func:`replay_states`), then write its metadata row (the facts a state file's metadata
    holds); a progress bar on stderr with ``progress``. Until every state is written the table
    has no metadata row, which the job refuses."""
    rows = sum(len(by_key) for by_key in states.values())
    info = StateFileInfo(spec.name, list(spec.names), id_key, int(end_ns), rows)
    table.replace()
    with tqdm(total=rows, desc=table.table_id, unit="state", unit_scale=True,
              disable=not progress) as bar:  # fmt: skip
        for entity, by_key in states.items():
            table.write(entity, list(by_key), list(by_key.values()), bar.update)
    table.write_info(info.__dict__)
    return info


def bootstrap(
    df: pd.DataFrame,
    spec: FeatureSpec,
    path: str | Path | None,
    ids=None,
    max_lateness: timedelta = DEFAULT_MAX_LATENESS,
    progress: bool = False,
    table: StateTable | None = None,
) -> StateFileInfo:
    """Replay ``df`` (validated) and write its entities' states to ``path`` and, when given,
    to the Bigtable state ``table``, keyed like the job's ids: by ``ids``' pseudonyms (a
    ``Pseudonymiser``), or clear when ``ids`` is None."""
    if path is None and table is None:
        raise ValueError("bootstrap: give a state file path, a state table, or both")
    if ids is not None:
        df = _pseudonymised(df, ids)
    states = replay_states(df, spec, max_lateness, progress)
    end_ns = int(event_times_ns(df).max()) if len(df) else 0
    id_key = ids.fingerprint if ids is not None else ""
    if path is not None:
        info = write_states(path, states, spec, end_ns, id_key)
    if table is not None:
        info = store_states(table, states, spec, end_ns, id_key, progress)
    return info


def _pseudonymised(df: pd.DataFrame, ids) -> pd.DataFrame:
    """``df`` with card and terminal ids mapped by ``ids`` (a ``Pseudonymiser``), as the job
    maps them before they reach the entity states."""
    return df.assign(
        **{
            CUSTOMER.key: ids.customers(df[CUSTOMER.key].to_numpy()),
            TERMINAL.key: ids.terminals(df[TERMINAL.key].to_numpy()),
        }
    )


def run_bootstrap(
    inputs: list[str],
    output: str | None,
    preset: str,
    pseudonymise_ids: bool = True,
    id_key_secret: str | None = None,
    max_lateness_hours: float = DEFAULT_MAX_LATENESS / HOUR,
    store: StoreSettings | None = None,
    naive_time_zone: str = "UTC",
) -> StateFileInfo:
    """``fraudstream bootstrap``: replay a history, write every entity's state for ``run
    --initial_state`` to ``output`` and/or the state table of ``store`` (see
    :mod:`streaming.job.initial_states`); progress on stderr."""
    from streaming.job.pipeline import launch_pseudonymiser
    from streaming.store.bigtable.states import StateTable

    if output is None and store is None:
        raise ValueError("give --output FILE, --to_store, or both")
    spec = presets.get(preset)
    table = None
    if store is not None:  # before the replay: a profile without Bigtable, an unreachable one
        table = StateTable.of(store.repo_config())
        table.read_info()
    df = read_transactions(inputs, spec, naive_time_zone=naive_time_zone)
    if df.empty:  # a state file "up to 1970" would start a job from nothing all the same
        raise ValueError(f"{' + '.join(map(str, inputs))}: no transactions to bootstrap from")
    ids = launch_pseudonymiser(id_key_secret) if pseudonymise_ids else None
    lateness = timedelta(hours=max_lateness_hours)
    info = bootstrap(df, spec, output, ids, lateness, progress=True, table=table)
    id_key, end_ns = info.id_key, info.end_ns
    targets = ([output] if output else []) + ([f"Bigtable {table.where}"] if table else [])
    print(
        f"wrote the states of {info.entities:,} entities ({spec.name}, "
        f"{'key ' + id_key if id_key else 'clear ids'}) up to {pd.Timestamp(end_ns)} to "
        + " and ".join(targets)
    )
    return info
