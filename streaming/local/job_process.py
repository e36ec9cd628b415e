"""The streaming job as a local child process on the emulators, with topics of its own.

Used by ``fraudstream demo``, the end-to-end test and the pipeline benchmarks: create the
Pub/Sub topics and subscriptions of one run, start ``fraudstream run`` on them, read what it
wrote (alerts, dead letters, scored events) and stop it as Ctrl-C would.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = "demo-project"
KINDS = ("tx", "labels", "alerts", "dlq")


@dataclass(frozen=True)
class Topics:
    """Full topic and subscription paths of one run, by kind (:data:`KINDS`)."""

    project: str
    topics: dict[str, str]
    subscriptions: dict[str, str]

    def topic_id(self, kind: str) -> str:
        return self.topics[kind].rsplit("/", 1)[-1]

    @classmethod
    def create(cls, prefix: str = "fraudstream", project: str = PROJECT) -> Topics:
        """New topics, each with one subscription (names never reused: the emulator keeps
        routing a deleted subscription's messages to stale clients)."""
        from google.cloud import pubsub_v1

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        run = uuid.uuid4().hex[:8]
        topics, subs = {}, {}
        for kind in KINDS:
            topics[kind] = publisher.topic_path(project, f"{prefix}-{kind}-{run}")
            publisher.create_topic(name=topics[kind])
            subs[kind] = subscriber.subscription_path(project, f"{prefix}-{kind}-{run}-sub")
            subscriber.create_subscription(name=subs[kind], topic=topics[kind])
        return cls(project, topics, subs)


def job_args(
    topics: Topics,
    model_dir: Path | str,
    preset: str,
    scored_dir: Path | str,
    feature_repo: Path | str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """``fraudstream run`` options for one local run (features to Bigtable when a repo with
    the emulator profile applied is given)."""
    args = [
        "--transactions_subscription", topics.subscriptions["tx"],
        "--labels_subscription", topics.subscriptions["labels"],
        "--alerts_topic", topics.topics["alerts"],
        "--dlq_topic", topics.topics["dlq"],
        "--model_dir", str(model_dir),
        "--preset", preset,
        "--scored_dir", str(scored_dir),
    ]  # fmt: skip
    if feature_repo is not None:
        args += ["--feature_store", "feast", "--feature_store_profile", "emulator"]
        args += ["--feature_repo", str(feature_repo)]
    return args + list(extra or ())


def start(
    args: list[str],
    log_path: Path | str,
    module: tuple[str, ...] = ("streaming.cli", "run"),
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.Popen:
    """Start ``fraudstream run ARGS`` (``python -m MODULE ARGS`` with this interpreter),
    output to ``log_path``; ``env`` (default: this process's) and ``cwd`` as given."""
    log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until it stops
    command = [sys.executable, "-m", *module, *args]
    environ = dict(os.environ) if env is None else env
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=cwd)


def wait_for(
    count: Callable[[], int],
    target: int,
    job: subprocess.Popen,
    log_path: Path | str,
    timeout_s: float = 300.0,
    what: str = "scored rows",
) -> None:
    """Poll ``count`` until it reaches ``target``; ``RuntimeError`` with the end of the job's
    log if the job exits first or ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while (n := count()) < target:
        if job.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(Path(log_path).read_text().splitlines()[-30:])
            state = f"exited with {job.returncode}" if job.poll() is not None else "timed out"
            raise RuntimeError(f"the job {state} at {n} of {target} {what}:\n{tail}")
        time.sleep(0.2)


def stop(job: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """Stop the job as Ctrl-C does; kill it if it has not stopped after ``timeout_s``.
    Returns its exit status (negative: killed by that signal)."""
    if job.poll() is None:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(timeout_s)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
    return job.returncode


@functools.cache
def _subscriber(emulator_host: str | None) -> Any:
    """One subscriber client per process and Pub/Sub endpoint (a client is a gRPC channel;
    pollers call often). The client library reads ``PUBSUB_EMULATOR_HOST`` when built."""
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient()


DRAIN_MORE_S = 1.0
"""How long :func:`drain` waits for more once a pull has brought messages."""


def drain(subscription: str, wait_s: float = 5.0) -> list:
    """Every message now in ``subscription`` (acknowledged), until a pull finds none: the first
    pull waits up to ``wait_s`` for a message, the next ones up to :data:`DRAIN_MORE_S` (a pull
    of an empty subscription waits out its timeout)."""
    from google.api_core import exceptions

    subscriber, got = _subscriber(os.environ.get("PUBSUB_EMULATOR_HOST")), []
    while True:
        timeout = min(wait_s, DRAIN_MORE_S) if got else wait_s
        try:
            response = subscriber.pull(
                subscription=subscription, max_messages=1_000, timeout=timeout
            )
        except exceptions.DeadlineExceeded:
            return got
        if not response.received_messages:
            return got
        got += [m.message for m in response.received_messages]
        subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
        )
