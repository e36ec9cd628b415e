"""Our Feast online store (the Feast contract) on the real Bigtable emulator.

One FeatureStore per module (a fresh Feast project, hence a fresh table) with every preset's
definitions applied. The emulator restart test runs last: the emulator forgets everything.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest

from features import presets
from features.spec import CUSTOMER
from streaming.local import emulators as emu
from streaming.store.base import EntityBatch
from streaming.store.feast_store import FeastFeatureStore, load_definitions, scratch_repo
from streaming.store.names import EVENT_TIMESTAMP, feature_ttl, push_source_name, stored_entities

pytestmark = pytest.mark.filterwarnings("ignore:Connecting to Bigtable emulator:RuntimeWarning")

SPEC = presets.DEFAULT
KEYS = {"CUSTOMER_ID", "TERMINAL_ID"}
STORE_TYPE = "streaming.store.bigtable.online_store.BigtableOnlineStore"


def _online_config(**overrides: object) -> dict[str, object]:
    config = {"type": STORE_TYPE, "project_id": emu.DEFAULT_PROJECT,
              "instance": emu.DEFAULT_BIGTABLE_INSTANCE, "recreate_missing_table": True,
              "operation_timeout_s": 60.0, "attempt_timeout_s": 5.0}  # fmt: skip
    config.update(overrides)
    return config


def _feature_store(tmp: Path, project: str, **overrides: object):
    from feast import FeatureStore, RepoConfig

    config = RepoConfig(
        project=project,
        provider="local",
        registry=str(tmp / f"{project}.db"),
        online_store=_online_config(**overrides),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    config.repo_path = tmp
    return FeatureStore(config=config, repo_path=str(tmp))


@pytest.fixture(scope="module")
def store(bigtable_emulator, tmp_path_factory: pytest.TempPathFactory):
    """A FeatureStore on our Bigtable store with every preset applied; torn down after."""
    tmp = tmp_path_factory.mktemp("bigtable_store")
    feast_store = _feature_store(tmp, f"bt_{uuid4().hex[:8]}")
    feast_store.apply(load_definitions().all_definitions())
    yield feast_store
    feast_store.teardown()


@pytest.fixture(scope="module")
def adapter(store) -> FeastFeatureStore:
    return FeastFeatureStore(store, SPEC)


def _online(store):
    return store._get_provider().online_store


def _batches(ids: list[int], when: datetime, seed: int = 0) -> list[EntityBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for entity in stored_entities(SPEC):
        values = rng.normal(size=(len(ids), len(SPEC.entity_names(entity))))
        values[::2, -1] = np.nan  # e.g. seconds since the previous event of a first event
        times = np.full(len(ids), np.datetime64(when.replace(tzinfo=None), "ns"))
        out.append(EntityBatch(entity, np.array(ids, np.int64), times, values))
    return out


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _ids() -> list[int]:
    """Entity ids no other test wrote."""
    base = int(uuid4().int % 10**12)
    return [base + i for i in range(5)]


def _entity_key(customer: int):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=["CUSTOMER_ID"], entity_values=[Value(int64_val=customer)])


def _width() -> int:
    return len(SPEC.entity_names(CUSTOMER))


# --------------------------------------------------------------------------- round trips


def test_adapter_reads_back_exact_values_in_one_round_trip_each(store, adapter):
    ids = _ids()
    written = _batches(ids, _now() - timedelta(minutes=1))
    online = _online(store)
    writes, reads = online.write_rpcs, online.read_rpcs
    counted = adapter.rpc_counts()  # what the job's totals line reads
    adapter.write(written)
    assert online.write_rpcs == writes + 1  # both entities, one MutateRows
    after = adapter.rpc_counts()
    assert after["bigtable_mutate_rows"] == counted["bigtable_mutate_rows"] + 1
    assert after["bigtable_rows_mutated"] == counted["bigtable_rows_mutated"] + 2 * len(ids)
    order = [ids[3], ids[0], ids[3], ids[1]]  # repeats are read once, returned twice
    rows = adapter.read({"CUSTOMER_ID": np.array(order), "TERMINAL_ID": np.array(order[::-1])})
    assert online.read_rpcs == reads + 1  # both views, one ReadRows
    w = _width()
    np.testing.assert_array_equal(rows.values[:, :w], written[0].values[[3, 0, 3, 1]])
    np.testing.assert_array_equal(rows.values[:, w:], written[1].values[[1, 3, 0, 3]])
    assert rows.found["customer"].all() and rows.found["terminal"].all()


def test_missing_entities_read_as_nulls(store, adapter):
    ids = _ids()
    adapter.write(_batches(ids[:1], _now()))
    rows = adapter.read({"CUSTOMER_ID": np.array([ids[0], -5]), "TERMINAL_ID": np.array([7, 8])})
    assert rows.found["customer"].tolist() == [True, False]
    assert not rows.found["terminal"].any()
    assert np.isnan(rows.values[1]).all()
    response = store.get_online_features(
        features=store.get_feature_service("model_inputs"),
        entity_rows={"CUSTOMER_ID": [-1], "TERMINAL_ID": [-2]},
    ).to_dict()
    assert response["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == [None]


def test_feast_write_and_push_paths_store_exact_values(store):
    ids = _ids()
    names = SPEC.entity_names(CUSTOMER)
    values = np.random.default_rng(5).normal(size=(2, len(names)))
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "CUSTOMER_ID", ids[:2])
    frame.insert(1, EVENT_TIMESTAMP, pd.Timestamp(_now()))
    store.write_to_online_store("customer_features", frame)  # online_write_batch
    pushed = frame.assign(CUSTOMER_ID=ids[2:4])
    store.push(push_source_name(SPEC, CUSTOMER), pushed)
    got = store.get_online_features(
        features=[f"customer_features:{n}" for n in names],
        entity_rows=[{"CUSTOMER_ID": i} for i in ids[:4]],
    ).to_dict()
    np.testing.assert_array_equal(np.array([got[n] for n in names]).T, np.vstack([values] * 2))


def test_online_read_returns_event_times_and_values(store, adapter):
    ids = _ids()
    when = _now() - timedelta(hours=2, microseconds=-123)
    written = _batches(ids[:1], when)
    adapter.write(written)
    view = store.get_feature_view("customer_features")
    keys = [_entity_key(i) for i in ids]
    rows = _online(store).online_read(
        store.config, view, keys[:2], ["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]
    )
    assert rows[0][0] == when
    assert rows[0][1]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].double_val == written[0].values[0, 0]
    assert rows[1] == (None, None)


def test_the_newest_event_wins_whatever_the_write_order(adapter):
    ids = _ids()
    newer, older = _batches(ids[:1], _now(), seed=1), _batches(ids[:1], _now() - timedelta(1))
    adapter.write(newer)
    adapter.write(older)
    rows = adapter.read({"CUSTOMER_ID": np.array(ids[:1]), "TERMINAL_ID": np.array(ids[:1])})
    np.testing.assert_array_equal(rows.values[0, : _width()], newer[0].values[0])


def test_values_older_than_the_ttl_read_as_missing(store, adapter):
    ids = _ids()
    ttl = feature_ttl(SPEC, CUSTOMER)
    adapter.write(_batches(ids[:1], _now() - ttl - timedelta(minutes=1)))
    adapter.write(_batches(ids[1:2], _now() - ttl + timedelta(minutes=1)))
    keys = {"CUSTOMER_ID": np.array(ids[:2]), "TERMINAL_ID": np.array(ids[:2])}
    assert adapter.read(keys).found["customer"].tolist() == [False, True]
    replay = _feature_store(Path(store.repo_path), store.config.project, enforce_ttl=False)
    assert FeastFeatureStore(replay, SPEC).read(keys).found["customer"].tolist() == [True, True]


def test_a_cell_of_another_schema_reads_as_missing(store, adapter):
    from streaming.store.bigtable.codec import pack, row_key

    ids = _ids()
    adapter.write(_batches(ids[:1], _now()))
    view = store.get_feature_view("customer_features")
    key = row_key(["CUSTOMER_ID"], [ids[0]])
    online = _online(store)
    stale = pack(tag=12345, event_us=int(time.time() * 1e6), values=np.zeros(3))
    from google.cloud.bigtable.data import RowMutationEntry, SetCell

    micros = int(time.time() * 1e3) * 1000 + 10_000_000  # newer than the adapter's cell
    online._table(store.config).bulk_mutate_rows(
        [RowMutationEntry(key, [SetCell("f", view.name.encode(), stale, micros)])]
    )
    rows = FeastFeatureStore(store, SPEC).read(
        {"CUSTOMER_ID": np.array(ids[:1]), "TERMINAL_ID": np.array(ids[:1])}
    )
    assert rows.found["customer"].tolist() == [False]


def test_fast_response_equals_feasts_own_assembly(store, adapter):
    """Our wire-encoded response == Feast's value-by-value one, on the same rows."""
    from feast.infra.online_stores.online_store import OnlineStore

    from streaming.store.bigtable.online_store import BigtableOnlineStore

    ids = _ids()
    adapter.write(_batches(ids[:3], _now() - timedelta(seconds=30, microseconds=7)))
    rows = {"CUSTOMER_ID": [ids[2], -1, ids[0], ids[2]], "TERMINAL_ID": [ids[1], ids[1], -3, -3]}
    service = store.get_feature_service("model_inputs")
    for full_names in (False, True):
        fast = store.get_online_features(service, rows, full_feature_names=full_names).proto
        generic = OnlineStore._read_features_per_fv
        with mock.patch.object(BigtableOnlineStore, "_read_features_per_fv", generic):
            slow = store.get_online_features(service, rows, full_feature_names=full_names).proto
        assert fast == slow


# --------------------------------------------------------------------------- config, CLI


def test_config_errors_name_the_field(store, tmp_path: Path):
    from streaming.store.bigtable.online_store import BigtableOnlineStore, BigtableOnlineStoreConfig

    with pytest.raises(ValueError, match=r"online_store.instance.*BIGTABLE_INSTANCE"):
        BigtableOnlineStoreConfig(instance="${FRAUDSTREAM_BIGTABLE_INSTANCE}")
    elsewhere = _feature_store(tmp_path, "bt_elsewhere", emulator_host="127.0.0.1:1").config
    view = store.get_feature_view("customer_features")
    with pytest.raises(ValueError, match=r"emulator_host is '127.0.0.1:1' but \$BIGTABLE"):
        BigtableOnlineStore().online_read(elsewhere, view, [_entity_key(1)])


def test_update_refuses_a_feature_that_is_not_float64(store):
    from feast import Field
    from feast.types import Int64

    from streaming.store.bigtable.online_store import BigtableOnlineStore

    view = store.get_feature_view("customer_features")
    view.features = [Field(name="N", dtype=Int64)]
    with pytest.raises(ValueError, match=r"'customer_features'.*'N'.*Float64"):
        BigtableOnlineStore().update(store.config, [], [view], [], [], False)


def test_feast_cli_applies_the_emulator_profile(bigtable_emulator, tmp_path: Path):
    """`feast -f profiles/emulator.yaml apply` finds our store by its class path."""
    project = f"cli_{uuid4().hex[:8]}"
    repo = scratch_repo(tmp_path / "repo", project)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "feast"), "-f", "profiles/emulator.yaml", "apply"],
        cwd=repo, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "customer_features" in done.stdout
    from google.cloud import bigtable

    from streaming.store.bigtable.codec import table_name

    instance = bigtable.Client(project=emu.DEFAULT_PROJECT, admin=True).instance(
        emu.DEFAULT_BIGTABLE_INSTANCE
    )
    assert instance.table(table_name(project)).exists()


# --------------------------------------------------------------------------- restart (last)


def test_an_emulator_restart_is_survived_by_retries(store, adapter, emulator_state_dir: Path):
    """Reads and writes issued while the emulator restarts wait it out instead of raising.

    The emulator comes back empty: the first write recreates the table, reads until then
    return nulls (``recreate_missing_table``, the emulator profile's setting).
    """
    ids = _ids()
    keys = {"CUSTOMER_ID": np.array(ids), "TERMINAL_ID": np.array(ids)}
    errors: list[BaseException] = []
    restarted = threading.Event()

    def restart() -> None:
        try:
            emu.restart("bigtable", emulator_state_dir)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    longest, calls = 0.0, 0
    while not restarted.is_set() or calls < 3:
        t0 = time.monotonic()
        adapter.write(_batches(ids, _now(), seed=calls))
        adapter.read(keys)
        longest, calls = max(longest, time.monotonic() - t0), calls + 1
    thread.join()
    assert not errors, errors
    assert longest > 0.3  # some call did wait for the emulator
    written = _batches(ids, _now(), seed=99)
    adapter.write(written)
    rows = adapter.read(keys)
    np.testing.assert_array_equal(rows.values[:, : _width()], written[0].values)
    assert rows.found["terminal"].all()
