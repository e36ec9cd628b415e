"""The daily batch-features job: its Beam pipeline gives the rows of ``features.batch.snapshots``
bit for bit; the command writes one file per as-of day (a re-run replaces it); Feast loads the
batch views (``fraudstream materialize``, and the plain ``feast materialize-incremental`` into
Bigtable); Feast's point-in-time join of the files equals ``features.batch.point_in_time``.

Feast runs on copies of ``feature_repo/`` (local profile: sqlite online store, parquet offline
store; emulator profile: our Bigtable store on the emulator).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from features import batch, presets
from features.spec import CUSTOMER, DAY, AmountProfile, CompromiseScore, FeatureSpec
from features.synthetic import transactions
from features.table import event_times_ns, validate
from streaming.batch import batch_features_beam as beam_job
from streaming.batch.batch_features import run_batch_features
from streaming.cli import main
from streaming.pseudonymise import ENV_KEY, ENV_KEY_SECRET, Pseudonymiser
from streaming.store import materialize
from streaming.store.feast_store import apply_repo, scratch_repo
from streaming.store.materialize import PLACEHOLDER, day_file
from streaming.store.names import (
    EVENT_TIMESTAMP,
    batch_entities,
    batch_offline_dir,
    batch_view_name,
    offline_path,
    profile_yaml,
    stored_entities,
)

SPEC = presets.ENRICHED
SMALL = FeatureSpec(
    name="lookups_small",
    lookups=(AmountProfile(20 * DAY), CompromiseScore(10 * DAY)),
    label_delay=3 * DAY,
)


def _history(spec: FeatureSpec = SPEC) -> pd.DataFrame:
    return validate(
        transactions(n=1_500, customers=30, terminals=25, days=50, fraud_rate=0.05), spec
    )


def _recent_history() -> pd.DataFrame:
    """The history moved so its last transaction is an hour before today's midnight (UTC): its
    newest snapshot is today's, inside the batch views' ttl."""
    df = _history()
    midnight = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    df["TX_DATETIME"] += midnight - pd.Timedelta(hours=1) - df["TX_DATETIME"].max()
    return df


@pytest.fixture(autouse=True)
def _clear_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the clear unless a test sets a pseudonymisation key."""
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_SECRET, raising=False)


def _sorted(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows by (key, as-of), the as-of naive ns as ``snapshots`` gives it."""
    frame = frame.copy()
    if getattr(frame[EVENT_TIMESTAMP].dtype, "tz", None) is not None:
        frame[EVENT_TIMESTAMP] = frame[EVENT_TIMESTAMP].dt.tz_convert("UTC").dt.tz_localize(None)
    frame[EVENT_TIMESTAMP] = frame[EVENT_TIMESTAMP].astype("datetime64[ns]")
    return frame.sort_values([key, EVENT_TIMESTAMP], ignore_index=True)


def _assert_bits_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns, dtypes and rows; float values equal bit for bit (NaN payloads too)."""
    assert list(got.columns) == list(want.columns)
    assert got.dtypes.tolist() == want.dtypes.tolist()
    assert len(got) == len(want)
    for column in want.columns:
        a, b = got[column].to_numpy(), want[column].to_numpy()
        if a.dtype == np.float64:
            a, b = a.view(np.uint64), b.view(np.uint64)
        np.testing.assert_array_equal(a, b, err_msg=column)


# --------------------------------------------------------------------------- the Beam pipeline


def test_the_beam_job_writes_the_rows_of_snapshots_bit_for_bit(tmp_path: Path):
    df = _history()
    df.to_parquet(tmp_path / "a.parquet")
    first, last = batch.snapshot_days(event_times_ns(df))
    job = beam_job.BatchFeaturesJob(
        inputs=(str(tmp_path / "a.parquet"),),
        as_of=f"{pd.Timestamp(last):%Y-%m-%d}",
        days=(last - first) // batch.DAY_NS + 1,
        output_dir=str(tmp_path / "out"),
    )
    beam_job.run(job)
    want = batch.snapshots(df, SPEC)
    for entity in batch_entities(SPEC):
        files = sorted((tmp_path / "out" / batch_view_name(SPEC, entity)).iterdir())
        span = f"{pd.Timestamp(first):%Y-%m-%d}_{pd.Timestamp(last):%Y-%m-%d}"
        assert [f.name for f in files] == [f"as_of={span}.parquet"]
        got = pd.read_parquet(files[0])
        assert str(got[EVENT_TIMESTAMP].dtype) == "datetime64[ns, UTC]"  # Feast's offline rule
        _assert_bits_equal(_sorted(got, entity.key), want[entity.name])


def _composites_give_snapshots(df: pd.DataFrame, spec: FeatureSpec) -> None:
    """NextFraud and EntitySnapshots (on TestPipeline) give the rows of ``snapshots``."""
    first, last = batch.snapshot_days(event_times_ns(df))
    want = batch.snapshots(df, spec)
    shuffled = df.sample(frac=1.0, random_state=5)  # the job must not rely on the input order
    events = list(beam_job.to_events(pa.Table.from_pandas(shuffled), spec))

    def equals_snapshots(entity):
        def check(rows: list[dict]) -> None:
            got = pd.DataFrame(rows, columns=list(want[entity.name].columns))
            got[EVENT_TIMESTAMP] = got[EVENT_TIMESTAMP].astype("datetime64[ns]")
            _assert_bits_equal(_sorted(got, entity.key), want[entity.name])

        return check

    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        with_next = p | beam.Create(events) | beam_job.NextFraud(spec)
        for entity in batch.lookup_entities(spec):
            name = entity.name.capitalize()
            rows = with_next | f"{name}Snapshots" >> beam_job.EntitySnapshots(
                spec, entity, first, last
            )
            assert_that(rows, equals_snapshots(entity), label=f"Check{name}")


def test_the_composites_give_the_snapshot_rows_of_a_small_spec():
    """Short windows and label delay: many rows whose windows have emptied (the defaults)."""
    _composites_give_snapshots(_history(SMALL), SMALL)


def test_same_time_events_of_a_card_are_taken_in_arrival_order_as_snapshots_does():
    """A card's fraud and another transaction at the same second, at two terminals: which one
    comes first (the lower TRANSACTION_ID) decides the second terminal's compromise score."""
    t0 = pd.Timestamp("2018-04-03 10:00:00")
    rows = [  # TRANSACTION_ID, time, card, terminal, fraud
        (0, t0, 1, 1, 1),
        (1, t0, 1, 2, 0),
        (2, t0 + pd.Timedelta(days=1), 2, 2, 0),
        (3, t0 + pd.Timedelta(days=6), 2, 1, 0),
    ]
    df = pd.DataFrame(rows, columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID",
                                     "TERMINAL_ID", "TX_FRAUD"])  # fmt: skip
    df["TX_AMOUNT"] = [10.0, 20.0, 30.0, 40.0]
    df = validate(df, SMALL)
    assert batch.snapshots(df, SMALL)["terminal"]["TERMINAL_ID_CPC_NB_CARDS_10DAY"].max() == 2
    _composites_give_snapshots(df, SMALL)


def test_the_beam_job_refuses_bad_options_naming_them(capsys):
    ok = {"inputs": ("a.parquet",), "as_of": "2018-05-01", "output_dir": "out"}
    with pytest.raises(ValueError, match=r"preset 'default' has no batch features"):
        beam_job.BatchFeaturesJob(**{**ok, "preset": "default"})
    with pytest.raises(ValueError, match=r"as_of must be a date .*'2018-05-01T06:00'"):
        beam_job.BatchFeaturesJob(**{**ok, "as_of": "2018-05-01T06:00"})
    with pytest.raises(ValueError, match=r"days must be at least 1, got 0"):
        beam_job.BatchFeaturesJob(**{**ok, "days": 0})
    with pytest.raises(ValueError, match=r"one of --output_dir .* --bq_dataset"):
        beam_job.BatchFeaturesJob(**{**ok, "bq_dataset": "ds"})
    job = beam_job.BatchFeaturesJob(**{**ok, "days": 3, "output_dir": "gs://b/x/"})
    assert job.file_prefix(CUSTOMER) == (
        "gs://b/x/customer_batch_features_enriched/as_of=2018-04-29_2018-05-01"
    )
    argv = ["batch-features-beam", "--input", "a", "--as_of", "2018-05-01", "--output_dir",
            "out", "--num-shards", "2", "--runner", "DirectRunner"]  # fmt: skip
    assert main(argv) == 2  # Beam would discard the near miss: refused before running
    assert "unknown option --num-shards: did you mean --num_shards?" in capsys.readouterr().err


def test_a_bigquery_row_has_nulls_for_nan_and_an_rfc3339_time():
    row = {"TERMINAL_ID": 3, EVENT_TIMESTAMP: pd.Timestamp("2018-05-01").value, "X": np.nan}
    assert beam_job.table_row(row) == {
        "TERMINAL_ID": 3,
        EVENT_TIMESTAMP: "2018-05-01T00:00:00+00:00",
        "X": None,
    }


# --------------------------------------------------------------------------- the command, Feast


@pytest.fixture(scope="module")
def applied_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of feature_repo/ applied with the local profile (copied again per test)."""
    repo = scratch_repo(tmp_path_factory.mktemp("batch_repo") / "repo", "bf_local_test")
    apply_repo("local", repo)
    return repo


@pytest.fixture
def repo(applied_repo: Path, tmp_path: Path) -> Path:
    """A fresh copy of the applied repository: its own registry, offline files and sqlite."""
    return Path(shutil.copytree(applied_repo, tmp_path / "repo"))


def _day_rows(table: pd.DataFrame, day: int) -> pd.DataFrame:
    return table[table[EVENT_TIMESTAMP] == pd.Timestamp(day)].reset_index(drop=True)


def test_the_command_writes_one_file_per_day_and_a_rerun_replaces_it(repo: Path, tmp_path: Path):
    df = _history()
    source = tmp_path / "t.parquet"
    df.to_parquet(source)
    last = batch.snapshot_days(event_times_ns(df))[1]
    days = [last - 2 * batch.DAY_NS, last - batch.DAY_NS, last]
    argv = ["batch-features", "--input", str(source), "--days", "3", "--feature_repo", str(repo)]
    materialize._placeholders(repo)  # as a `materialize` of another preset leaves it
    for entity in batch_entities(SPEC):
        empty = pd.read_parquet(repo / batch_offline_dir(SPEC, entity) / PLACEHOLDER)
        assert list(empty.columns) == [
            entity.key,
            EVENT_TIMESTAMP,
            *SPEC.lookup_stored_names(entity),
        ]
        assert len(empty) == 0 and str(empty[EVENT_TIMESTAMP].dtype) == "datetime64[ns, UTC]"

    assert main(argv) == 0
    changed = df.assign(TX_AMOUNT=df["TX_AMOUNT"] * 2)  # a corrected history, run again
    changed.to_parquet(source)
    assert main([*argv, "--as_of", f"{pd.Timestamp(last):%Y-%m-%d}"]) == 0

    want = batch.snapshots(changed, SPEC, (days[0], last))
    for entity in batch_entities(SPEC):
        directory = repo / batch_offline_dir(SPEC, entity)
        assert sorted(p.name for p in directory.iterdir()) == [day_file(d) for d in days]
        for day in days:
            got = pd.read_parquet(directory / day_file(day))
            want_day = _day_rows(want[entity.name], day)
            assert len(want_day) > 0
            _assert_bits_equal(_sorted(got, entity.key), want_day)
    # every other view has a source for `feast materialize-incremental`
    for spec in presets.PRESETS.values():
        for entity in stored_entities(spec):
            assert (repo / offline_path(spec, entity)).is_file()


def test_the_command_pseudonymises_keys_as_the_job_does(repo, tmp_path, monkeypatch):
    df = _history()
    df.to_parquet(tmp_path / "t.parquet")
    monkeypatch.setenv(ENV_KEY, "ab" * 32)
    summary = run_batch_features([tmp_path / "t.parquet"], repo=repo)
    ids = Pseudonymiser.from_env()
    assert summary["id_key"] == ids.fingerprint
    clear = df.copy()
    for entity in SPEC.entities:
        clear[entity.key] = ids.pseudonymise_array(entity.name, df[entity.key].to_numpy())
    last = batch.snapshot_days(event_times_ns(df))[1]
    want = batch.snapshots(clear, SPEC, (last, last))
    for entity in batch_entities(SPEC):
        got = pd.read_parquet(repo / batch_offline_dir(SPEC, entity) / day_file(last))
        _assert_bits_equal(_sorted(got, entity.key), _sorted(want[entity.name], entity.key))


def test_the_command_refuses_a_preset_without_lookups_and_an_unapplied_registry(tmp_path: Path):
    df = _history()
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"preset 'default' has no batch features.*enriched"):
        run_batch_features([tmp_path / "t.parquet"], "default", repo=tmp_path)
    bare = scratch_repo(tmp_path / "bare", "bf_not_applied")
    with pytest.raises(ValueError, match=r"customer_batch_features_enriched.*feast apply"):
        run_batch_features([tmp_path / "t.parquet"], repo=bare)


def _online(store, spec: FeatureSpec, entity, keys: np.ndarray) -> np.ndarray:
    """The batch view's values of ``keys`` from the online store (NaN: null or missing)."""
    names = spec.lookup_stored_names(entity)
    response = store.get_online_features(
        features=[f"{batch_view_name(spec, entity)}:{n}" for n in names],
        entity_rows=[{entity.key: int(k)} for k in keys],
    ).to_dict()
    return np.array([[np.nan if v is None else v for v in response[n]] for n in names]).T


def _newest(table: pd.DataFrame, key: str) -> pd.DataFrame:
    return table.sort_values([key, EVENT_TIMESTAMP]).groupby(key).tail(1).reset_index(drop=True)


def test_materialize_of_a_preset_with_lookups_loads_its_batch_views(repo: Path, tmp_path: Path):
    from feast import FeatureStore

    df = _recent_history()
    df.to_parquet(tmp_path / "t.parquet")
    argv = ["materialize", "--input", str(tmp_path / "t.parquet"), "--preset", "enriched",
            "--feature_repo", str(repo)]  # fmt: skip
    assert main(argv) == 0

    first, last = batch.snapshot_days(event_times_ns(df))
    tables = batch.snapshots(df, SPEC)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml("local", repo))
    for entity in batch_entities(SPEC):
        directory = repo / batch_offline_dir(SPEC, entity)
        names = sorted(p.name for p in directory.iterdir())
        assert names == [day_file(d) for d in range(first, last + 1, batch.DAY_NS)]
        newest = _newest(tables[entity.name], entity.key)
        got = _online(store, SPEC, entity, newest[entity.key].to_numpy())
        want = newest[SPEC.lookup_stored_names(entity)].to_numpy()
        np.testing.assert_array_equal(got, want)


def _found(table: pd.DataFrame, key: str, ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Whether each (id, time) has a snapshot row of its key at most the ttl before the time."""
    at = table[EVENT_TIMESTAMP].to_numpy("datetime64[ns]").view(np.int64)
    keys = table[key].to_numpy(np.int64)
    ttl = pd.Timedelta(batch.LOOKUP_TTL).value
    return np.array(
        [((keys == k) & (at <= t) & (at >= t - ttl)).any() for k, t in zip(ids, times, strict=True)]
    )


def test_feast_historical_retrieval_equals_point_in_time(repo: Path, tmp_path: Path):
    """On every row Feast returns; the rows it drops are those some entity has no snapshot for
    within the ttl, which point_in_time gives the defaults."""
    from feast import FeatureStore

    df = _history()
    df.to_parquet(tmp_path / "t.parquet")
    first, last = batch.snapshot_days(event_times_ns(df))
    run_batch_features([tmp_path / "t.parquet"], days=(last - first) // batch.DAY_NS + 1, repo=repo)
    tables = batch.snapshots(df, SPEC)

    rng = np.random.default_rng(3)
    rows = np.union1d(np.arange(40), rng.choice(len(df), 160, replace=False))  # early ones too
    sample = df.iloc[rows]
    times = event_times_ns(sample)
    ids = {e.key: sample[e.key].to_numpy(np.int64) for e in batch_entities(SPEC)}
    want = batch.point_in_time(SPEC, times, ids, tables)
    found = {e.name: _found(tables[e.name], e.key, ids[e.key], times) for e in batch_entities(SPEC)}
    everywhere = np.logical_and.reduce(list(found.values()))
    assert 0 < everywhere.sum() < len(rows)

    entity_df = pd.DataFrame(
        {
            "row": np.arange(len(rows)),
            **ids,
            EVENT_TIMESTAMP: pd.to_datetime(times).tz_localize("UTC"),
        }
    )
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml("local", repo))
    features = [
        f"{batch_view_name(SPEC, e)}:{n}"
        for e in batch_entities(SPEC)
        for n in SPEC.lookup_stored_names(e)
    ]
    got = store.get_historical_features(entity_df, features).to_df().sort_values("row")
    returned = got["row"].to_numpy()
    np.testing.assert_array_equal(returned, np.flatnonzero(everywhere))
    for entity in batch_entities(SPEC):
        names = SPEC.lookup_stored_names(entity)
        np.testing.assert_array_equal(got[names].to_numpy(np.float64), want[entity.name][returned])
        missing = want[entity.name][~found[entity.name]]
        assert len(missing) > 0
        np.testing.assert_array_equal(
            missing, np.tile(batch.defaults(SPEC, entity), (len(missing), 1))
        )


def test_feast_materialize_incremental_loads_the_batch_views_into_bigtable(
    bigtable_emulator, tmp_path: Path
):
    """The plain ``feast`` CLI over every view of a repository the batch job wrote to; each
    entity reads back its newest snapshot row (the history ends yesterday: inside the ttl)."""
    from feast import FeatureStore

    df = _recent_history()
    df.to_parquet(tmp_path / "t.parquet")
    repo = scratch_repo(tmp_path / "repo", f"bf_{uuid4().hex[:8]}")
    apply_repo("emulator", repo)
    run_batch_features([tmp_path / "t.parquet"], days=2, profile="emulator", repo=repo)

    end = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}"
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run(
        [str(feast), "-f", "profiles/emulator.yaml", "materialize-incremental", end],
        cwd=repo, env=os.environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    tables = batch.snapshots(df, SPEC)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=profile_yaml("emulator", repo))
    oldest = pd.Timestamp.now(tz="UTC").tz_localize(None) - pd.Timedelta(batch.LOOKUP_TTL)
    try:
        for entity in batch_entities(SPEC):
            newest = _newest(tables[entity.name], entity.key)
            live = (newest[EVENT_TIMESTAMP] >= oldest).to_numpy()
            assert live.sum() > len(live) // 2
            got = _online(store, SPEC, entity, newest[entity.key].to_numpy())
            want = newest[SPEC.lookup_stored_names(entity)].to_numpy()
            np.testing.assert_array_equal(got[live], want[live])
            assert np.isnan(got[~live]).all()
        _the_lookup_reader_scans_and_reads_the_newest_rows(store, tables)
    finally:
        store.teardown()


def _the_lookup_reader_scans_and_reads_the_newest_rows(store, tables) -> None:
    """The stream's reader on our Bigtable store: a scan of each batch view (one streaming
    read a view) and a batched read both give every entity's newest snapshot row, whatever its
    age; a scan past its limit says it is truncated."""
    from streaming.store.lookup import FeastLookupReader

    reader = FeastLookupReader(store, SPEC)
    entities = batch_entities(SPEC)
    newest = {e.name: _newest(tables[e.name], e.key) for e in entities}
    scanned = reader.scan(limit=100_000)
    assert reader.requests == len(entities)
    read = reader.read({e.name: newest[e.name][e.key].to_numpy() for e in entities})
    assert reader.requests == len(entities) + 1
    for entity in entities:
        want = newest[entity.name]
        as_of = want[EVENT_TIMESTAMP].to_numpy("datetime64[ns]").view(np.int64)
        values = want[SPEC.lookup_stored_names(entity)].to_numpy()
        rows = scanned[entity.name]
        assert not rows.truncated
        order = np.argsort(rows.ids)
        np.testing.assert_array_equal(rows.ids[order], want[entity.key].to_numpy())
        np.testing.assert_array_equal(rows.as_of_ns[order], as_of)
        np.testing.assert_array_equal(rows.values[order], values)
        assert read[entity.name].found.all()
        np.testing.assert_array_equal(read[entity.name].as_of_ns, as_of)
        np.testing.assert_array_equal(read[entity.name].values, values)
    small = reader.scan(limit=3)
    assert all(r.truncated and len(r.ids) == 3 for r in small.values())


def test_the_beam_job_keys_its_rows_with_the_jobs_pseudonyms(tmp_path: Path, monkeypatch):
    """With the job's id key configured the snapshots are keyed by the pseudonyms the
    streaming job reads them with (compromise scores too: cards are told apart by pseudonym)."""
    monkeypatch.setenv(ENV_KEY, "ab" * 32)
    ids = Pseudonymiser.from_env(required=True)
    df = _history()
    df.to_parquet(tmp_path / "a.parquet")
    last = batch.snapshot_days(event_times_ns(df))[1]
    job = beam_job.BatchFeaturesJob(
        inputs=(str(tmp_path / "a.parquet"),),
        as_of=f"{pd.Timestamp(last):%Y-%m-%d}",
        output_dir=str(tmp_path / "out"),
    )
    beam_job.run(job)
    keyed = df.copy()
    for entity in SPEC.entities:
        keyed[entity.key] = ids.pseudonymise_array(entity.name, df[entity.key].to_numpy())
    want = batch.snapshots(keyed, SPEC, days=(last, last))
    for entity in batch_entities(SPEC):
        (path,) = (tmp_path / "out" / batch_view_name(SPEC, entity)).iterdir()
        got = pd.read_parquet(path)
        assert not set(got[entity.key]) & set(df[entity.key])  # no clear id
        _assert_bits_equal(_sorted(got, entity.key), want[entity.name])
