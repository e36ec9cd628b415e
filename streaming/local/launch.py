"""The streaming job on a local runner, tuned, until Ctrl-C or SIGTERM stops it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from streaming.job.pipeline import build, pipeline_options
from streaming.local.runner import (
    collect_young_less_often,
    freeze_startup_objects,
    tune_local_runner,
)

log = logging.getLogger(__name__)


def run_local(
    argv: Sequence[str] | None = None,
    build_fn: Callable[[beam.Pipeline, PipelineOptions], object] = build,
) -> None:
    """Run the job on the local runner ``argv`` names (default: ``BundleBasedDirectRunner``)
    with the patches of :mod:`streaming.local.runner`, until it is stopped; Ctrl-C or SIGTERM
    cancels it."""
    # A shell starts background jobs (``cmd &``, nohup) with SIGINT ignored, and Python keeps
    # an ignored SIGINT: restore Ctrl-C's KeyboardInterrupt, the job's documented stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tune_local_runner()
    p = beam.Pipeline(options=local_options(argv))
    build_fn(p, p.options)
    freeze_startup_objects()  # after build: imports, the model and Feast are loaded
    collect_young_less_often()
    result = p.run()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        log.info("stopping the pipeline")
        result.cancel()
    finally:
        signal.signal(signal.SIGTERM, previous)


def local_options(argv: Sequence[str] | None = None) -> PipelineOptions:
    """The job's options (:func:`~streaming.job.pipeline.pipeline_options`) on the local runner,
    with its bundles unstacked.

    By default the DirectRunner stacks consecutive outputs of a bundle that share a timestamp,
    windows and pane into one entry, which saves memory where many do (a batch ``Create``). Each
    of the job's events carries its own event time, so nothing stacks, yet every output of every
    step pays for the comparisons: about a sixth of a step's cost per element.
    """
    options = pipeline_options(argv)
    options.view_as(DirectOptions).direct_runner_use_stacked_bundle = False
    return options


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
