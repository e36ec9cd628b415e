"""`fraudstream run` options: what a launch checks locally and what it leaves to remote workers."""

from __future__ import annotations

import logging

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.job.pipeline import build

SUBS = ["--transactions_subscription", "projects/demo-project/subscriptions/tx",
        "--labels_subscription", "projects/demo-project/subscriptions/labels"]  # fmt: skip


def _build(args: list[str]) -> None:
    options = PipelineOptions(args)
    build(beam.Pipeline(runner="DirectRunner", options=options), options)


def test_a_remote_launch_leaves_the_model_to_the_workers_but_needs_the_key_secret(monkeypatch):
    monkeypatch.delenv("FRAUDSTREAM_ID_KEY", raising=False)
    remote = ["--runner", "DataflowRunner", "--model_dir", "/models/not/here", *SUBS]
    with pytest.raises(ValueError, match="--id_key_secret is required on a remote runner"):
        _build(remote)
    _build(
        [*remote, "--id_key_secret", "projects/demo-project/secrets/id-key/versions/1"]
    )  # no I/O


def test_a_local_launch_checks_the_model_and_the_key_first(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAUDSTREAM_ID_KEY", raising=False)
    with pytest.raises(ValueError, match="id pseudonymisation needs a key"):
        _build(["--model_dir", str(tmp_path / "none"), *SUBS])
    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", "ab" * 32)
    with pytest.raises(ValueError, match="no such model directory"):
        _build(["--model_dir", str(tmp_path / "none"), *SUBS])
    with pytest.raises(ValueError, match="--clear_ids_in_alerts needs --pseudonymise_ids on"):
        _build(["--pseudonymise_ids", "off", "--clear_ids_in_alerts", "--model_dir",
                str(tmp_path), *SUBS])  # fmt: skip


def test_a_launch_checks_the_initial_state_file_against_the_spec_and_the_key(tmp_path, monkeypatch):
    from features import presets
    from streaming.batch.bootstrap import write_states

    monkeypatch.setenv("FRAUDSTREAM_ID_KEY", "ab" * 32)
    job = ["--model_dir", str(tmp_path / "none"), "--preset", "baseline", *SUBS]
    with pytest.raises(ValueError, match=r"--initial_state .*missing\.parquet: no such file"):
        _build([*job, "--initial_state", str(tmp_path / "missing.parquet")])
    path = str(tmp_path / "states.parquet")
    write_states(path, {}, presets.DEFAULT, 0)
    with pytest.raises(ValueError, match="written for spec 'default'"):
        _build([*job, "--initial_state", path])
    write_states(path, {}, presets.BASELINE, 0)  # clear ids, the job pseudonymises
    with pytest.raises(ValueError, match="keyed by clear ids, the job by key"):
        _build([*job, "--initial_state", path])
    with pytest.raises(ValueError, match="no such model directory"):  # the file is fine
        _build([*job, "--pseudonymise_ids", "off", "--initial_state", path])


@pytest.mark.parametrize(
    ("flag", "meant"),
    [("--alert_topic", "--alerts_topic"), ("--model-dir", "--model_dir"),
     ("--transaction_subscription", "--transactions_subscription"),
     ("--scored_dirs", "--scored_dir")],
)  # fmt: skip
def test_run_refuses_a_near_miss_of_a_job_option_in_one_line(flag, meant, capsys):
    from streaming.cli import main

    assert main(["run", *SUBS, f"{flag}=projects/demo-project/topics/a"]) == 2
    err = capsys.readouterr().err
    assert err == f"fraudstream run: error: unknown option {flag}: did you mean {meant}?\n"


def test_beam_options_and_unlike_flags_pass_to_beam():
    from streaming.cli import check_job_flags

    dataflow = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
                "--temp_location", "gs://b/tmp", "--streaming", "--sdk_container_image", "img",
                "--machine_type", "n1-standard-4", "--experiments=use_runner_v2",
                "--dataflow_service_options", "worker_accelerator=type:t4;count:1",
                "--max_num_workers", "4", "--save_main_session", "--job_name", "fraud"]  # fmt: skip
    check_job_flags([*dataflow, *SUBS, "--alerts_topic", "projects/p/topics/alerts"])
    check_job_flags([*SUBS, "--some_runner_flag", "1"])  # Beam warns and discards it


def test_a_scored_files_flush_period_under_a_second_is_refused_at_launch(tmp_path):
    job = ["--model_dir", str(tmp_path / "none"), "--scored_dir", str(tmp_path), *SUBS]
    with pytest.raises(ValueError, match=r"--scored_flush_s must be at least 1 \(seconds\), got 0"):
        _build([*job, "--scored_flush_s", "0"])


def test_a_launch_with_beams_state_cache_on_warns_that_it_weighs_every_write(tmp_path, caplog):
    job = ["--model_dir", str(tmp_path / "none"), *SUBS]
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError):  # then: no key here
        _build([*job, "--max_cache_memory_usage_mb", "100"])
    assert "--max_cache_memory_usage_mb 100" in caplog.text and "leave the cache off" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError):
        _build(job)
    assert "max_cache_memory_usage_mb" not in caplog.text
