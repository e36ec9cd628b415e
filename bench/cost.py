"""Dataflow workers and Bigtable nodes for a transaction rate, from the pipeline benchmark's
cost per million transactions (:func:`bench.pipeline.cost_metrics`).

Every figure not measured here is a named constant with its source (published vendor figures,
or measurements by others), or is marked as a choice. The measured figures come from the local
runner, whose own per-element overhead is not Dataflow's: the job's stages are sized from their
measured CPU time, the runner's share from a published per-element figure (lower bound) and from
the local runner's measured share (upper bound).

Run: ``python -m bench.cost [results.json]`` (default ``bench/results/latest.json``) prints the
table of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BIGTABLE_DOCS = "https://cloud.google.com/bigtable/docs/performance"
BIGTABLE_SSD_WRITE_ROWS_PER_S = 14_000
"""Rows written per second per SSD node, 1 KB rows ("Performance for typical workloads",
:data:`BIGTABLE_DOCS`); a node serves this many writes *or* the reads below."""
BIGTABLE_SSD_READ_ROWS_PER_S = 17_000
"""Rows read per second per SSD node, 1 KB rows (:data:`BIGTABLE_DOCS`)."""
BIGTABLE_LATENCY_HEADROOM = 2.0
"""Google's capacity guidance for latency-sensitive applications: plan at least twice the peak
load, so the cluster stays under 50 % CPU (the "Plan your Bigtable capacity" part of
:data:`BIGTABLE_DOCS`, quoted at https://github.com/ghdrako/doc_snipets/wiki/GCS-Bigtable)."""

BEAM_PYTHON_US_PER_ELEMENT_STEP = 1.43
"""The Beam Python SDK's per-element overhead of one step in a fused stage: 1.43 µs measured by
Beam's developers with their map-function microbenchmark
(https://github.com/apache/beam/pull/4741, comment of 2018-03-20). A lower bound for the
runner's share on Dataflow: it leaves out the shuffles before keyed steps (coding, state)."""
STEPS_PER_TRANSACTION = 9
"""Element-steps one transaction and its label pass through in the job's graph (counted from
``streaming.job.pipeline.build`` with the scored sink and the online store on, preset
``default``): a transaction through read, parse (which pseudonymises and keys it), flatten and
the two entity states (5); its label through read, parse, flatten and the terminal's state, the
one entity state that reads labels (4). The steps after the entity states (split, RunInference,
alerts, the feature writer, the scored sink) take a bundle's rows as one element, a few
elements a bundle of hundreds: not counted."""

WORKER_VCPUS = 4
"""A choice: vCPUs per Dataflow worker (e.g. ``n2-standard-4``); the table scales with it."""
WORKER_TARGET_UTILISATION = 0.7
"""A choice: the CPU share a worker is sized to use, headroom for bursts and catch-up."""
RATES = (1_000, 10_000, 100_000)
"""Transactions per second of the sizing table."""


@dataclass(frozen=True)
class Sizing:
    """What one transaction rate needs."""

    tps: int
    workers_low: int
    """Dataflow workers with the runner's share at :data:`BEAM_PYTHON_US_PER_ELEMENT_STEP`."""
    workers_high: int
    """Dataflow workers with the runner's share as measured on the local runner."""
    bigtable_nodes: int
    """SSD nodes at the published throughput."""
    bigtable_nodes_low_latency: int
    """SSD nodes with :data:`BIGTABLE_LATENCY_HEADROOM`."""


def workers(
    tps: float,
    cpu_s_per_million: float,
    vcpus: int = WORKER_VCPUS,
    utilisation: float = WORKER_TARGET_UTILISATION,
) -> int:
    """Workers whose ``vcpus`` at ``utilisation`` give ``tps`` transactions per second the CPU
    time they need (``cpu_s_per_million`` CPU seconds per million); at least one."""
    if vcpus < 1 or not 0 < utilisation <= 1:
        raise ValueError(f"need vcpus >= 1 and 0 < utilisation <= 1, got {vcpus}, {utilisation}")
    cores = tps * cpu_s_per_million / 1e6
    return max(1, math.ceil(cores / (vcpus * utilisation)))


def bigtable_nodes(
    tps: float,
    rows_written_per_million: float,
    rows_read_per_million: float,
    headroom: float = 1.0,
) -> int:
    """SSD nodes for ``tps`` transactions per second writing and reading that many rows per
    million: a node's writes and reads share its capacity (the published figures are for writes
    *or* reads), so their fractions add; times ``headroom``; at least one."""
    load = (
        tps
        / 1e6
        * (
            rows_written_per_million / BIGTABLE_SSD_WRITE_ROWS_PER_S
            + rows_read_per_million / BIGTABLE_SSD_READ_ROWS_PER_S
        )
    )
    return max(1, math.ceil(load * headroom - 1e-9))


def dataflow_cpu_s_per_million(metrics: Mapping[str, float]) -> tuple[float, float]:
    """CPU seconds per million transactions on Dataflow, (low, high): the job's stages as
    measured, plus the runner's share at the published per-element overhead (low) or as the
    local runner measured it (high)."""
    stages = float(metrics["job_cpu_s_per_million"])
    low = stages + STEPS_PER_TRANSACTION * BEAM_PYTHON_US_PER_ELEMENT_STEP  # µs/tx = s/million
    return low, stages + float(metrics["runner_cpu_s_per_million"])


def sizing(metrics: Mapping[str, float], rates: Sequence[int] = RATES) -> list[Sizing]:
    """The sizing table of ``metrics`` (the pipeline benchmark's cost keys)."""
    low, high = dataflow_cpu_s_per_million(metrics)
    written = float(metrics["bigtable_rows_mutated_per_million"])
    read = float(metrics.get("bigtable_rows_read_per_million", 0.0))
    return [
        Sizing(
            tps,
            workers(tps, low),
            workers(tps, high),
            bigtable_nodes(tps, written, read),
            bigtable_nodes(tps, written, read, BIGTABLE_LATENCY_HEADROOM),
        )
        for tps in rates
    ]


def markdown(rows: Sequence[Sizing]) -> str:
    """The sizing table as markdown."""
    lines = [
        "| transactions/s | Dataflow workers | Bigtable SSD nodes (at 2× headroom) |",
        "|---|---|---|",
    ]
    for r in rows:
        span = (
            f"{r.workers_low}"
            if r.workers_low == r.workers_high
            else (f"{r.workers_low}–{r.workers_high}")
        )
        lines.append(
            f"| {r.tps:,} | {span} | {r.bigtable_nodes} ({r.bigtable_nodes_low_latency}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", default="bench/results/latest.json")
    args = parser.parse_args(argv)
    metrics = json.loads(Path(args.results).read_text())
    if metrics.get("job_cpu_s_per_million") is None:
        print(f"{args.results}: no cost figures (run the pipeline benchmark)", file=sys.stderr)
        return 1
    print(markdown(sizing(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
