"""Dataflow Flex Template entry point: ``python streaming/job/flex_main.py --name=value ...``.

Why a file of its own: the Flex Template launcher runs a Python *file* (the image's
``FLEX_TEMPLATE_PYTHON_PY_FILE``, see the Dockerfile) with the template's parameters as
``--name=value`` flags, followed by its own (``--project``, ``--region``, ``--temp_location``,
``--staging_location``, ``--sdk_container_image``, ``--job_name``, ...); it cannot run the
``fraudstream run`` console script or ``python -m``. This file hands those flags to
:func:`streaming.job.pipeline.run`, so the template and ``fraudstream run`` build the same job
from the same options. The differences, all in :func:`template_argv` and :func:`main`:

* the template is for Dataflow, so without a ``--runner`` flag it asks for the DataflowRunner
  (``run`` alone would pick the local runner);
* a BOOLEAN parameter arrives as ``--name=true`` or ``--name=false``, which an on/off option
  (``action="store_true"``) refuses: it becomes the bare flag, or nothing;
* Beam's service overrides (``--beam_services``, ``$BEAM_SERVICE_OVERRIDES``: the image points
  the BigQuery expansion service at the jar it carries) apply while the job is built.

``run`` returns once the job is submitted, as the launcher needs. With ``--dry_run=True``
(Beam's test option) the DataflowRunner translates the job and returns without submitting it;
the tests use that to check the launch offline.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apache_beam.runners.runner import PipelineResult

RUNNER = "DataflowRunner"

RUN_ONLY_OPTIONS: dict[str, str] = {
    "transactions_topic": "a template reads the transactions_subscription it requires: reading a "
    "topic makes Dataflow create a subscription that lives and dies with the job, so events "
    "published while no job runs are lost and a drained or updated job cannot resume; "
    "`fraudstream run` reads topics for local runs and tests",
    "labels_topic": "as transactions_topic: a template reads the labels_subscription it requires",
}
"""Options of :class:`~streaming.job.options.FraudstreamOptions` that are not parameters of
the Flex Template (``flex_template_metadata.json``), each with why; every other option is one."""

SWITCH_VALUES = {"true": True, "false": False}
"""The values of a BOOLEAN template parameter, as the launcher passes them (case ignored)."""


@cache
def switches() -> frozenset[str]:
    """The job's on/off options (``action="store_true"``: a bare flag sets them), by name."""
    import argparse

    from streaming.job.options import FraudstreamOptions

    parser = argparse.ArgumentParser()
    FraudstreamOptions._add_argparse_args(parser)
    return frozenset(
        a.dest for a in parser._actions if a.nargs == 0 and a.const is True and a.dest != "help"
    )


def template_argv(argv: Sequence[str]) -> list[str]:
    """The launcher's flags as the job's options parse them: ``--runner=DataflowRunner`` first
    unless ``argv`` names a runner, and each ``--switch=true`` as ``--switch``, each
    ``--switch=false`` dropped. ValueError names a switch given another value."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--") and name[2:] in switches():
            if value.lower() not in SWITCH_VALUES:
                raise ValueError(f"{name}: a template switch is true or false, not {value!r}")
            if SWITCH_VALUES[value.lower()]:
                out.append(name)
            continue
        out.append(arg)
    if any(a == "--runner" or a.startswith("--runner=") for a in out):
        return out
    return [f"--runner={RUNNER}", *out]


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    """Build the job from the launcher's flags (``sys.argv[1:]`` by default) and submit it;
    returns the runner's result once submitted (with ``--dry_run=True``: once translated)."""
    from apache_beam.options.pipeline_options import CrossLanguageOptions, PipelineOptions
    from apache_beam.utils.subprocess_server import JavaJarServer

    from streaming.job.pipeline import run

    args = template_argv(sys.argv[1:] if argv is None else argv)
    # Beam applies these overrides only inside `with beam.Pipeline(...)`, which also waits for
    # the job to end; the template submits a streaming job and returns, so they apply here,
    # around the build that expands cross-language transforms (WriteToBigQuery).
    services = PipelineOptions(args).view_as(CrossLanguageOptions).beam_services
    with JavaJarServer.beam_services(services or {}):
        return run(args)


if __name__ == "__main__":
    # Run as a script, Python puts this file's directory (streaming/job/) first on sys.path, where
    # its modules (options, pipeline, ...) could shadow top-level packages of the same name.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    logging.basicConfig(level=logging.INFO)
    main()
