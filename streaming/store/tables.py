"""Per-entity feature tables from events and their features: what the offline store holds and
what a bulk write sends."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.spec import FeatureSpec
from streaming.store.base import EntityBatch
from streaming.store.names import EVENT_TIMESTAMP, stored_entities


def entity_tables(
    events: pd.DataFrame, features: pd.DataFrame, spec: FeatureSpec, latest_only: bool = False
) -> dict[str, pd.DataFrame]:
    """Per entity name, its feature rows: ``<key>, event_timestamp, *spec.entity_names(entity)``.

    ``events`` has ``TRANSACTION_ID``, ``TX_DATETIME`` and the entity keys; ``features`` has
    ``TRANSACTION_ID`` and the entity features (a backfill or stream output). A row is the
    entity's state just after the event; of events of one entity at the same time only the
    last to arrive (highest ``TRANSACTION_ID``) is kept. ``latest_only``: one row per entity,
    its newest. Rows are ordered by key, then time.
    """
    cols = ["TRANSACTION_ID", "TX_DATETIME", *(e.key for e in spec.entities)]
    same_rows = len(events) == len(features) and np.array_equal(
        events["TRANSACTION_ID"].to_numpy(), features["TRANSACTION_ID"].to_numpy()
    )
    if same_rows:
        merged = pd.concat([events[cols].reset_index(drop=True),
                            features.drop(columns="TRANSACTION_ID").reset_index(drop=True)],
                           axis=1)  # fmt: skip
    else:
        merged = events[cols].merge(features, on="TRANSACTION_ID", how="inner", validate="1:1")
    out = {}
    for entity in stored_entities(spec):
        names = spec.entity_names(entity)
        part = merged[[entity.key, "TX_DATETIME", "TRANSACTION_ID", *names]]
        part = part.sort_values([entity.key, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")
        subset = [entity.key] if latest_only else [entity.key, "TX_DATETIME"]
        part = part.drop_duplicates(subset=subset, keep="last")
        part = part.drop(columns="TRANSACTION_ID").rename(columns={"TX_DATETIME": EVENT_TIMESTAMP})
        out[entity.name] = part.reset_index(drop=True)
    return out


def entity_batches(frame: pd.DataFrame, spec: FeatureSpec) -> list[EntityBatch]:
    """The newest row per entity of a frame of events with their features (what to write).

    ``frame`` has ``TRANSACTION_ID``, ``TX_DATETIME``, the entity keys and the entity features.
    """
    names = [n for e in stored_entities(spec) for n in spec.entity_names(e)]
    tables = entity_tables(frame, frame[["TRANSACTION_ID", *names]], spec, latest_only=True)
    return [
        EntityBatch(
            entity=e,
            ids=tables[e.name][e.key].to_numpy(np.int64),
            event_times=tables[e.name][EVENT_TIMESTAMP].to_numpy("datetime64[ns]"),
            values=tables[e.name][spec.entity_names(e)].to_numpy(np.float64),
        )
        for e in stored_entities(spec)
    ]
