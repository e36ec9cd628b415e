"""The job as Dataflow receives it, translated offline from a template launch.

Each launch runs in a child process: it calls ``flex_main.main`` with the template's parameters
and the launcher's flags plus Beam's ``--dry_run=True`` (the DataflowRunner translates the job
into its runner API pipeline, then returns without calling the Dataflow API), writes that
pipeline and what it finds of the local-runner patches, and exits. A child of its own because
the tests of the local runner patch Beam inside the pytest process: that must neither leak into
nor hide what a template launch does.

Checked on the translated pipeline, for both orderings:

* the stages carry the labels of the README's diagram (Dataflow's in-place update matches steps
  by label, so a renamed stage is a breaking change);
* every stateful ParDo (:mod:`streaming.job.arrival`, :mod:`streaming.job.event_time`,
  :mod:`streaming.job.join`) reads ``KV[int, ...]`` with a deterministic key coder (varint), not
  a pickled one;
* the Pub/Sub reads take the event time from the ``event_time`` attribute, and read the
  messages' attributes with ``--pubsub_schemas``;
* no local-runner patch (:mod:`streaming.local.runner`) was applied, and the check sees one
  that was.

Nothing here reaches Google Cloud: the registry is a local directory with a champion's pointer
and drift reference (a remote launch loads no model), the id key is named, not read.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from features import presets
from training.drift import reference_profile, save_reference
from training.registry import Registry

REPO = Path(__file__).resolve().parents[2]
SPEC = presets.DEFAULT
IMAGE = "europe-west1-docker.pkg.dev/acme-fraud/fraudstream/fraudstream:graph"
SUBSCRIPTIONS = {
    "transactions_subscription": "projects/acme-fraud/subscriptions/fraudstream-transactions-job",
    "labels_subscription": "projects/acme-fraud/subscriptions/fraudstream-labels-job",
}
TOPICS = {
    "alerts_topic": "projects/acme-fraud/topics/fraudstream-alerts",
    "dlq_topic": "projects/acme-fraud/topics/fraudstream-dlq",
    "monitoring_topic": "projects/acme-fraud/topics/fraudstream-monitoring",
}
PARAMETERS = {
    **SUBSCRIPTIONS,
    **TOPICS,
    "id_key_secret": "projects/acme-fraud/secrets/fraudstream-id-key/versions/1",
    "clear_ids_in_alerts": "true",
    "scored_dir": "gs://acme-fraud/fraudstream/scored",
    "feature_store": "feast",
    "feature_store_profile": "gcp",
    "feast_registry": "gs://acme-fraud/fraudstream/feast/registry.db",
    "bigtable_project": "acme-fraud",
    "bigtable_instance": "fraudstream",
}
"""Every stage on: all outputs, pseudonymised ids, the online store (model_dir and ordering are
added per launch)."""
LAUNCHER_FLAGS = [
    "--project=acme-fraud",
    "--region=europe-west1",
    "--temp_location=gs://acme-fraud/fraudstream/dataflow/temp",
    "--staging_location=gs://acme-fraud/fraudstream/dataflow/staging",
    f"--sdk_container_image={IMAGE}",
    "--job_name=fraudstream-graph",
    "--dry_run=True",
]

TOP_LEVEL = {
    "ReadTransactions",
    "ReadLabels",
    "ScoreTransactions",
    "AlertMessages",
    "WriteAlerts",
    "DeadLetterMessages",
    "WriteDLQ",
    "WriteFeatures",
    "MonitorWindows",
    "MonitoringMessages",
    "WriteMonitoring",
    "WriteScored",
}
CORE = {
    "ParseTransactions",
    "ParseLabels",
    "Events",
    "SplitRejected",
    "Score",
    "Alerts",
    "DeadLetters",
}
ENTITY_STAGES = {
    "arrival": {"EntityFeatures"},
    "event_time": {
        "CustomerFeatures",
        "TerminalFeatures",
        "EntityBlocks",
        "JoinFeatures",
        "BatchRows",
    },
}
"""ScoreTransactions' stages besides :data:`CORE`, by ``--ordering``."""
LOOKUP_STAGES = {"EnrichFromFeatureStore"}
"""ScoreTransactions' stages besides those, for a preset with batch features (lookups)."""
IN_THE_DIAGRAM = (
    TOP_LEVEL | CORE | ENTITY_STAGES["arrival"] | ENTITY_STAGES["event_time"] | LOOKUP_STAGES
) - {
    "AlertMessages",
    "DeadLetterMessages",
    "MonitoringMessages",
    "WriteMonitoring",
    "DeadLetters",
    "EntityBlocks",
    "BatchRows",
}
"""The labels the README's diagram of the job names (the others are its plumbing)."""
STATEFUL = {
    "arrival": {
        "ScoreTransactions/EntityFeatures/CustomerFeatures",
        "ScoreTransactions/EntityFeatures/TerminalFeatures",
    },
    "event_time": {
        "ScoreTransactions/CustomerFeatures/State",
        "ScoreTransactions/TerminalFeatures/State",
        "ScoreTransactions/JoinFeatures/Join",
    },
}
"""The stateful ParDos of each ordering, keyed by card, terminal or join bucket (ints)."""
PATCHED_MODULES = (
    "apache_beam.io.gcp.pubsub",
    "apache_beam.runners.direct.executor",
    "apache_beam.runners.direct.transform_evaluator",
    "apache_beam.runners.direct.watermark_manager",
    "apache_beam.transforms.window",
)
"""The Beam modules whose code :mod:`streaming.local.runner` replaces."""
DETERMINISTIC_KEYS = {
    common_urns.coders.VARINT.urn,
    common_urns.coders.BYTES.urn,
    common_urns.coders.STRING_UTF8.urn,
    common_urns.coders.BOOL.urn,
}


# ---- the child process ----


def dry_run_in_this_process(out: str, argv: list[str]) -> None:
    """Launch the template dry with ``argv``; write the translated pipeline to
    ``out/pipeline.pb`` and the job and this process's state to ``out/launch.json``."""
    from streaming.job import flex_main

    result = flex_main.main(argv)
    Path(out, "pipeline.pb").write_bytes(result.job.proto_pipeline.SerializeToString())
    job = {"name": result.job.proto.name, "type": result.job.proto.type_.name}
    Path(out, "launch.json").write_text(json.dumps({"job": job, **patches_in_this_process()}))


def patch_local_runner_in_this_process(out: str) -> None:
    """Apply the local runner's patches as ``run_local`` does; write what
    :func:`patches_in_this_process` then finds to ``out/launch.json``."""
    from streaming.local.runner import (
        collect_young_less_often,
        freeze_startup_objects,
        tune_local_runner,
    )

    applied = tune_local_runner()
    freeze_startup_objects(later=lambda delay, call: None)
    collect_young_less_often()
    Path(out, "launch.json").write_text(
        json.dumps({"applied": applied, **patches_in_this_process()})
    )


def patches_in_this_process() -> dict[str, object]:
    """What the local-runner patches leave behind: the ``_fraudstream*`` marks they set on what
    they patch, Beam functions and methods defined by fraudstream code, the local tooling's
    modules, and objects frozen out of the garbage collector."""
    for replaced in PATCHED_MODULES:  # loaded, or nothing of them would be seen
        importlib.import_module(replaced)

    marks, foreign = [], []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("apache_beam"):
            continue
        places = [(name, vars(module))]
        places += [
            (f"{name}.{v.__qualname__}", vars(v))
            for v in list(vars(module).values())
            if isinstance(v, type) and v.__module__ == name
        ]
        for where, namespace in places:
            for attr, value in list(namespace.items()):
                if attr.startswith("_fraudstream"):
                    marks.append(f"{where}.{attr}")
                function = getattr(value, "__func__", value)  # classmethod, staticmethod
                if callable(function) and str(getattr(function, "__module__", "")).startswith(
                    ("streaming", "features", "training")
                ):
                    foreign.append(f"{where}.{attr} = {function.__module__}")
    return {
        "marks": sorted(marks),
        "foreign": sorted(foreign),
        "local_modules": sorted(m for m in sys.modules if m.startswith("streaming.local")),
        "gc_frozen": gc.get_freeze_count(),
        "gc_young_threshold": gc.get_threshold()[0],
    }


def _child(out: Path, call: str, *args: str) -> dict:
    """Run ``call(out, *args)`` of this module in a fresh Python; its ``launch.json``."""
    code = (
        "import json, sys\n"
        "from tests.streaming import test_dataflow_graph as graph\n"
        f"graph.{call}(sys.argv[1], *map(json.loads, sys.argv[2:]))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(out / "nb"))}
    env.pop("FRAUDSTREAM_ID_KEY", None)  # a remote launch must not need it
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "launch.json").read_text())


# ---- the launches ----


def registry(root: Path, preset: str) -> Path:
    """A registry whose champion has what a remote launch reads: its pointer and its drift
    reference (``--monitoring_topic``); the workers would load the model."""
    spec = presets.get(preset)
    X = np.random.default_rng(0).normal(size=(64, len(spec.names)))
    version = root / "v0001"
    version.mkdir(parents=True)
    (version / "meta.json").write_text(json.dumps({"preset": spec.name, "features": spec.names}))
    save_reference(reference_profile(X, spec.names), version)
    Registry(str(root)).promote("v0001")
    return root


class Launch:
    """A dry template launch: its translated pipeline and what its process held."""

    def __init__(self, ordering: str, preset: str, schemas: bool, out: Path) -> None:
        models = registry(out / "models", preset)
        params = {**PARAMETERS, "model_dir": str(models), "ordering": ordering, "preset": preset,
                  "pubsub_schemas": str(schemas).lower()}  # fmt: skip
        argv = [f"--{n}={v}" for n, v in params.items()] + LAUNCHER_FLAGS
        self.ordering, self.preset, self.schemas = ordering, preset, schemas
        self.process = _child(out, "dry_run_in_this_process", json.dumps(argv))
        self.pipeline = beam_runner_api_pb2.Pipeline.FromString((out / "pipeline.pb").read_bytes())
        self.components = self.pipeline.components

    def transform(self, label: str) -> beam_runner_api_pb2.PTransform:
        (found,) = [t for t in self.components.transforms.values() if t.unique_name == label]
        return found

    def children(self, transform: beam_runner_api_pb2.PTransform) -> set[str]:
        """The labels of a composite's own stages (without its prefix)."""
        names = (self.components.transforms[s].unique_name for s in transform.subtransforms)
        return {n.rsplit("/", 1)[-1] for n in names}

    def coder(self, coder_id: str) -> tuple:
        """A coder as ``(urn, components...)``, nested."""
        coder = self.components.coders[coder_id]
        return (coder.spec.urn, *(self.coder(c) for c in coder.component_coder_ids))

    def stateful(self) -> dict[str, tuple]:
        """Every ParDo with state or timers -> the coder of its main input."""
        out = {}
        for t in self.components.transforms.values():
            if t.spec.urn != common_urns.primitives.PAR_DO.urn:
                continue
            payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
            if payload.state_specs or payload.timer_family_specs:
                (main,) = [p for tag, p in t.inputs.items() if tag not in payload.side_inputs]
                out[t.unique_name] = self.coder(self.components.pcollections[main].coder_id)
        return out

    def by_urn(self, urn: str) -> dict[str, bytes]:
        return {t.unique_name: t.spec.payload for t in self.components.transforms.values()
                if t.spec.urn == urn}  # fmt: skip


LAUNCHES = [
    ("arrival", SPEC.name, False),
    ("event_time", SPEC.name, False),
    ("arrival", "enriched", True),
]
"""(ordering, preset, pubsub_schemas) of each launch: both orderings, and a preset with batch
features reading messages with their attributes (Pub/Sub schema topics)."""


@pytest.fixture(
    scope="module", params=LAUNCHES, ids=[f"{o}-{p}{'-schemas' * s}" for o, p, s in LAUNCHES]
)
def launch(request, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    ordering, preset, schemas = request.param
    return Launch(ordering, preset, schemas, tmp_path_factory.mktemp(f"{ordering}-{preset}"))


# ---- the checks ----


def test_a_streaming_job_of_stateful_steps_on_the_image(launch: Launch):
    assert launch.process["job"] == {"name": "fraudstream-graph", "type": "JOB_TYPE_STREAMING"}
    (environment,) = launch.components.environments.values()
    assert environment.urn == common_urns.environments.DOCKER.urn
    payload = beam_runner_api_pb2.DockerPayload.FromString(environment.payload)
    assert payload.container_image == IMAGE
    assert common_urns.requirements.REQUIRES_STATEFUL_PROCESSING.urn in launch.pipeline.requirements


def test_the_stages_have_the_labels_of_the_readme_diagram(launch: Launch):
    (root,) = launch.pipeline.root_transform_ids
    assert launch.children(launch.components.transforms[root]) == TOP_LEVEL
    core = launch.children(launch.transform("ScoreTransactions"))
    lookups = LOOKUP_STAGES if presets.get(launch.preset).lookups else set()
    assert core == CORE | ENTITY_STAGES[launch.ordering] | lookups
    readme = (REPO / "README.md").read_text()
    assert {name for name in IN_THE_DIAGRAM if name not in readme} == set()


def test_stateful_stages_are_keyed_by_int_with_a_deterministic_coder(launch: Launch):
    stateful = launch.stateful()
    assert STATEFUL[launch.ordering] <= set(stateful)
    for label in STATEFUL[launch.ordering]:
        kv, key, _value = stateful[label]
        assert (kv, key) == (common_urns.coders.KV.urn, (common_urns.coders.VARINT.urn,)), label
    for label, (kv, key, *_) in stateful.items():
        assert kv == common_urns.coders.KV.urn and key[0] in DETERMINISTIC_KEYS, (label, key)


def test_pubsub_reads_take_event_time_from_the_attribute_and_writes_hit_the_topics(launch):
    reads = {
        label.split("/")[0]: beam_runner_api_pb2.PubSubReadPayload.FromString(payload)
        for label, payload in launch.by_urn(common_urns.composites.PUBSUB_READ.urn).items()
    }
    attrs = launch.schemas
    assert {k: (r.subscription, r.timestamp_attribute, r.with_attributes)
            for k, r in reads.items()} == {
        "ReadTransactions": (SUBSCRIPTIONS["transactions_subscription"], "event_time", attrs),
        "ReadLabels": (SUBSCRIPTIONS["labels_subscription"], "event_time", attrs),
    }  # fmt: skip
    writes = {
        label.split("/")[0]: beam_runner_api_pb2.PubSubWritePayload.FromString(payload).topic
        for label, payload in launch.by_urn(common_urns.composites.PUBSUB_WRITE.urn).items()
    }
    assert writes == {
        "WriteAlerts": TOPICS["alerts_topic"],
        "WriteDLQ": TOPICS["dlq_topic"],
        "WriteMonitoring": TOPICS["monitoring_topic"],
    }


def test_a_template_launch_applies_no_local_runner_patch(launch: Launch):
    from streaming.local.runner.collector import YOUNG_THRESHOLD  # not in the launch's process

    process = launch.process
    assert process["marks"] == []
    assert process["foreign"] == []
    assert process["local_modules"] == []
    assert process["gc_frozen"] == 0
    assert process["gc_young_threshold"] != YOUNG_THRESHOLD  # Python's own


def test_the_patch_check_sees_the_local_runner_patches(tmp_path: Path):
    """The check above, in a process where ``run_local``'s patches were applied."""
    from streaming.local.runner.collector import YOUNG_THRESHOLD  # not in the check's process

    process = _child(tmp_path, "patch_local_runner_in_this_process")
    applied = [name for name, done in process["applied"].items() if done]
    assert applied, "no patch fits this Beam: the check has nothing to see"
    assert len(process["marks"]) >= len(applied)
    assert process["foreign"]
    assert "streaming.local.runner" in process["local_modules"]
    assert process["gc_frozen"] > 0
    assert process["gc_young_threshold"] == YOUNG_THRESHOLD
