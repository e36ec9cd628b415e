"""Everything the job reads or writes on ``gs://``, on the GCS emulator: Beam's FileSystems,
the model registry and its hot swap, initial states, the scored sink, ``train``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from features import presets
from features.synthetic import transactions
from features.table import validate
from streaming.cli import main
from training import model as models
from training.registry import CURRENT, MODEL_FILE, Registry, RegistryError, model_meta

SPEC = presets.BASELINE


def _write(uri: str, data: bytes) -> None:
    with FileSystems.create(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def _save(registry: Registry, seed: int) -> str:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, len(SPEC.names))).astype(np.float32)
    booster = models.train(X, (X[:, seed % 3] > 0).astype(int), models.Params(3))
    meta = model_meta(SPEC, 0.5)
    return registry.save(booster, meta)


def test_beam_filesystems_reach_the_emulator(gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/a/b.bin"
    _write(uri, b"\x00hello")
    assert FileSystems.exists(uri)
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        assert f.read() == b"\x00hello"
    listed = FileSystems.match([f"gs://{gcs_bucket}/a/*"])[0].metadata_list
    assert [m.path for m in listed] == [uri]


def test_registry_on_gcs_saves_promotes_and_loads(gcs_bucket: str) -> None:
    registry = Registry(f"gs://{gcs_bucket}/models")
    first, second = _save(registry, 1), _save(registry, 2)
    assert registry.versions() == [first, second] and registry.champion() is None
    registry.promote(second)
    assert registry.load().version == second
    pointer = json.loads(FileSystems.open(registry.uri(CURRENT)).read())
    assert pointer["version"] == second
    again = Registry(f"gs://{gcs_bucket}/models", create=False)  # a worker's view
    assert again.current_version() == second and again.new_version() == "v0003"


def test_hot_swap_follows_a_gcs_promotion_and_refuses_a_broken_version(gcs_bucket, caplog):
    import logging

    from streaming.job.scoring import LiveModel

    registry = Registry(f"gs://{gcs_bucket}/models")
    registry.promote(_save(registry, 1))
    now = [0.0]
    live = LiveModel(registry.root, SPEC, "cpu", poll_s=1, clock=lambda: now[0])
    assert live.get().version == "v0001"

    registry.promote(_save(registry, 2))
    now[0] = 1
    assert live.get().version == "v0002"  # the next batch scores with the promoted model

    broken = _save(registry, 3)
    _write(registry.uri(broken, MODEL_FILE), b"not a model")
    registry.promote(broken)
    now[0] = 2
    with caplog.at_level(logging.ERROR, logger="streaming.job.scoring"):
        assert live.get().version == "v0002"
    assert "rejected, v0002 keeps scoring" in caplog.text

    _write(registry.uri(CURRENT), b"{not json")
    now[0] = 3
    assert live.get().version == "v0002"
    assert "pointer unreadable" in caplog.text


def test_a_missing_gcs_registry_is_a_clear_error(gcs_bucket: str) -> None:
    with pytest.raises(RegistryError, match="no such model directory"):
        Registry(f"gs://{gcs_bucket}/nothing-here", create=False)


def _upload(df, uri: str) -> str:
    with FileSystems.create(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        df.to_parquet(f)
    return uri


def test_train_reads_gcs_and_writes_and_promotes_a_version_there(gcs_bucket: str) -> None:
    """The daily retrain on GCP: the day's export and the registry both on ``gs://``."""
    df = validate(transactions(n=3_000, customers=80, terminals=60, days=42), SPEC)
    history = _upload(df, f"gs://{gcs_bucket}/exports/history.parquet")
    model_dir = f"gs://{gcs_bucket}/models"
    argv = ["train", "--input", history, "--train-end", "2018-05-11", "--train-days", "21",
            "--model-dir", model_dir, "--preset", SPEC.name]  # fmt: skip
    assert main(argv) == 0
    registry = Registry(model_dir, create=False)
    assert registry.current_version() == "v0001"
    for name in ("model.ubj", "meta.json", "drift_reference.json", "report.md"):
        assert FileSystems.exists(registry.uri("v0001", name)), name
    assert registry.load().features == SPEC.names


def test_bootstrap_writes_states_the_job_reads_from_gcs(gcs_bucket: str, tmp_path) -> None:
    from streaming.job.initial_states import InitialStates

    history = tmp_path / "history.parquet"
    validate(transactions(n=1_500, customers=40, terminals=30, days=20), SPEC).to_parquet(history)
    uri = f"gs://{gcs_bucket}/states/baseline.parquet"
    argv = ["bootstrap", "--input", str(history), "--output", uri, "--preset", SPEC.name,
            "--pseudonymise_ids", "off"]  # fmt: skip
    assert main(argv) == 0
    initial = InitialStates(uri, SPEC)
    info = initial.info()
    assert info.entities > 0 and info.spec == SPEC.name
    customers = initial.load(SPEC.entities[0])
    assert len(customers) == 40 and all(isinstance(v, bytes) for v in customers.values())


def test_backfill_from_gcs_to_gcs_equals_the_local_backfill(gcs_bucket: str) -> None:
    from features.backfill import backfill

    df = validate(transactions(n=800, customers=30, terminals=20, days=15), SPEC)
    halves = [_upload(part, f"gs://{gcs_bucket}/in/{i}.parquet") for i, part in
              enumerate((df.iloc[400:], df.iloc[:400]))]  # fmt: skip
    out = f"gs://{gcs_bucket}/out/features.parquet"
    argv = ["backfill", "--input", halves[0], "--input", halves[1], "--output", out,
            "--preset", SPEC.name]  # fmt: skip
    assert main(argv) == 0
    with FileSystems.open(out, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        written = pd.read_parquet(f)
    pd.testing.assert_frame_equal(written, backfill(df, SPEC).reset_index(drop=True))


def test_a_missing_gcs_input_is_a_clear_error(gcs_bucket: str, capsys) -> None:
    missing = f"gs://{gcs_bucket}/exports/nothing.parquet"
    argv = ["backfill", "--input", missing, "--output", f"gs://{gcs_bucket}/out.parquet"]
    assert main(argv) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err


def test_scored_files_on_gcs(gcs_bucket: str) -> None:
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from streaming.job.sinks import WriteScored
    from streaming.schema import read_scored
    from tests.streaming.test_scored_sink import FEATURES, scored_row

    directory = f"gs://{gcs_bucket}/scored"
    rows = [scored_row(i) for i in range(90)]
    for _ in range(2):  # the second run stands for a retried bundle: same files, no duplicate
        with TestPipeline() as p:
            _ = (
                p
                | beam.Create(rows)
                | beam.Map(lambda s: beam.window.TimestampedValue([s], s.tx.time_ns / 1e9))
                | WriteScored(FEATURES, directory=directory, clock=lambda: 0.0)
            )
    scored = read_scored(directory)
    assert sorted(scored["transaction_id"]) == list(range(90))


@pytest.mark.parametrize(
    "broken", ["no registry", "older registry", "unreadable pointer", "no state file"]
)
def test_a_bad_gcs_input_stops_the_launch_with_one_line(
    gcs_bucket: str, broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    models, states = f"gs://{gcs_bucket}/models", f"gs://{gcs_bucket}/states.parquet"
    if broken != "no registry":
        registry = Registry(models)
        version = _save(registry, 1)
        registry.promote(version)
        if broken == "older registry":  # `current` as the directory link an older version wrote
            _write(registry.uri(CURRENT, "meta.json"), b"{}")
        elif broken == "unreadable pointer":
            _write(registry.uri(CURRENT), b"v0001")
    argv = ["run", "--model_dir", models, "--preset", SPEC.name, "--pseudonymise_ids", "off",
            "--transactions_topic", "projects/p/topics/t",
            "--labels_topic", "projects/p/topics/l"]  # fmt: skip
    if broken == "no state file":
        argv += ["--initial_state", states]
    capsys.readouterr()  # the training's progress bar
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    expected = {
        "no registry": "no such model directory",
        "older registry": "older fraudstream",
        "unreadable pointer": "unreadable champion pointer",
        "no state file": "no such file",
    }[broken]
    assert expected in err


def test_a_sharded_export_on_gcs_is_read_through_a_glob(gcs_bucket: str, tmp_path) -> None:
    """``gs://.../tx-*.parquet``, as BigQuery writes an export past 1 GB: ``bootstrap`` reads
    every shard (states for every card), as from the one file they came from."""
    from streaming.job.initial_states import InitialStates

    df = validate(transactions(n=900, customers=30, terminals=20, days=10), SPEC)
    for i, part in enumerate((df.iloc[600:], df.iloc[:300], df.iloc[300:600])):
        _upload(part, f"gs://{gcs_bucket}/export/tx-{i:012d}.parquet")
    uri = f"gs://{gcs_bucket}/states/sharded.parquet"
    argv = ["bootstrap", "--input", f"gs://{gcs_bucket}/export/tx-*.parquet", "--output", uri,
            "--preset", SPEC.name, "--pseudonymise_ids", "off"]  # fmt: skip
    assert main(argv) == 0
    local = tmp_path / "states.parquet"
    whole = tmp_path / "whole.parquet"
    df.to_parquet(whole)
    argv = ["bootstrap", "--input", str(whole), "--output", str(local), "--preset", SPEC.name,
            "--pseudonymise_ids", "off"]  # fmt: skip
    assert main(argv) == 0
    sharded, single = InitialStates(uri, SPEC), InitialStates(str(local), SPEC)
    for entity in SPEC.entities:
        assert sharded.load(entity) == single.load(entity)


@pytest.mark.parametrize("name", ["tx.csv.gz", "tx.json", "tx.avro"])
def test_exports_in_other_formats_are_read_from_gcs(gcs_bucket: str, name: str) -> None:
    """A gzipped CSV, JSON lines and an Avro container on ``gs://`` read as the local file."""
    import gzip
    import io

    import fastavro

    from training.files import read_transactions

    df = validate(transactions(n=200, customers=10, terminals=8, days=3), SPEC)
    out = io.BytesIO()
    if name == "tx.avro":
        schema = {"type": "record", "name": "Root", "fields": [
            {"name": c, "type": "long"} for c in ("TRANSACTION_ID", "CUSTOMER_ID",
                                                  "TERMINAL_ID", "TX_FRAUD")
        ] + [{"name": "TX_DATETIME", "type": {"type": "long", "logicalType": "timestamp-micros"}},
             {"name": "TX_AMOUNT", "type": "double"}]}  # fmt: skip
        records = df.assign(TX_DATETIME=df["TX_DATETIME"].dt.tz_localize("UTC"))
        fastavro.writer(out, fastavro.parse_schema(schema), records.to_dict("records"))
    elif name == "tx.json":
        df.to_json(out, orient="records", lines=True, date_format="iso")
    else:
        with gzip.GzipFile(fileobj=out, mode="wb") as f:
            f.write(df.to_csv(index=False).encode())
    uri = f"gs://{gcs_bucket}/exports/{name}"
    _write(uri, out.getvalue())
    got = read_transactions([uri], SPEC)
    pd.testing.assert_frame_equal(got[SPEC.input_columns], df[SPEC.input_columns])
