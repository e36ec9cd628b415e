"""Feast settings from pipeline options: what a Dataflow worker builds without any environment."""

from __future__ import annotations

import pytest

from streaming.job.options import FraudstreamOptions
from streaming.job.pipeline import store_settings
from streaming.store.feast_store import StoreSettings

GCP_VARS = (
    "FRAUDSTREAM_GCP_PROJECT",
    "FRAUDSTREAM_BIGTABLE_INSTANCE",
    "FRAUDSTREAM_BQ_DATASET",
    "FRAUDSTREAM_FEAST_REGISTRY",
)


@pytest.fixture
def no_gcp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GCP_VARS:
        monkeypatch.delenv(name, raising=False)


def test_gcp_profile_from_options_alone(no_gcp_env: None) -> None:
    opts = FraudstreamOptions(
        [
            "--feature_store_profile=gcp",
            "--feast_registry=gs://bucket/fraudstream/registry.db",
            "--bigtable_project=my-project",
            "--bigtable_instance=fraud-features",
        ]
    )
    config = store_settings(opts).repo_config()
    assert config.registry.path == "gs://bucket/fraudstream/registry.db"
    assert config.online_store.project_id == "my-project"
    assert config.online_store.instance == "fraud-features"


def test_a_setting_left_unset_is_refused_with_what_to_set(no_gcp_env: None) -> None:
    settings = StoreSettings("gcp", registry="gs://bucket/registry.db", bigtable_project="p")
    with pytest.raises(Exception, match=r"online_store\.instance.*FRAUDSTREAM_BIGTABLE_INSTANCE"):
        settings.repo_config()


def test_overrides_win_over_the_profile(no_gcp_env: None, monkeypatch) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:8086")
    settings = StoreSettings("emulator", bigtable_instance="other-instance")
    config = settings.repo_config()
    assert config.online_store.instance == "other-instance"
    assert config.online_store.project_id == "demo-project"  # the profile's, not overridden


def test_settings_are_hashable_for_the_per_process_cache() -> None:
    assert hash(StoreSettings("gcp", registry="gs://b/r.db")) == hash(
        StoreSettings("gcp", registry="gs://b/r.db")
    )
