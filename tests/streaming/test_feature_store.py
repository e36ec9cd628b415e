"""The feature-store adapter: names, entity tables, the in-memory fake and the local Feast repo.

The Feast part runs the real repository (``feature_repo/``) in a temporary copy with the
``local`` profile (sqlite online store, parquet offline store): the Feast CLI in process
(``apply``, ``feature-views list``, ``materialize-incremental``), ``fraudstream materialize``
and the Feast-backed reader and writer.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.backfill import backfill
from features.limits import text_key
from features.spec import CUSTOMER, TERMINAL
from features.synthetic import transactions
from features.table import validate
from streaming.cli import main
from streaming.store import materialize
from streaming.store.base import EntityBatch
from streaming.store.feast_store import FeastFeatureStore, scratch_repo
from streaming.store.memory import InMemoryFeatureStore
from streaming.store.names import (
    EVENT_TIMESTAMP,
    PROFILES,
    REPO,
    feature_ttl,
    offline_path,
    profile_yaml,
    push_source_name,
    service_name,
    stored_entities,
    view_name,
)
from streaming.store.tables import entity_batches, entity_tables

SPEC = presets.DEFAULT
NOW = datetime(2026, 1, 15, 12, 0, 0)


def _batches(ids: list[int], times: list[datetime], seed: int = 0) -> list[EntityBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for entity in stored_entities(SPEC):
        values = rng.normal(size=(len(ids), len(SPEC.entity_names(entity))))
        values[::3, 0] = np.nan  # NaN is a value
        out.append(EntityBatch(entity, np.array(ids), np.array(times, "datetime64[ns]"), values))
    return out


def _recent_history(n: int = 1_500) -> pd.DataFrame:
    """Synthetic transactions moved so the newest is an hour old (inside every view's TTL)."""
    df = transactions(n=n, customers=30, terminals=40, days=20)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    df["TX_DATETIME"] += now - pd.Timedelta(hours=1) - df["TX_DATETIME"].max()
    return validate(df, SPEC)


# --------------------------------------------------------------------------- names, tables


def test_names_are_derived_from_the_preset():
    assert view_name(SPEC, CUSTOMER) == "customer_features"
    assert view_name(presets.BASELINE, TERMINAL) == "terminal_features_baseline"
    assert push_source_name(SPEC, TERMINAL) == "terminal_features_push"
    assert service_name(SPEC) == "model_inputs"
    assert offline_path(SPEC, CUSTOMER) == "data/offline/customer_features.parquet"
    assert feature_ttl(SPEC, TERMINAL) == timedelta(days=37)  # 30-day window + 7-day delay


def test_profile_yaml_names_each_profile_and_refuses_others():
    assert profile_yaml("local").name == "feature_store.yaml"
    assert profile_yaml("emulator") == REPO / "profiles" / "emulator.yaml"
    for profile in PROFILES:
        assert profile_yaml(profile).is_file()
    with pytest.raises(ValueError, match=r"'staging'.*local"):
        profile_yaml("staging")


def test_entity_tables_hold_each_entitys_state_after_each_event():
    df = validate(transactions(n=800), SPEC)
    features = backfill(df, SPEC)
    tables = entity_tables(df, features, SPEC)
    merged = df.merge(features, on="TRANSACTION_ID")
    for entity in stored_entities(SPEC):
        names = SPEC.entity_names(entity)
        table = tables[entity.name]
        assert list(table.columns) == [entity.key, EVENT_TIMESTAMP, *names]
        assert not table.duplicated([entity.key, EVENT_TIMESTAMP]).any()
        # Of same-time events of one entity, the last to arrive holds the state.
        last = merged.sort_values("TRANSACTION_ID").groupby([entity.key, "TX_DATETIME"]).last()
        expected = last.reset_index().sort_values([entity.key, "TX_DATETIME"])[names]
        np.testing.assert_array_equal(table[names].to_numpy(), expected.to_numpy())
    newest = entity_tables(df, features, SPEC, latest_only=True)["customer"]
    assert newest["CUSTOMER_ID"].is_unique
    by_max = merged.groupby("CUSTOMER_ID")["TX_DATETIME"].max()
    assert (newest.set_index("CUSTOMER_ID")[EVENT_TIMESTAMP] == by_max).all()


def test_entity_batches_keep_the_newest_row_per_entity():
    df = validate(transactions(n=300), SPEC)
    frame = df.merge(backfill(df, SPEC), on="TRANSACTION_ID")
    batches = {b.entity.name: b for b in entity_batches(frame, SPEC)}
    customer = batches["customer"]
    assert sorted(customer.ids.tolist()) == sorted(df["CUSTOMER_ID"].unique().tolist())
    assert customer.values.shape == (len(customer.ids), len(SPEC.entity_names(CUSTOMER)))
    with pytest.raises(ValueError, match=r"customer.*3 ids"):
        EntityBatch(CUSTOMER, np.arange(3), np.zeros(2, "datetime64[ns]"), np.zeros((3, 2)))


# --------------------------------------------------------------------------- in-memory fake


def test_in_memory_store_reads_back_newest_values_in_one_round_trip():
    store = InMemoryFeatureStore(SPEC, clock=lambda: NOW)
    written = _batches([1, 2, 3], [NOW - timedelta(minutes=5)] * 3)
    store.write(written)
    store.write(_batches([2], [NOW - timedelta(days=1)], seed=9))  # older: does not win
    assert store.round_trips == 2
    rows = store.read({"CUSTOMER_ID": np.array([3, 1, 99]), "TERMINAL_ID": np.array([2, 2, 1])})
    assert store.round_trips == 3
    width = len(SPEC.entity_names(CUSTOMER))
    assert rows.columns == [n for e in SPEC.entities for n in SPEC.entity_names(e)]
    np.testing.assert_array_equal(rows.values[:2, :width], written[0].values[[2, 0]])
    np.testing.assert_array_equal(rows.values[:, width:], written[1].values[[1, 1, 0]])
    assert np.isnan(rows.values[2, :width]).all()
    assert rows.found["customer"].tolist() == [True, True, False]


def test_in_memory_store_expires_values_after_the_ttl():
    store = InMemoryFeatureStore(SPEC, clock=lambda: NOW)
    ttl = feature_ttl(SPEC, CUSTOMER)
    store.write(_batches([1, 2], [NOW - ttl - timedelta(seconds=1), NOW - ttl]))
    rows = store.read({"CUSTOMER_ID": np.array([1, 2]), "TERMINAL_ID": np.array([1, 2])})
    assert rows.found["customer"].tolist() == [False, True]


def test_read_refuses_bad_key_columns():
    store = InMemoryFeatureStore(SPEC)
    with pytest.raises(ValueError, match="TERMINAL_ID"):
        store.read({"CUSTOMER_ID": np.array([1])})
    with pytest.raises(ValueError, match="differ in length"):
        store.read({"CUSTOMER_ID": np.array([1]), "TERMINAL_ID": np.array([1, 2])})


# --------------------------------------------------------------------------- Feast, local


@pytest.fixture(scope="module")
def local_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of feature_repo/ applied with the Feast CLI (in process), local profile."""
    from click.testing import CliRunner
    from feast.cli.cli import cli

    repo = scratch_repo(tmp_path_factory.mktemp("feature_repo") / "repo", "fs_local_test")
    result = CliRunner().invoke(cli, ["-c", str(repo), "apply"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return repo


def test_feast_cli_lists_one_view_per_preset_and_entity(local_repo: Path):
    from click.testing import CliRunner
    from feast.cli.cli import cli

    result = CliRunner().invoke(cli, ["-c", str(local_repo), "feature-views", "list"])
    assert result.exit_code == 0, result.output
    for spec in presets.PRESETS.values():
        for entity in stored_entities(spec):
            assert view_name(spec, entity) in result.output


def test_registered_views_match_the_spec(local_repo: Path):
    """The views' schemas are generated from the spec: same names, order and type."""
    from feast import FeatureStore
    from feast.types import Float64

    store = FeatureStore(repo_path=str(local_repo))
    for spec in presets.PRESETS.values():
        for entity in stored_entities(spec):
            view = store.get_feature_view(view_name(spec, entity))
            assert [f.name for f in view.features] == spec.entity_names(entity)
            assert {f.dtype for f in view.features} == {Float64}
            assert view.entity_columns[0].name == entity.key
            assert view.ttl == feature_ttl(spec, entity)
        service = store.get_feature_service(service_name(spec))
        assert [p.name for p in service.feature_view_projections] == [
            view_name(spec, e) for e in stored_entities(spec)
        ]


def test_adapter_refuses_a_registry_that_disagrees_with_the_spec(local_repo: Path):
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(local_repo))
    shrunk = dataclasses.replace(SPEC, aggregates=SPEC.aggregates[:-1])
    with pytest.raises(ValueError, match=r"terminal_features.*feast apply"):
        FeastFeatureStore(store, shrunk)


def test_local_profile_writes_and_reads_back_exact_values(local_repo: Path):
    adapter = FeastFeatureStore.open(SPEC, "local", local_repo)
    now = datetime.now().replace(microsecond=0)
    written = _batches([10, 11], [now - timedelta(minutes=1)] * 2, seed=3)
    adapter.write(written)
    rows = adapter.read({"CUSTOMER_ID": np.array([11, 10, 12]), "TERMINAL_ID": np.array([10] * 3)})
    width = len(SPEC.entity_names(CUSTOMER))
    np.testing.assert_array_equal(rows.values[:2, :width], written[0].values[[1, 0]])
    np.testing.assert_array_equal(rows.values[:, width:], written[1].values[[0, 0, 0]])
    assert rows.found["customer"].tolist() == [True, True, False]
    assert np.isnan(rows.values[2, :width]).all()


def test_materialize_loads_the_newest_backfilled_values(local_repo: Path, tmp_path: Path):
    df = _recent_history()
    source = tmp_path / "transactions.parquet"
    df.to_parquet(source)
    argv = ["materialize", "--input", str(source), "--profile", "local", "--repo", str(local_repo)]
    assert main(argv) == 0
    assert (local_repo / offline_path(SPEC, CUSTOMER)).is_file()

    newest = entity_tables(df, backfill(df, SPEC), SPEC, latest_only=True)
    customers = newest["customer"]["CUSTOMER_ID"].to_numpy()
    terminals = newest["terminal"]["TERMINAL_ID"].to_numpy()[: len(customers)]
    adapter = FeastFeatureStore.open(SPEC, "local", local_repo)
    rows = adapter.read({"CUSTOMER_ID": customers, "TERMINAL_ID": terminals})
    width = len(SPEC.entity_names(CUSTOMER))
    expected = newest["customer"][SPEC.entity_names(CUSTOMER)].to_numpy()
    np.testing.assert_array_equal(rows.values[:, :width], expected)
    expected = newest["terminal"][SPEC.entity_names(TERMINAL)].to_numpy()[: len(customers)]
    np.testing.assert_array_equal(rows.values[:, width:], expected)

    from click.testing import CliRunner
    from feast.cli.cli import cli

    end = (datetime.now() + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    result = CliRunner().invoke(cli, ["-c", str(local_repo), "materialize-incremental", end])
    assert result.exit_code == 0, result.output


def test_features_finds_a_card_by_the_text_id_its_producer_sent(
    local_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A history keyed by card tokens and zero-padded terminal codes, materialized with ids
    pseudonymised: ``fraudstream features`` asked for a card's token and a terminal's code prints
    their newest features as the backfill has them; an unknown card is not found; an id the job
    would refuse is a usage error with the reason."""
    _features_by_text_ids("local", local_repo, tmp_path, monkeypatch, capsys)
    store = ["--feature_store_profile", "local", "--feature_repo", str(local_repo)]
    assert main(["features", "--customer_id", "tok_never_seen", *store]) == 0
    unknown = json.loads(capsys.readouterr().out)["customer"]
    assert not unknown["found"] and set(unknown["features"].values()) == {None}
    assert main(["features", "--customer_id", "-5", *store]) == 2
    assert "customer id is a signed number" in capsys.readouterr().err
    assert main(["features", "--customer_id", "tok_1", "--pseudonymise_ids", "off", *store]) == 0
    clear = json.loads(capsys.readouterr().out)
    assert clear["id_key"] == "none (clear ids)"
    assert clear["customer"]["stored_as"] == clear["customer"]["key"] == text_key("tok_1")
    monkeypatch.delenv("FRAUDSTREAM_ID_KEY")
    assert main(["features", "--customer_id", "tok_1", *store]) != 0  # the job's key, or off
    assert "--pseudonymise_ids off" in capsys.readouterr().err


def test_features_reads_a_card_from_bigtable_by_its_text_id(
    bigtable_emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The same on the emulator profile: our Bigtable online store behind Feast."""
    from uuid import uuid4

    from streaming.store.feast_store import apply_repo

    repo = scratch_repo(tmp_path / "repo", f"fs_{uuid4().hex[:8]}")
    store = apply_repo("emulator", repo)
    try:
        _features_by_text_ids("emulator", repo, tmp_path, monkeypatch, capsys)
    finally:
        store.teardown()


def _features_by_text_ids(
    profile: str, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Materialize a CSV history of text ids under a key, then ask for one card and one
    terminal by the ids as sent: the printed features are the backfill's newest."""
    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", "a5" * 32)
    df = _recent_history()
    text = df.assign(CUSTOMER_ID=df["CUSTOMER_ID"].map(lambda i: f"tok_{i:x}"),
                     TERMINAL_ID=df["TERMINAL_ID"].map(lambda i: f"{i:06d}"))  # fmt: skip
    text.to_csv(tmp_path / "tx.csv", index=False)
    store = ["--feature_store_profile", profile, "--feature_repo", str(repo)]
    assert main(["materialize", "--input", str(tmp_path / "tx.csv"), *store]) == 0
    newest = entity_tables(df, backfill(df, SPEC), SPEC, latest_only=True)
    card, terminal = newest["customer"].iloc[0], newest["terminal"].iloc[-1]
    capsys.readouterr()
    argv = ["features", "--customer_id", f"tok_{int(card['CUSTOMER_ID']):x}",
            "--terminal_id", f"{int(terminal['TERMINAL_ID']):06d}", *store]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["id_key"] != "none (clear ids)"
    for entity, row in ((CUSTOMER, card), (TERMINAL, terminal)):
        got = out[entity.name]
        assert got["found"] and got["stored_as"] != got["key"]  # pseudonymised
        names = SPEC.entity_names(entity)
        assert list(got["features"]) == names
        expected = [None if v != v else v for v in row[names].astype(float).tolist()]
        assert list(got["features"].values()) == expected


def test_materialize_asks_for_feast_apply_first(tmp_path: Path):
    from feast import FeatureStore

    repo = scratch_repo(tmp_path / "repo", "fs_not_applied")
    df = _recent_history(200)
    df.to_parquet(tmp_path / "t.parquet")
    store = FeatureStore(repo_path=str(repo))
    with pytest.raises(ValueError, match="feast apply"):
        materialize.run_materialize([tmp_path / "t.parquet"], "default", store=store)
