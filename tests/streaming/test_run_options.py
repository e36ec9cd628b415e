"""`fraudstream run` options: what a launch checks locally and what it leaves to remote workers."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.pipeline import build

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
