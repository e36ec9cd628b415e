"""``run_local``: it stops on SIGINT even where its parent started it with SIGINT ignored, as a
shell does for a background job (``cmd &``, nohup): the local job's stop is Ctrl-C's signal; and
its options."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from apache_beam.options.pipeline_options import DirectOptions
from google.cloud import pubsub_v1

from streaming.job.options import FraudstreamOptions
from streaming.job.pipeline import pipeline_options
from streaming.local import job_process as lj
from streaming.local.launch import local_options

ROOT = Path(__file__).resolve().parents[2]  # where ``python -m bench.pipeline`` resolves


def _start_with_sigint_ignored(command: list[str], log) -> subprocess.Popen:
    """Start ``command`` as a shell starts a background job: SIGINT ignored at its exec (an
    ignored signal stays ignored across exec). Ignored here, around the start, not in a
    ``preexec_fn``: that forks this process while gRPC's threads run, and the child can abort
    before its exec."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_job_started_with_sigint_ignored_stops_on_sigint(pubsub_emulator, tmp_path: Path):
    topics = lj.Topics.create("launch")
    args = ["--transactions_subscription", topics.subscriptions["tx"],
            "--labels_subscription", topics.subscriptions["labels"],
            "--alerts_topic", topics.topics["alerts"]]  # fmt: skip
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        job = _start_with_sigint_ignored(
            [sys.executable, "-m", "bench.pipeline", "passthrough", *args], log
        )
    try:
        publisher = pubsub_v1.PublisherClient()
        copied: list = []
        deadline = time.monotonic() + 120
        while not copied:  # the pass-through copies what it reads: then it runs
            assert job.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the job copied nothing within 120 s"
            publisher.publish(topics.topics["tx"], b"ping").result()
            copied = lj.drain(topics.subscriptions["alerts"], wait_s=2)
    finally:
        code = lj.stop(job, timeout_s=30)
    assert code == 0, log_path.read_text()[-3000:]


def test_a_local_run_unstacks_its_bundles():
    """Each event has its own event time, so stacking equal ones would stack nothing: the local
    job turns it off and keeps the rest of its options; the job's own options keep Beam's
    default (a remote runner ignores the setting)."""
    assert pipeline_options([]).view_as(DirectOptions).direct_runner_use_stacked_bundle is True
    options = local_options(["--preset", "baseline"])
    assert options.view_as(DirectOptions).direct_runner_use_stacked_bundle is False
    assert options.view_as(FraudstreamOptions).preset == "baseline"
