"""The DirectRunner's scheduling, without running steps on bundles that hold nothing.

Every ParDo evaluation hands on a bundle per output, empty or not, and the runner schedules each
consumer on each of them: a step with no dead letters still runs ``DeadLetters``, its message
step and its Pub/Sub write, each with a fresh copy of its DoFn (``setup``, ``start_bundle``,
``finish_bundle``, ``teardown``) and a watermark refresh, for every bundle of the step before.
In the job on a live stream about a third of all step runs had empty input.

:func:`skip_empty_bundles` schedules ParDo and Flatten steps on bundles with elements only.
Nothing else depends on those runs: an empty bundle never holds a watermark (the runner does not
count it as pending), a watermark advance is carried downstream when the step that made it
completes, and timers fire in runs of their own. Groupings, reads and the test stream keep every
bundle. Beam promises no number of bundles, so a DoFn sees no difference but fewer empty ones.
"""

from __future__ import annotations

from typing import Any

from streaming.local.runner.guard import Replaced, patch_once

_EX = "apache_beam.runners.direct.executor"
_WM = "apache_beam.runners.direct.watermark_manager"
_TE = "apache_beam.runners.direct.transform_evaluator"
REPLACED = (
    Replaced(f"{_EX}:_ExecutorServiceParallelExecutor.schedule_consumers", "5c15aecb5546afe6"),
    # relied on: empty output bundles are never pending at their consumers
    Replaced(f"{_WM}:WatermarkManager._update_pending", "c8334079a68db11d"),
    # relied on: how a step's evaluator is chosen (the first class of its MRO registered)
    Replaced(f"{_TE}:TransformEvaluatorRegistry.get_evaluator", "5abce2c8d9c4b102"),
)


@patch_once(
    "skip_empty_bundles",
    f"{_EX}:_ExecutorServiceParallelExecutor",
    "_fraudstream_skips_empty",
    REPLACED,
)
def skip_empty_bundles() -> None:
    """Patch the DirectRunner to run ParDo and Flatten steps only on bundles with elements.
    Idempotent; returns whether the runner is patched (False: Beam is not what the patch was
    written for)."""
    from apache_beam.runners.direct import executor as ex

    cls = ex._ExecutorServiceParallelExecutor

    def schedule_consumers(self: Any, committed_bundle: Any) -> None:
        consumers = self.value_to_consumers.get(committed_bundle.pcollection, ())
        empty = not committed_bundle.has_elements()
        for applied_ptransform in consumers:
            if empty and _element_wise(self, applied_ptransform):
                continue
            self.schedule_consumption(
                applied_ptransform, committed_bundle, [], self.default_completion_callback
            )

    cls.schedule_consumers = schedule_consumers


def _element_wise(executor: Any, applied: Any) -> bool:
    """Whether the runner evaluates ``applied`` as a ParDo or a Flatten (remembered per step)."""
    known = executor.__dict__.setdefault("_fraudstream_element_wise", {})
    found = known.get(applied)
    if found is None:
        from apache_beam.runners.direct import transform_evaluator as te

        registered = executor.transform_evaluator_registry._evaluators
        evaluator = next(
            (registered[c] for c in type(applied.transform).mro() if c in registered), None
        )
        found = known[applied] = evaluator in (te._ParDoEvaluator, te._FlattenEvaluator)
    return found
