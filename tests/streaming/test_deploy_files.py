"""The Dataflow deployment files agree with the code and the lock file.

* ``streaming/job/flex_template_metadata.json``, both ways: every template parameter is an
  option of :class:`FraudstreamOptions`, parsed from the ``--name=value`` flags the Flex Template
  launcher passes (through ``flex_main.template_argv``), and every option is a parameter or one
  of ``flex_main.RUN_ONLY_OPTIONS``; its regexes, choices and defaults are the options' own; the
  required parameters alone build the job for Dataflow.
* ``streaming/job/flex_main.py`` as the launcher runs it: every parameter that needs no Google
  Cloud at launch, plus the launcher's own flags, builds the job and translates it for the
  DataflowRunner (Beam's ``--dry_run``), nothing submitted and no connection attempted.
* ``Dockerfile``: the Python minor version of pyproject's ``requires-python``, the Beam version
  of ``uv.lock``, the uv version of the Makefile, Beam's boot as the ENTRYPOINT, a Flex
  Template entry file that exists, and the Java runtime and jar that expand
  ``WriteToBigQuery`` at launch (``scored_table``).
* ``.dockerignore``: environments, VCS, outputs, tests and secrets stay out of the build
  context, and everything the Dockerfile copies stays in.

Nothing here builds the image (that needs Docker and the network).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from apache_beam.io.gcp import bigquery
from apache_beam.options.pipeline_options import _BeamArgumentParser
from apache_beam.runners.direct.direct_runner import DirectRunner
from apache_beam.utils.subprocess_server import JavaJarServer
from packaging.specifiers import SpecifierSet

from features.presets import PRESETS
from streaming.job import flex_main
from streaming.job.options import FraudstreamOptions
from streaming.job.pipeline import build, pipeline_options
from streaming.store.names import PROFILES

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "streaming" / "job" / "flex_template_metadata.json"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# A valid value of every parameter (as the launcher passes it: a string), and an invalid one
# its regexes must refuse.
GOOD = {
    "transactions_subscription": "projects/acme-fraud/subscriptions/transactions",
    "labels_subscription": "projects/acme-fraud/subscriptions/labels",
    "alerts_topic": "projects/acme-fraud/topics/alerts",
    "dlq_topic": "projects/acme-fraud/topics/dead-letters",
    "model_dir": "gs://acme-fraud/fraudstream/models",
    "id_key_secret": "projects/acme-fraud/secrets/fraudstream-id-key/versions/1",
    "pseudonymise_ids": "off",
    "clear_ids_in_alerts": "true",
    "preset": "baseline",
    "threshold": "0.35",
    "device": "cuda",
    "scoring_batch_size": "2048",
    "model_poll_s": "30",
    "max_lateness_hours": "12.5",
    "initial_state": "gs://acme-fraud/states/default.parquet",
    "feature_store": "feast",
    "feature_store_profile": "gcp",
    "scored_dir": "gs://acme-fraud/fraudstream/scored",
    "scored_table": "acme-fraud:fraudstream.scored",
    "monitoring_topic": "projects/acme-fraud/topics/monitoring",
    "monitoring_window_s": "900",
    "scored_flush_s": "60",
    "ordering": "event_time",
    "naive_time_zone": "Europe/Paris",
    "strict_fields": "true",
    "pubsub_schemas": "true",
    "feature_repo": "/template/feature_repo",
    "feast_registry": "gs://acme-fraud/fraudstream/feast/registry.db",
    "bigtable_project": "acme-fraud",
    "bigtable_instance": "fraudstream",
}
BAD = {
    "transactions_subscription": "projects/acme-fraud/topics/transactions",
    "labels_subscription": "labels",
    "alerts_topic": "projects/acme-fraud/subscriptions/alerts",
    "dlq_topic": "dead-letters",
    "model_dir": "models/fraudstream",
    "id_key_secret": "projects/acme-fraud/secrets/fraudstream-id-key",
    "pseudonymise_ids": "hashed",
    "clear_ids_in_alerts": "yes",
    "preset": "fancy",
    "threshold": "1.5",
    "device": "gpu",
    "scoring_batch_size": "0",
    "model_poll_s": "soon",
    "max_lateness_hours": "-1",
    "initial_state": "states.parquet",
    "feature_store": "bigtable",
    "feature_store_profile": "prod",
    "scored_dir": "/tmp/scored",
    "scored_table": "acme-fraud.fraudstream.scored",
    "monitoring_topic": "projects/acme-fraud/topics/",
    "monitoring_window_s": "0",
    "scored_flush_s": "1.5",
    "ordering": "random",
    "naive_time_zone": "+02:00",
    "strict_fields": "1",
    "pubsub_schemas": "yes",
    "feature_repo": "feature_repo",
    "feast_registry": "/tmp/registry.db",
    "bigtable_project": "Acme",
    "bigtable_instance": "bt",
}
LAUNCH_NEEDS_GCP = {
    "initial_state": "the launch reads the file's header to check its spec and id key",
    "monitoring_topic": "the launch reads the champion's drift reference from model_dir",
    "scored_table": "the launch expands WriteToBigQuery with Beam's Java expansion service",
}
"""Parameters whose launch reads Google Cloud (or a jar this machine lacks): left out of the
offline dry run; scored_dir writes the scored events there instead of scored_table."""
LAUNCHER_FLAGS = [
    "--project=acme-fraud",
    "--region=europe-west1",
    "--temp_location=gs://acme-fraud/fraudstream/dataflow/temp",
    "--staging_location=gs://acme-fraud/fraudstream/dataflow/staging",
    "--sdk_container_image=europe-west1-docker.pkg.dev/acme-fraud/fraudstream/fraudstream:test",
    "--job_name=fraudstream-dry-run",
    "--service_account_email=fraudstream-worker@acme-fraud.iam.gserviceaccount.com",
]
"""The flags the Flex Template launcher adds to the parameters (the runner comes from
flex_main, as on the launcher)."""
EXPANSION_TARGET = "sdks:java:io:google-cloud-platform:expansion-service:build"
"""Beam's Gradle target of the expansion service that expands WriteToBigQuery's Storage Write
API."""
PARAM_TYPES = {
    "TEXT",
    "ENUM",
    "BOOLEAN",
    "PUBSUB_TOPIC",
    "PUBSUB_SUBSCRIPTION",
    "BIGQUERY_TABLE",
    "GCS_READ_FILE",
    "GCS_READ_FOLDER",
    "GCS_WRITE_FILE",
    "GCS_WRITE_FOLDER",
}


# ---- the Flex Template metadata ----


@cache
def _metadata() -> dict:
    return json.loads(METADATA.read_text())


def _params() -> dict[str, dict]:
    return {p["name"]: p for p in _metadata()["parameters"]}


def _option_actions() -> dict:
    """FraudstreamOptions' own options, by dest, on the parser Beam gives it."""
    parser = _BeamArgumentParser()
    FraudstreamOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _parsed(name: str, argv: list[str]) -> object:
    """Option ``name`` as the job reads it from the launcher's flags ``argv``."""
    options = FraudstreamOptions(flex_main.template_argv(argv))
    return getattr(options.view_as(FraudstreamOptions), name)


def _alternatives(regex: str) -> set[str]:
    m = re.fullmatch(r"\^\(([\w|]+)\)\$", regex)
    assert m, f"{regex!r} is not of the form ^(a|b|c)$"
    return set(m.group(1).split("|"))


def test_metadata_is_a_streaming_template_with_complete_parameters():
    meta = _metadata()
    assert meta["name"] and meta["description"]
    assert meta["streaming"] is True
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names)), "duplicate parameter names"
    for p in meta["parameters"]:
        assert p["label"] and p["helpText"], p["name"]
        assert isinstance(p["isOptional"], bool), p["name"]
        assert p.get("paramType", "TEXT") in PARAM_TYPES, p["name"]
        for regex in p.get("regexes", []):
            re.compile(regex)


def test_every_parameter_has_test_values():
    assert set(_params()) == set(GOOD) == set(BAD)


def test_every_parameter_is_an_option():
    assert set(_params()) - set(_option_actions()) == set()


def test_every_option_is_a_parameter_or_run_only():
    run_only = flex_main.RUN_ONLY_OPTIONS
    assert set(_option_actions()) - set(_params()) - set(run_only) == set()
    assert set(run_only) <= set(_option_actions()), "a run-only entry names no option"
    assert set(run_only) & set(_params()) == set(), "both a parameter and run-only"
    assert all(reason.strip() for reason in run_only.values())


@pytest.mark.parametrize("name", sorted(GOOD))
def test_parameter_is_an_option_the_launcher_flags_set(name):
    action = _option_actions().get(name)
    assert action is not None, f"FraudstreamOptions has no --{name}"
    value = GOOD[name]
    if name in flex_main.switches():
        expected = flex_main.SWITCH_VALUES[value]
    else:
        expected = action.type(value) if action.type else value
    assert _parsed(name, [f"--{name}={value}"]) == expected
    assert expected != action.default, f"GOOD[{name!r}] is the default: the test shows nothing"


@pytest.mark.parametrize("name", sorted(GOOD))
def test_regexes_accept_good_values_and_refuse_bad_ones(name):
    regexes = _params()[name].get("regexes", [])
    assert regexes, f"{name} has no regexes"
    assert all(re.fullmatch(r, GOOD[name]) for r in regexes), GOOD[name]
    assert not all(re.fullmatch(r, BAD[name]) for r in regexes), BAD[name]


def test_required_parameters():
    """The id key's secret is required: ids are pseudonymised by default, and the workers of a
    remote job read the key from Secret Manager."""
    required = {n for n, p in _params().items() if not p["isOptional"]}
    assert required == {
        "transactions_subscription",
        "labels_subscription",
        "model_dir",
        "id_key_secret",
    }


@pytest.mark.parametrize("name", sorted(n for n, p in _params().items() if "defaultValue" in p))
def test_defaults_are_the_options_defaults(name):
    action = _option_actions().get(name)
    assert action is not None, f"FraudstreamOptions has no --{name}"
    default = _params()[name]["defaultValue"]
    assert _parsed(name, [f"--{name}={default}"]) == action.default == _parsed(name, [])


def test_switches_are_the_boolean_parameters():
    switches = flex_main.switches()
    assert "clear_ids_in_alerts" in switches
    booleans = {n for n, p in _params().items() if p["paramType"] == "BOOLEAN"}
    assert switches - set(flex_main.RUN_ONLY_OPTIONS) == booleans
    for name in switches:
        param = _params()[name]
        assert param["paramType"] == "BOOLEAN"
        assert _alternatives(param["regexes"][0]) == set(flex_main.SWITCH_VALUES)


def test_template_argv_turns_boolean_parameters_into_switches():
    argv = flex_main.template_argv
    assert argv(["--clear_ids_in_alerts=true", "--preset=default"]) == [
        "--runner=DataflowRunner",
        "--clear_ids_in_alerts",
        "--preset=default",
    ]
    assert argv(["--runner=DataflowRunner", "--clear_ids_in_alerts=False"]) == [
        "--runner=DataflowRunner"
    ]
    assert argv(["--clear_ids_in_alerts"]) == ["--runner=DataflowRunner", "--clear_ids_in_alerts"]
    with pytest.raises(ValueError, match=r"--clear_ids_in_alerts: .* not 'yes'"):
        argv(["--clear_ids_in_alerts=yes"])


def test_preset_regex_lists_the_presets():
    assert _alternatives(_params()["preset"]["regexes"][0]) == set(PRESETS)


@pytest.mark.parametrize("name", ["feature_store", "device", "ordering", "pseudonymise_ids"])
def test_enums_are_the_options_choices(name):
    param = _params()[name]
    values = {o["value"] for o in param["enumOptions"]}
    assert param["paramType"] == "ENUM"
    assert values == set(_option_actions()[name].choices)
    assert _alternatives(param["regexes"][0]) == values


def test_feature_store_profile_regex_lists_the_profiles():
    param = _params()["feature_store_profile"]
    assert _alternatives(param["regexes"][0]) == set(PROFILES)
    assert set(_option_actions()["feature_store_profile"].choices) == set(PROFILES)


def test_every_choice_option_is_an_enum_or_a_regex_of_its_choices():
    for name, action in _option_actions().items():
        if action.choices and name in _params():
            assert _alternatives(_params()[name]["regexes"][0]) == set(action.choices), name


def test_flex_main_hands_its_arguments_to_the_pipeline_on_dataflow(monkeypatch):
    import streaming.job.pipeline

    seen = []
    monkeypatch.setattr(streaming.job.pipeline, "run", seen.append)
    flex_main.main(["--model_dir=/models", "--preset=baseline"])
    flex_main.main(["--runner=DirectRunner", "--model_dir=/models"])
    flex_main.main(["--runner", "DataflowRunner"])
    assert seen == [
        ["--runner=DataflowRunner", "--model_dir=/models", "--preset=baseline"],
        ["--runner=DirectRunner", "--model_dir=/models"],
        ["--runner", "DataflowRunner"],
    ]


def test_gcloud_builds_the_template_spec_from_the_metadata():
    """``gcloud dataflow flex-template build --print-only``, as docs/deploy.md runs it (offline:
    it prints the spec instead of uploading it), takes every parameter as written."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud (Google Cloud SDK) is not installed")
    image = "europe-west1-docker.pkg.dev/acme-fraud/fraudstream/fraudstream:test"
    done = subprocess.run(
        [gcloud, "dataflow", "flex-template", "build",
         "gs://acme-fraud/fraudstream/templates/fraudstream.json", f"--image={image}",
         "--sdk-language=PYTHON", f"--metadata-file={METADATA}", "--print-only",
         "--project=acme-fraud"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec = json.loads(yaml.safe_load(done.stdout))  # a YAML block holding the JSON spec
    assert spec["image"] == image
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"]["parameters"] == _metadata()["parameters"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every connection and name lookup Python attempts, refused and recorded: nothing here may
    call Google Cloud."""
    attempts: list[tuple] = []

    def refuse(*args: object, **kwargs: object):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_flex_main_translates_the_job_for_dataflow_without_submitting(no_network):
    """The launcher's run, dry: every parameter whose launch needs no Google Cloud (ids
    pseudonymised, the key named, not read) and the launcher's own flags build the job, and the
    DataflowRunner translates it into a streaming job on the image; ``--dry_run`` stops it
    before the Dataflow API."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.runner import PipelineState

    params = {n: v for n, v in GOOD.items() if n not in LAUNCH_NEEDS_GCP}
    params["pseudonymise_ids"] = "on"  # with clear_ids_in_alerts, as a real launch would
    argv = [f"--{n}={v}" for n, v in params.items()] + LAUNCHER_FLAGS + ["--dry_run=True"]

    result = flex_main.main(argv)

    assert no_network == []
    assert result.state == PipelineState.DONE  # a dry run: translated, nothing submitted
    job = result.job
    assert job.proto.name == "fraudstream-dry-run"
    assert job.proto.type_.name == "JOB_TYPE_STREAMING"
    options = job.options.view_as(FraudstreamOptions)
    for name, value in params.items():
        assert getattr(options, name) == _parsed(name, [f"--{name}={value}"]), name
    components = job.proto_pipeline.components
    (environment,) = components.environments.values()
    assert environment.urn == common_urns.environments.DOCKER.urn
    image = beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
    assert f"--sdk_container_image={image}" in LAUNCHER_FLAGS
    names = {t.unique_name for t in components.transforms.values()}
    wired = {"ReadTransactions", "ReadLabels", "ScoreTransactions", "WriteAlerts", "WriteDLQ"}
    wired |= {"WriteFeatures", "WriteScored"}
    wired |= {"ScoreTransactions/CustomerFeatures", "ScoreTransactions/JoinFeatures"}
    assert wired <= names
    assert "MonitorWindows" not in names  # no monitoring_topic


def test_flex_main_applies_the_images_service_overrides_while_it_builds(monkeypatch):
    """``$BEAM_SERVICE_OVERRIDES`` (set by the image) names the jar that expands
    WriteToBigQuery while the job is built, and only then."""
    import streaming.job.pipeline

    jar = "/opt/beam-jars/expansion-service.jar"
    monkeypatch.setenv("BEAM_SERVICE_OVERRIDES", json.dumps({EXPANSION_TARGET: jar}))
    seen = []
    monkeypatch.setattr(
        streaming.job.pipeline,
        "run",
        lambda argv: seen.append(JavaJarServer.path_to_beam_jar(EXPANSION_TARGET)),
    )
    flex_main.main(["--model_dir=/models"])
    assert seen == [jar]
    assert JavaJarServer.path_to_beam_jar(EXPANSION_TARGET) != jar


def test_the_required_parameters_alone_build_the_job_on_dataflow():
    """The job builds from the flags a launch with only the required parameters passes. The
    options name Dataflow, as the launcher's do; the pipeline object gets a local runner, so
    building checks nothing in Google Cloud, and nothing is submitted."""
    required = [f"--{n}={GOOD[n]}" for n, p in _params().items() if not p["isOptional"]]
    options = pipeline_options(["--runner=DataflowRunner", *required])
    outputs = build(beam.Pipeline(runner=DirectRunner(), options=options), options)
    assert set(outputs) == {"alerts", "dead_letter", "scored", "features"}


# ---- the Dockerfile ----


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_dockerfile_python_is_the_projects_minor_version():
    text = _dockerfile()
    found = {
        "beam image": re.findall(r"apache/beam_python(\d+\.\d+)_sdk:", text),
        "launcher image": [
            f"{a}.{b}" for a, b in re.findall(r"python(\d)(\d+)-template-launcher-base", text)
        ],
        "uv python install": re.findall(r"uv python install (\d+\.\d+)", text),
        "UV_PYTHON": re.findall(r"\bUV_PYTHON=(\d+\.\d+)", text),
    }
    assert all(found.values()), found
    minors = {v for vs in found.values() for v in vs}
    assert len(minors) == 1, found
    (minor,) = minors
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{minor}.0"), (minor, requires)


def test_dockerfile_beam_is_the_locked_beam():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    (locked,) = [p["version"] for p in lock["package"] if p["name"] == "apache-beam"]
    tags = re.findall(r"apache/beam_python\d+\.\d+_sdk:(\S+)", _dockerfile())
    assert tags and set(tags) == {locked}


def test_dockerfile_uv_is_the_makefiles_uv():
    (make_uv,) = re.findall(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert re.findall(r"ghcr\.io/astral-sh/uv:(\S+)", _dockerfile()) == [make_uv]


def test_dockerfile_installs_from_the_lock_with_the_gpu_extra_only():
    syncs = [args for word, args in _instructions() if word == "RUN" and "uv sync" in args]
    assert syncs
    for args in syncs:
        for command in re.findall(r"uv sync[^&;]*", args):
            assert "--frozen" in command and "--no-dev" in command, command
            assert re.findall(r"--extra[= ](\S+)", command) == ["gpu"], command
            assert "--all-extras" not in command, command
    assert not re.search(r"pip install[^&;]*-r ", _dockerfile()), "dependencies outside uv.lock"


def test_final_image_boots_beam_and_carries_the_launcher():
    final = _final_stage()
    entrypoints = [args for word, args in final if word == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["/opt/apache/beam/boot"]
    copies = [args.split() for word, args in final if word == "COPY"]
    assert ["/opt/apache/beam", "/opt/apache/beam"] in [c[-2:] for c in copies]
    assert any(c[-1] == "/opt/google/dataflow/python_template_launcher" for c in copies)
    env = " ".join(args for word, args in final if word == "ENV")
    # Beam's boot would otherwise run the SDK in a new venv that does not see /opt/venv.
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in env
    assert "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE" not in env


def test_flex_template_entry_file_is_flex_main():
    (py_file,) = re.findall(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", _dockerfile())
    workdirs = [args for word, args in _instructions() if word == "WORKDIR"]
    assert set(workdirs) == {"/template"}
    assert py_file.startswith("/template/")
    in_repo = REPO / py_file.removeprefix("/template/")
    assert in_repo.resolve() == Path(flex_main.__file__).resolve()


def _service_overrides() -> dict[str, str]:
    (value,) = re.findall(r"BEAM_SERVICE_OVERRIDES='([^']*)'", _dockerfile())
    return json.loads(value)


def test_image_carries_what_expands_write_to_bigquery_at_launch():
    """``scored_table``: the launcher expands WriteToBigQuery (Storage Write API) with Beam's
    Java expansion service, so the final image has a Java runtime, the service's jar of the
    locked Beam (fetched at build time, by Beam's own resolution) and the override that
    points Beam at it."""
    assert repr(EXPANSION_TARGET) in inspect.getsource(bigquery.StorageWriteToBigQuery)
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    (locked,) = [p["version"] for p in lock["package"] if p["name"] == "apache-beam"]
    jar = Path(_service_overrides()[EXPANSION_TARGET])
    beams_name = JavaJarServer.path_to_beam_jar(EXPANSION_TARGET, version=locked).rsplit("/")[-1]
    assert jar.name == beams_name and locked in jar.name
    fetches = [a for w, a in _instructions() if w == "RUN" and "local_jar(" in a]
    assert len(fetches) == 1 and repr(EXPANSION_TARGET) in fetches[0]
    assert f"cache_dir={str(jar.parent)!r}" in fetches[0]
    final = _final_stage()
    assert [str(jar.parent)] * 2 in [a.split()[-2:] for w, a in final if w == "COPY"]
    installs = " ".join(a for w, a in final if w == "RUN" and "apt-get install" in a)
    assert re.search(r"\bopenjdk-\d+-jre-headless\b", installs), installs


# ---- the .dockerignore ----


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex (``**`` any directories, ``*``/``?`` within one)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: it or a parent matches the
    last matching pattern, ``!`` patterns re-including."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".tools/bin/uv",
        ".numba_cache/features/kernels.nbi",
        ".emulators/pubsub.log",
        "out/demo/summary.json",
        ".git/config",
        "bench/results/latest.json",
        "tests/streaming/test_pipeline.py",
        "feature_repo/data/registry.db",
        "streaming/__pycache__/pipeline.cpython-311.pyc",
        "fraudstream.egg-info/PKG-INFO",
        ".env",
        "secrets/sa-key.json",
        "feature_repo/credentials.json",
    ],
)
def test_dockerignore_keeps_out(path):
    assert _ignored(path)


def test_everything_the_dockerfile_copies_from_the_context_exists_and_is_kept():
    sources = []
    for word, args in _instructions():
        if word == "ADD":
            pytest.fail("ADD fetches or unpacks; use COPY")
        if word == "COPY" and "--from=" not in args:
            sources += [s.removeprefix("./") for s in args.split()[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "uv.lock", "streaming", "features", "training"} <= set(sources)
    for source in sources:
        assert source not in (".", "*"), "the whole context is copied"
        assert (REPO / source).exists(), source
        assert not _ignored(source), f"{source} is copied but .dockerignore leaves it out"
