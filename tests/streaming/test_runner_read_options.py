"""The local runner's Pub/Sub read evaluator: the project read from the options once per run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from apache_beam.io.gcp.pubsub import _PubSubSource
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from apache_beam.runners.direct import transform_evaluator as te

from streaming.local.runner import read_options

_BEAMS_INIT = te._PubSubReadEvaluator.__init__  # as collected, before any test patches it
SUBSCRIPTION = "projects/demo-project/subscriptions/tx-sub"


class _Context:
    """An evaluation context as far as the read's constructor uses it."""

    def __init__(self, project: str | None) -> None:
        self.pipeline_options = PipelineOptions([f"--project={project}"] if project else [])

    def get_execution_context(self, applied: object) -> SimpleNamespace:
        return SimpleNamespace(get_step_context=lambda: None)


def _evaluator(context: _Context, source: _PubSubSource) -> te._PubSubReadEvaluator:
    applied = SimpleNamespace(transform=SimpleNamespace(_source=source), outputs={})
    return te._PubSubReadEvaluator(context, applied, None, None)


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch applied for the test, Beam's constructor restored after it."""
    cls = te._PubSubReadEvaluator
    monkeypatch.setattr(cls, "__init__", _BEAMS_INIT)
    monkeypatch.setattr(cls, "_fraudstream_remembers_project", False, raising=False)
    assert read_options.remember_read_project()


def test_every_bundles_evaluator_reads_the_subscription_and_the_options_once(
    patched, monkeypatch: pytest.MonkeyPatch
):
    views = []
    view_as = PipelineOptions.view_as
    monkeypatch.setattr(
        PipelineOptions, "view_as", lambda self, cls: views.append(cls) or view_as(self, cls)
    )
    context = _Context("demo-project")
    source = _PubSubSource(subscription=SUBSCRIPTION)
    evaluators = [_evaluator(context, source) for _ in range(3)]
    assert {e._sub_name for e in evaluators} == {SUBSCRIPTION}
    assert all(e.source is source for e in evaluators)
    assert views == [GoogleCloudOptions]
    assert read_options.options_project(context) == "demo-project"


def test_the_project_is_each_runs_own_and_none_without_one(patched):
    first, second, none = _Context("one"), _Context("two"), _Context(None)
    assert [read_options.options_project(c) for c in (first, second, none)] == ["one", "two", None]
    assert read_options.options_project(type("Bare", (), {})()) is None  # no options


def test_an_id_label_is_refused_as_beam_refuses_it(patched):
    source = _PubSubSource(subscription=SUBSCRIPTION, id_label="id")
    with pytest.raises(NotImplementedError, match="id_label"):
        _evaluator(_Context("p"), source)


def test_the_options_project_is_what_beam_reads(patched):
    context = _Context("demo-project")
    assert (
        read_options.options_project(context)
        == context.pipeline_options.view_as(GoogleCloudOptions).project
    )
