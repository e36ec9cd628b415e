"""``fraudstream bootstrap``: replay a history through the job's engine and write every card's
and terminal's state for ``fraudstream run --initial_state``.

The file format and the reader the job uses are in :mod:`streaming.job.initial_states`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tqdm import tqdm

from features import presets
from features.incremental import KIND_TX, IncrementalEngine
from features.spec import CUSTOMER, DEFAULT_MAX_LATENESS, HOUR, TERMINAL, Entity, FeatureSpec
from features.stream import slices, with_labels
from features.table import event_times_ns, read_transactions
from streaming.job.initial_states import META_KEY, StateFileInfo

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
    path = str(path)
    if FileSystems.get_scheme(path) in (None, "file"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        pq.write_table(table, f)
    return info


def bootstrap(
    df: pd.DataFrame,
    spec: FeatureSpec,
    path: str | Path,
    ids=None,
    max_lateness: timedelta = DEFAULT_MAX_LATENESS,
    progress: bool = False,
) -> StateFileInfo:
    """Replay ``df`` (validated) and write its entities' states to ``path``, keyed like the
    job's ids: by ``ids``' pseudonyms (a ``Pseudonymiser``), or clear when ``ids`` is None."""
    if ids is not None:
        df = _pseudonymised(df, ids)
    states = replay_states(df, spec, max_lateness, progress)
    end_ns = int(event_times_ns(df).max()) if len(df) else 0
    return write_states(path, states, spec, end_ns, ids.fingerprint if ids is not None else "")


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
    output: str,
    preset: str,
    pseudonymise_ids: bool = True,
    id_key_secret: str | None = None,
    max_lateness_hours: float = DEFAULT_MAX_LATENESS / HOUR,
) -> StateFileInfo:
    """``fraudstream bootstrap``: replay a history, write every entity's state for ``run
    --initial_state`` (see :mod:`streaming.job.initial_states`); progress on stderr."""
    from streaming.job.pipeline import launch_pseudonymiser

    spec = presets.get(preset)
    df = read_transactions(inputs, spec)
    ids = launch_pseudonymiser(id_key_secret) if pseudonymise_ids else None
    lateness = timedelta(hours=max_lateness_hours)
    info = bootstrap(df, spec, output, ids, lateness, progress=True)
    id_key, end_ns = info.id_key, info.end_ns
    print(
        f"wrote the states of {info.entities:,} entities ({spec.name}, "
        f"{'key ' + id_key if id_key else 'clear ids'}) up to {pd.Timestamp(end_ns)} to {output}"
    )
    return info
