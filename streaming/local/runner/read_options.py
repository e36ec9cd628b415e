"""The DirectRunner's Pub/Sub read evaluator, without parsing the pipeline options each bundle.

``_PubSubReadEvaluator.__init__`` runs for every bundle of a Pub/Sub read and asks the pipeline
options for the project (``view_as(GoogleCloudOptions)``), which builds an argparse parser of
every Google Cloud option each time: about a twentieth of a local job's time on the runner's
thread. The options do not change while a pipeline runs, so :func:`remember_read_project` asks
once per evaluation context (one per run); the evaluator is otherwise Beam's.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from streaming.local.runner.guard import Replaced, patch_once

_TE = "apache_beam.runners.direct.transform_evaluator"
REPLACED = (Replaced(f"{_TE}:_PubSubReadEvaluator.__init__", "9b5ea2fec7506478"),)

_lock = threading.Lock()
_projects: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


@patch_once(
    "remember_read_project",
    f"{_TE}:_PubSubReadEvaluator",
    "_fraudstream_remembers_project",
    REPLACED,
)
def remember_read_project() -> None:
    """Patch ``_PubSubReadEvaluator.__init__`` to read the options' project once per run
    (idempotent). Returns whether it is patched (False: Beam is not what the patch was written
    for)."""
    from apache_beam.runners.direct import transform_evaluator as te

    cls = te._PubSubReadEvaluator

    def __init__(
        self: Any,
        evaluation_context: Any,
        applied_ptransform: Any,
        input_committed_bundle: Any,
        side_inputs: Any,
    ) -> None:
        assert not side_inputs
        te._TransformEvaluator.__init__(
            self, evaluation_context, applied_ptransform, input_committed_bundle, side_inputs
        )
        self.source = self._applied_ptransform.transform._source
        if self.source.id_label:
            raise NotImplementedError("DirectRunner: id_label is not supported for PubSub reads")
        sub_project = options_project(self._evaluation_context) or self.source.project
        self._sub_name = self.get_subscription(
            self._applied_ptransform,
            self.source.project,
            self.source.topic_name,
            sub_project,
            self.source.subscription_name,
        )

    cls.__init__ = __init__


def options_project(context: Any) -> str | None:
    """The Google Cloud project of ``context``'s pipeline options (None without options or a
    project), worked out on the first call for each context."""
    try:
        return _projects[context]
    except KeyError:
        pass
    project = None
    if hasattr(context, "pipeline_options"):
        from apache_beam.options.pipeline_options import GoogleCloudOptions

        project = context.pipeline_options.view_as(GoogleCloudOptions).project
    with _lock:
        _projects[context] = project
    return project
