"""Names of the Feast objects, derived from the feature spec (no Feast import).

Per preset and entity one feature view (``customer_features`` for the default preset,
``customer_features_baseline`` for the others), its push source ``<view>_push`` and parquet
batch source ``data/offline/<view>.parquet``, and one feature service per preset
(``model_inputs``, ``model_inputs_baseline``) with the model's entity inputs. A preset with
batch features (lookups) has per entity a batch view ``<entity>_batch_features[_<preset>]``
whose offline rows are daily snapshot files in ``data/offline/<view>/``.
``feature_repo/definitions.py`` builds the objects from these names.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from features.batch import LOOKUP_TTL, lookup_entities
from features.spec import Entity, FeatureSpec

REPO = Path(__file__).resolve().parents[2] / "feature_repo"


PROFILES = ("local", "emulator", "gcp")


EVENT_TIMESTAMP = "event_timestamp"


DEFAULT_PRESET = "default"


def _suffix(spec: FeatureSpec) -> str:
    return "" if spec.name == DEFAULT_PRESET else f"_{spec.name}"


def view_name(spec: FeatureSpec, entity: Entity) -> str:
    """``customer_features`` (default preset) or ``customer_features_<preset>``."""
    return f"{entity.name}_features{_suffix(spec)}"


def push_source_name(spec: FeatureSpec, entity: Entity) -> str:
    return f"{view_name(spec, entity)}_push"


def service_name(spec: FeatureSpec) -> str:
    """The feature service of the model's per-entity inputs."""
    return f"model_inputs{_suffix(spec)}"


def offline_path(spec: FeatureSpec, entity: Entity) -> str:
    """The view's parquet batch source, relative to the feature repository."""
    return f"data/offline/{view_name(spec, entity)}.parquet"


def feature_ttl(spec: FeatureSpec, entity: Entity) -> timedelta:
    """How long a stored value is served: the entity's horizon (longest window + delay).

    Past it every window of the entity has moved beyond the value's events.
    """
    return spec.horizon(entity)


def stored_entities(spec: FeatureSpec) -> list[Entity]:
    """The spec's entities that have features to store, in model order."""
    return [e for e in spec.entities if spec.entity_names(e)]


def profile_yaml(profile: str, repo: Path | str = REPO) -> Path:
    """The feature_store.yaml of ``profile``: ``local`` is the repo's own, others in profiles/."""
    if profile not in PROFILES:
        raise ValueError(f"unknown feature store profile {profile!r}; choose from {PROFILES}")
    repo = Path(repo)
    return (
        repo / "feature_store.yaml" if profile == "local" else repo / "profiles" / f"{profile}.yaml"
    )


def batch_view_name(spec: FeatureSpec, entity: Entity) -> str:
    """``customer_batch_features`` (default preset) or ``customer_batch_features_<preset>``."""
    return f"{entity.name}_batch_features{_suffix(spec)}"


def batch_offline_dir(spec: FeatureSpec, entity: Entity) -> str:
    """The batch view's parquet source: a directory of one file per as-of day (relative to the
    feature repository)."""
    return f"data/offline/{batch_view_name(spec, entity)}"


def batch_ttl() -> timedelta:
    """How long a snapshot value is served after its as-of midnight."""
    return LOOKUP_TTL


def batch_entities(spec: FeatureSpec) -> list[Entity]:
    """The spec's entities with batch features (one batch view each), in model order."""
    return lookup_entities(spec)
