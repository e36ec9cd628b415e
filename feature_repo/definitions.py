"""Feast definitions of fraudstream, generated from the feature spec (``features/presets.py``).

For every preset and entity: a feature view whose Float64 schema is ``spec.entity_names(entity)``
in model order, fed online by a push source (what the stream writes) and offline by a batch
source (parquet under ``data/offline/``, or a BigQuery table ``$FRAUDSTREAM_BQ_DATASET.<view>``
when that variable is set: the gcp profile); one feature service per preset. A preset with
batch features also has, per entity, a batch view of ``spec.lookup_stored_names(entity)`` fed
by the daily batch job's snapshots (offline only; ``feast materialize`` loads them online).
Names come from ``streaming.store.names``; no feature name is typed here.
"""

from __future__ import annotations

import os

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_source import DataSource
from feast.types import Float64, Int64

from features import presets
from features.spec import Entity as SpecEntity
from features.spec import FeatureSpec
from streaming.store.names import (
    EVENT_TIMESTAMP,
    batch_entities,
    batch_offline_dir,
    batch_ttl,
    batch_view_name,
    feature_ttl,
    offline_path,
    push_source_name,
    service_name,
    stored_entities,
    view_name,
)

BQ_DATASET_ENV = "FRAUDSTREAM_BQ_DATASET"


def entity(spec_entity: SpecEntity) -> Entity:
    """The Feast entity of a spec entity: named ``customer``, joined on ``CUSTOMER_ID``."""
    return Entity(
        name=spec_entity.name,
        join_keys=[spec_entity.key],
        value_type=ValueType.INT64,
        description=f"keyed by {spec_entity.key} (int64 id)",
    )


def batch_source(spec: FeatureSpec, spec_entity: SpecEntity, bq_dataset: str | None) -> DataSource:
    """Backfilled rows of the view: parquet in the repo, or BigQuery ``<dataset>.<view>``."""
    name = f"{view_name(spec, spec_entity)}_batch"
    if bq_dataset:
        from feast import BigQuerySource

        return BigQuerySource(
            name=name,
            table=f"{bq_dataset}.{view_name(spec, spec_entity)}",
            timestamp_field=EVENT_TIMESTAMP,
        )
    return FileSource(
        name=name, path=offline_path(spec, spec_entity), timestamp_field=EVENT_TIMESTAMP
    )


def definitions(spec: FeatureSpec, bq_dataset: str | None = None) -> list[object]:
    """Entities, sources, views and the feature service of one preset."""
    objects: list[object] = []
    views = []
    for spec_entity in stored_entities(spec):
        feast_entity = entity(spec_entity)
        push = PushSource(
            name=push_source_name(spec, spec_entity),
            batch_source=batch_source(spec, spec_entity, bq_dataset),
        )
        view = FeatureView(
            name=view_name(spec, spec_entity),
            entities=[feast_entity],
            ttl=feature_ttl(spec, spec_entity),
            schema=[
                Field(name=spec_entity.key, dtype=Int64),
                *(Field(name=n, dtype=Float64) for n in spec.entity_names(spec_entity)),
            ],
            source=push,
            online=True,
            tags={"preset": spec.name, "spec_fingerprint": spec.fingerprint()},
        )
        objects += [feast_entity, push, view]
        views.append(view)
    for spec_entity in batch_entities(spec):
        if spec_entity not in stored_entities(spec):
            objects.append(entity(spec_entity))
        objects.append(batch_view(spec, spec_entity, bq_dataset))
    objects.append(
        FeatureService(
            name=service_name(spec),
            features=views,
            description=f"per-entity inputs of the model, preset {spec.name}",
            tags={"spec_fingerprint": spec.fingerprint()},
        )
    )
    return objects


def batch_view(spec: FeatureSpec, spec_entity: SpecEntity, bq_dataset: str | None) -> FeatureView:
    """The view of ``spec_entity``'s batch features: daily snapshots, looked up by the stream
    (not in the feature service: the stream derives deviations from them)."""
    name = batch_view_name(spec, spec_entity)
    if bq_dataset:
        from feast import BigQuerySource

        source: DataSource = BigQuerySource(
            name=f"{name}_batch", table=f"{bq_dataset}.{name}", timestamp_field=EVENT_TIMESTAMP
        )
    else:
        source = FileSource(
            name=f"{name}_batch",
            path=batch_offline_dir(spec, spec_entity),
            timestamp_field=EVENT_TIMESTAMP,
        )
    return FeatureView(
        name=name,
        entities=[entity(spec_entity)],
        ttl=batch_ttl(),
        schema=[
            Field(name=spec_entity.key, dtype=Int64),
            *(Field(name=n, dtype=Float64) for n in spec.lookup_stored_names(spec_entity)),
        ],
        source=source,
        online=True,
        tags={"preset": spec.name, "spec_fingerprint": spec.fingerprint(), "kind": "batch"},
    )


def all_definitions(bq_dataset: str | None = None) -> list[object]:
    """Every preset's objects; an entity shared by presets appears once."""
    objects: list[object] = []
    seen: set[tuple[type, str]] = set()
    for spec in presets.PRESETS.values():
        for obj in definitions(spec, bq_dataset):
            key = (type(obj), obj.name)  # type: ignore[attr-defined]
            if key not in seen:
                seen.add(key)
                objects.append(obj)
    return objects


# `feast apply` collects Feast objects bound to module-level names, so bind each one.
for _obj in all_definitions(os.environ.get(BQ_DATASET_ENV) or None):
    globals()[f"{type(_obj).__name__}_{_obj.name}"] = _obj  # type: ignore[attr-defined]
