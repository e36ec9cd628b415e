"""``fraudstream setup``: everything the job needs, created once (a second run changes nothing),
on the emulators; the names the README's recipe uses; environment checks. The ``gcp`` profile
makes the same client calls on a real project and is not exercised here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from streaming import setup
from streaming.cli import build_parser, check_job_flags, main
from streaming.local import emulators as emu
from streaming.store.feast_store import StoreSettings, scratch_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = emu.DEFAULT_PROJECT


@pytest.fixture
def all_emulators(emulators, gcs_emulator) -> None:
    """Pub/Sub, Bigtable and GCS, with their variables set."""


def _status_lines(err: str) -> dict[str, str]:
    """``kind name`` -> state, from setup's progress lines."""
    found = re.findall(r"^setup: (.+): (created|applied|exists)$", err, re.MULTILINE)
    return dict(found)


def test_setup_creates_everything_once_then_reports_it_exists(
    all_emulators, unique_name, tmp_path, capsys
):
    from google.cloud import pubsub_v1, storage

    repo = scratch_repo(tmp_path / "repo", unique_name("setup").replace("-", "_"))
    bucket = unique_name("setup-bucket")
    topics = {kind: unique_name(kind) for kind in setup.TOPIC_KINDS}
    argv = ["setup", "--feature_repo", str(repo),
            "--feast_registry", f"gs://{bucket}/fraudstream/registry.db",
            *[a for kind, name in topics.items() for a in (f"--{kind}_topic", name)]]  # fmt: skip

    assert main(argv) == 0
    first = capsys.readouterr()
    states = _status_lines(first.err)
    assert len(states) == 2 * len(topics) + 3  # topics, subscriptions, bucket, table, registry
    assert set(states.values()) == {"created", "applied"}
    assert states[f"bucket gs://{bucket}"] == "created"
    assert [k for k, v in states.items() if v == "applied"] == [
        next(k for k in states if k.startswith("feast registry gs://"))
    ]
    assert f"{len(states)} created or applied, 0 existed" in first.out

    assert main(argv) == 0  # again: nothing to do
    second = capsys.readouterr()
    assert _status_lines(second.err) == dict.fromkeys(states, "exists")
    assert f"0 created or applied, {len(states)} existed" in second.out

    subscriber = pubsub_v1.SubscriberClient()
    for name in topics.values():
        sub = subscriber.get_subscription(subscription=f"projects/{PROJECT}/subscriptions/{name}")
        assert sub.topic == f"projects/{PROJECT}/topics/{name}"
    assert storage.Client(project=PROJECT).lookup_bucket(bucket) is not None
    settings = StoreSettings("emulator", str(repo), f"gs://{bucket}/fraudstream/registry.db")
    assert setup.registry_changes(settings) == []  # the registry holds every definition
    store = settings.feature_store()
    assert {v.name for v in store.list_feature_views()} >= {"customer_features"}

    # the printed `fraudstream run` options name what was created and are the job's own
    flags = shlex.split(second.out.split("run the job with:", 1)[1].replace("\\\n", " "))
    assert flags[:2] == ["fraudstream", "run"]
    options = dict(zip(flags[2::2], flags[3::2], strict=False))
    tx = options["--transactions_subscription"]
    assert tx == f"projects/{PROJECT}/subscriptions/{topics['transactions']}"
    assert options["--dlq_topic"] == f"projects/{PROJECT}/topics/{topics['dlq']}"
    assert options["--feast_registry"] == f"gs://{bucket}/fraudstream/registry.db"
    check_job_flags(flags[2 : flags.index("--model_dir")])  # no near miss of a job option


def test_a_table_gone_since_the_last_setup_is_created_again(
    emulators, unique_name, tmp_path, capsys
):
    from streaming.store.bigtable import codec
    from streaming.store.bigtable.admin import TableAdmin

    repo = scratch_repo(tmp_path / "repo", unique_name("gone").replace("-", "_"))
    settings = StoreSettings("emulator", str(repo))
    outcomes = setup.ensure_feast(settings, 30.0, lambda line: None)
    assert [o.state for o in outcomes] == ["created", "applied"]
    config = settings.repo_config()
    assert TableAdmin(config.online_store).delete(codec.table_name(config.project))
    outcomes = setup.ensure_feast(settings, 30.0, lambda line: None)
    assert [o.state for o in outcomes] == ["created", "exists"]


def test_a_subscription_on_another_topic_is_refused(pubsub_emulator, unique_name):
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    name, other = unique_name("tx"), unique_name("other")
    publisher.create_topic(name=f"projects/{PROJECT}/topics/{other}")
    subscriber.create_subscription(
        name=f"projects/{PROJECT}/subscriptions/{name}", topic=f"projects/{PROJECT}/topics/{other}"
    )
    with pytest.raises(setup.CloudError, match=f"exists on topic .*{other}, not .*{name}"):
        setup.ensure_pubsub(PROJECT, {"transactions": name}, 10.0)


def test_setup_with_unreachable_emulators_fails_in_one_line(monkeypatch, capsys, tmp_path):
    for variable in setup.EMULATOR_ENV.values():
        monkeypatch.setenv(variable, f"127.0.0.1:{emu.free_port()}")  # nobody there
    assert main(["setup", "--feature_repo", str(tmp_path), "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fraudstream setup: cannot reach the emulators (")


def test_the_emulator_profile_needs_the_emulators_and_gcp_refuses_them(monkeypatch, capsys):
    for variable in setup.EMULATOR_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert main(["setup"]) == 2
    err = capsys.readouterr().err
    assert "needs PUBSUB_EMULATOR_HOST, BIGTABLE_EMULATOR_HOST" in err
    assert "STORAGE_EMULATOR_HOST" not in err  # only with a bucket
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    assert main(["setup", "--feature_store_profile", "gcp", "--project", "p"]) == 2
    assert "with PUBSUB_EMULATOR_HOST set would use the emulator" in capsys.readouterr().err


def test_the_defaults_are_the_names_of_the_readme_recipe():
    """`fraudstream setup` then the README's `fraudstream run` works as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    recipe = readme.split("## Running locally", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^fraudstream run (.*?)\n```", recipe, re.MULTILINE | re.DOTALL)
    assert command, "no `fraudstream run` in the README's Running locally recipe"
    used = shlex.split(command.group(1).replace("\\\n", " "))
    used = dict(zip(used[::2], used[1::2], strict=False))
    flags = setup.run_flags(setup.SetupConfig())
    ours = dict(zip(flags[::2], flags[1::2], strict=True))
    shared = {k: v for k, v in used.items() if k in ours}
    assert {"--transactions_subscription", "--labels_subscription", "--alerts_topic",
            "--dlq_topic", "--feature_store_profile"} <= set(shared)  # fmt: skip
    assert shared == {k: ours[k] for k in shared}
    topics = re.findall(r"projects/([\w-]+)/topics/", recipe)
    assert set(topics) == {setup.SetupConfig().resolved_project()}


def test_the_readme_recipes_replay_parses_and_feeds_setups_topics():
    """The README's `fraudstream replay` is a valid command line for the topics `setup` made,
    starting where the history it names ends, with the labels the bootstrapped states await."""
    readme = (REPO_ROOT / "README.md").read_text()
    recipe = readme.split("## Running locally", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^fraudstream replay (.*?)\n(?!    )", recipe, re.MULTILINE | re.DOTALL)
    assert command, "no `fraudstream replay` in the README's Running locally recipe"
    words = shlex.split(command.group(1).replace("\\\n", " "))
    args = build_parser().parse_args(["replay", *words])
    config = setup.SetupConfig()
    assert args.project == config.resolved_project()
    assert (args.transactions_topic, args.labels_topic) == (
        config.topics["transactions"],
        config.topics["labels"],
    )
    assert args.input == ["HISTORY.parquet", "FEED.parquet"] and args.pending_labels
    assert f"cut at\n{args.start}" in recipe or f"cut at {args.start}" in recipe


def test_gcp_names_come_from_the_flags_or_the_profiles_variables(monkeypatch):
    monkeypatch.delenv(setup.GCP_PROJECT_ENV, raising=False)
    with pytest.raises(ValueError, match="gcp profile needs --project"):
        setup.SetupConfig(profile="gcp").resolved_project()
    monkeypatch.setenv(setup.GCP_PROJECT_ENV, "my-project")
    config = setup.SetupConfig(profile="gcp", feast_registry="gs://b/fraudstream/registry.db")
    assert config.resolved_project() == "my-project"
    assert config.store_settings().bigtable_project == "my-project"
    assert config.bucket_name() == "b"
    flags = setup.run_flags(config)
    assert flags[:6] == ["--runner", "DataflowRunner", "--project", "my-project",
                         "--temp_location", "gs://b/tmp"]  # fmt: skip
    assert "projects/my-project/subscriptions/transactions" in flags


def test_resource_names_are_ids_or_paths_of_their_project():
    assert setup.resource_path("p", "topics", "tx") == "projects/p/topics/tx"
    assert setup.resource_id("p", "topics", "projects/p/topics/tx") == "tx"
    with pytest.raises(ValueError, match="not in project 'p'"):
        setup.resource_id("p", "topics", "projects/q/topics/tx")
    with pytest.raises(ValueError, match="not a projects/PROJECT/topics/NAME path"):
        setup.resource_path("p", "topics", "projects/p/subscriptions/tx")
