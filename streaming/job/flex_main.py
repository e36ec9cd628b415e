"""Dataflow Flex Template entry point: ``python streaming/job/flex_main.py --name=value ...``.

Why a file of its own: the Flex Template launcher runs a Python *file* (the image's
``FLEX_TEMPLATE_PYTHON_PY_FILE``, see the Dockerfile) with the template's parameters as
``--name=value`` flags; it cannot run the ``fraudstream run`` console script or ``python -m``.
This file hands those flags to :func:`streaming.job.pipeline.run`, so the template and
``fraudstream run`` build the same job from the same options. The one difference: the
template is for Dataflow, so without a ``--runner`` flag it asks for the DataflowRunner
(``run`` alone would pick the local runner). ``run`` returns once the job is submitted, as
the launcher needs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

RUNNER = "DataflowRunner"


def template_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--runner=DataflowRunner`` first unless it names a runner."""
    argv = list(argv)
    if any(a == "--runner" or a.startswith("--runner=") for a in argv):
        return argv
    return [f"--runner={RUNNER}", *argv]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the streaming job with ``argv`` (``sys.argv[1:]`` by default)."""
    from streaming.job.pipeline import run

    run(template_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    # Run as a script, Python puts this file's directory (streaming/job/) first on sys.path, where
    # its modules (options, pipeline, ...) could shadow top-level packages of the same name.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    logging.basicConfig(level=logging.INFO)
    main()
