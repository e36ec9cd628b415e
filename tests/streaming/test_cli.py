"""The ``fraudstream`` command: one flag spelling, hidden aliases, presets as choices, and one
line with a non-zero exit (never a traceback) when a cloud resource is missing or unreachable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError

from features.presets import PRESETS
from features.synthetic import transactions
from streaming import cli, setup
from streaming.cli import build_parser, main
from streaming.local import emulators as emu

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("backfill", "bootstrap", "demo", "parity", "evaluate", "train", "retrain", "promote",
            "materialize", "features", "batch-features", "batch-features-beam", "monitor",
            "setup", "replay", "simulate", "emulators")  # fmt: skip


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_in_help_is_snake_case(command, capsys):
    flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", _help(command, capsys)))
    assert flags, command
    assert [f for f in flags if "-" in f[2:]] == []


OLD_AND_NEW = [
    (["demo", "--train-days", "28"], ["demo", "--train_days", "28"]),
    (["evaluate", "--input", "x", "--train-start", "2018-05-01", "--train-days", "14",
      "--no-tune", "--no-feedback"],
     ["evaluate", "--input", "x", "--train_start", "2018-05-01", "--train_days", "14",
      "--no_tune", "--no_feedback"]),
    (["train", "--input", "x", "--train-end", "2018-06-01", "--train-days", "56",
      "--model-dir", "m", "--cards-per-day", "50"],
     ["train", "--input", "x", "--train_end", "2018-06-01", "--train_days", "56",
      "--model_dir", "m", "--cards_per_day", "50"]),
    (["retrain", "--input", "x", "--model-dir", "m"],
     ["retrain", "--input", "x", "--model_dir", "m"]),
    (["promote", "--model-dir", "m"], ["promote", "--model_dir", "m"]),
    (["monitor", "--scored", "s", "--model-dir", "m"],
     ["monitor", "--scored", "s", "--model_dir", "m"]),
    (["materialize", "--input", "x", "--profile", "emulator", "--repo", "r"],
     ["materialize", "--input", "x", "--feature_store_profile", "emulator", "--feature_repo", "r"]),
    (["replay", "--input", "x", "--project", "p", "--topic", "t", "--labels-topic", "l",
      "--label-delay-days", "3"],
     ["replay", "--input", "x", "--project", "p", "--transactions_topic", "t", "--labels_topic",
      "l", "--label_delay_days", "3"]),
    (["emulators", "status", "--state-dir", "d"], ["emulators", "status", "--state_dir", "d"]),
    (["setup", "--profile", "gcp"], ["setup", "--feature_store_profile", "gcp"]),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), OLD_AND_NEW, ids=[o[0] + o[1] for o, _ in OLD_AND_NEW])
def test_the_old_spellings_are_hidden_aliases(old, new, capsys):
    parser = build_parser()
    assert parser.parse_args(old) == parser.parse_args(new)
    text = _help(old[0], capsys)
    for flag in (a for a in old if a.startswith("--") and a not in new):
        assert flag not in text.split(), flag  # accepted, not listed


def test_one_concept_has_one_spelling_across_commands(capsys):
    for command in ("train", "retrain", "promote", "monitor"):
        assert "--model_dir" in _help(command, capsys)
    for command in ("demo", "evaluate", "train", "retrain"):
        assert "--train_days" in _help(command, capsys)
    for command in ("replay", "setup"):
        text = _help(command, capsys)
        assert "--transactions_topic" in text and "--labels_topic" in text
    for command in ("materialize", "setup"):
        text = _help(command, capsys)
        assert "--feature_store_profile" in text and "--feature_repo" in text


@pytest.mark.parametrize("command", ["backfill", "bootstrap", "demo", "parity", "evaluate",
                                     "train", "retrain", "materialize"])  # fmt: skip
def test_presets_are_choices(command, capsys):
    assert "{" + ",".join(PRESETS) + "}" in _help(command, capsys)
    assert main([command, "--input", "x", "--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "option"),
    [("train", "--train_end"), ("evaluate", "--train_start"), ("replay", "--start"),
     ("simulate", "--start"), ("batch-features", "--as_of")],
)  # fmt: skip
def test_a_date_option_that_is_no_date_is_refused_by_name(command, option, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([command, "--input", "x", "--model_dir", "m", option, "2018-13-01"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert re.search(f"argument {option}(/[-a-z]+)?: not a date: '2018-13-01'", err)
    assert "month must be in" in err
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--input", "x", option, "soon"])
    assert "not a date: 'soon'" in capsys.readouterr().err


def test_date_options_keep_what_was_given():
    args = ["train", "--input", "x", "--model_dir", "m", "--train_end", "2018-05-15T00:00"]
    assert build_parser().parse_args(args).train_end == "2018-05-15T00:00"


def test_evaluate_trains_on_84_days_unless_told_and_says_how_to_get_the_handbooks(capsys):
    parser = build_parser()
    args = ["evaluate", "--input", "x", "--train_start", "2018-05-01"]
    assert parser.parse_args(args).train_days == 84
    assert parser.parse_args([*args, "--train_days", "7"]).train_days == 7
    assert "7 reproduces the handbook" in " ".join(_help("evaluate", capsys).split())


# ---------------------------------------------------------------- cloud errors, one line


def test_cloud_errors_become_one_line_that_says_what_to_do():
    creds = setup.cloud_error(DefaultCredentialsError("Your default credentials were not found"))
    assert creds is not None and "gcloud auth application-default login" in creds
    assert "PUBSUB_EMULATOR_HOST" in creds
    missing = setup.cloud_error(gexc.NotFound("Resource not found (resource=tx)"))
    assert missing is not None and "resource=tx" in missing and "fraudstream setup" in missing
    denied = setup.cloud_error(gexc.PermissionDenied("no pubsub.topics.get\non it"))
    assert denied is not None and denied.startswith("permission denied") and "\n" not in denied
    gone = gexc.RetryError("Timeout of 3.0s exceeded", gexc.ServiceUnavailable("refused"))
    assert (setup.cloud_error(gone) or "").startswith("cannot reach")
    assert setup.cloud_error(RuntimeError("a bug")) is None
    assert setup.cloud_error(ValueError("bad value")) is None


def test_a_cloud_error_is_found_down_the_chain_and_in_raw_grpc_errors():
    class Unavailable(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "failed to connect\nto all addresses"

    try:
        try:
            raise Unavailable()
        except grpc.RpcError as exc:
            raise RuntimeError("the read failed") from exc
    except RuntimeError as wrapped:
        line = setup.cloud_error(wrapped)
    assert line is not None and "failed to connect to all addresses" in line and "\n" not in line


def test_main_reports_a_cloud_error_in_one_line_and_lets_a_bug_raise(monkeypatch, capsys):
    def failing(error: BaseException):
        def run(args: object) -> int:
            raise error

        return run

    monkeypatch.setattr(cli, "_run_promote", failing(gexc.NotFound("404 Topic not found")))
    assert main(["promote", "--model_dir", "m"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fraudstream promote: not found: ")
    monkeypatch.setattr(cli, "_run_promote", failing(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # its traceback is wanted
        main(["promote", "--model_dir", "m"])


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "tx.parquet"
    transactions(n=60, days=5).to_parquet(path)
    return path


def test_replay_without_emulator_or_credentials_says_so_in_one_line(history, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in setup.EMULATOR_ENV.values()}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env["CLOUDSDK_CONFIG"] = str(tmp_path / "gcloud")  # no application default credentials
    env["NO_GCE_CHECK"] = "True"  # not on Compute Engine: no metadata server to ask
    argv = ["replay", "--input", str(history), "--project", "demo-project",
            "--transactions_topic", "transactions", "--labels_topic", "labels"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "streaming.cli", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fraudstream replay: no Google credentials: ")
    assert "gcloud auth application-default login" in lines[0]


def test_replay_to_a_missing_topic_names_it(pubsub_emulator, unique_name, history, capsys):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    labels = publisher.create_topic(name=publisher.topic_path("demo-project", unique_name("l")))
    missing = unique_name("missing")
    argv = ["replay", "--input", str(history), "--project", "demo-project",
            "--transactions_topic", missing, "--labels_topic", labels.name]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"topic projects/demo-project/topics/{missing} not found" in err
    assert "fraudstream setup" in err


def test_an_unreachable_pubsub_fails_in_one_line_within_the_retry_budget(
    history, monkeypatch, capsys
):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{emu.free_port()}")  # nobody there
    monkeypatch.setattr(setup, "CHECK_BUDGET_S", 1.0)
    argv = ["replay", "--input", str(history), "--project", "demo-project",
            "--topic", "transactions", "--labels-topic", "labels"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fraudstream replay: cannot reach the emulators (PUBSUB_EMULATOR_HOST=")
    assert "Timeout of 1.0s exceeded" in err


def test_a_job_stopped_by_a_cloud_error_says_what_to_do_without_a_traceback(
    monkeypatch, capsys, caplog
):
    def run_local(args: object) -> None:
        try:
            raise DefaultCredentialsError("Your default credentials were not found")
        except DefaultCredentialsError as exc:
            raise RuntimeError("the Pub/Sub read failed") from exc

    monkeypatch.setattr("streaming.local.launch.run_local", run_local)
    subs = ["--transactions_subscription", "projects/p/subscriptions/t",
            "--labels_subscription", "projects/p/subscriptions/l"]  # fmt: skip
    assert main(["run", *subs]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fraudstream run: the pipeline failed: no Google credentials: ")
    assert err.count("\n") == 1
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= 20]  # debug only
