"""Make the Python DirectRunner keep up with a local stream.

Beam's ``BundleBasedDirectRunner`` reads Pub/Sub with one synchronous pull of at most 10
messages and a 30 s timeout per bundle (``_PubSubReadEvaluator._read_from_pubsub``): about
120 events/s, and a cancel waits out the pending pull (about 28 s). There is no option for
either, so :func:`tune_direct_pubsub_read` wraps the evaluator's subscriber client: every pull
asks for up to ``max_messages`` with ``timeout`` seconds, and an empty pull that hits its
deadline returns no messages instead of raising. Local runs only; Dataflow reads Pub/Sub with
its own streaming source and is not affected.

The DirectRunner also inspects every DoFn's signature again for each bundle (``inspect``,
through ``core.get_function_args_defaults``), which was over half of a local run's CPU time:
stateful stages get one bundle per key. :func:`cache_dofn_signatures` memoises that function
for plain functions and bound methods (whose arguments and defaults belong to the underlying
function, so a cache keyed by it is exact).
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

DEFAULT_MAX_MESSAGES = 1_000
DEFAULT_TIMEOUT_S = 2.0
LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")

_lock = threading.Lock()
_settings: dict[str, float] = {}


class _FastPull:
    """A subscriber client whose ``pull`` takes larger batches with a short deadline."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pull(self, subscription: str, max_messages: int = 10, timeout: float = 30) -> Any:
        from google.api_core import exceptions
        from google.cloud.pubsub_v1.types import PullResponse

        try:
            return self._client.pull(
                subscription=subscription,
                max_messages=int(_settings["max_messages"]),
                timeout=_settings["timeout"],
            )
        except exceptions.DeadlineExceeded:
            return PullResponse()  # nothing arrived in time: an empty bundle, not an error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def tune_direct_pubsub_read(
    max_messages: int = DEFAULT_MAX_MESSAGES, timeout_s: float = DEFAULT_TIMEOUT_S
) -> None:
    """Patch the DirectRunner's Pub/Sub read (idempotent; later calls change the settings)."""
    if max_messages < 1 or timeout_s <= 0:
        raise ValueError(
            f"need max_messages >= 1 and timeout_s > 0, got {max_messages}, {timeout_s}"
        )
    from apache_beam.runners.direct import transform_evaluator as te

    evaluator = te._PubSubReadEvaluator
    with _lock:
        _settings.update(max_messages=max_messages, timeout=timeout_s)
        if getattr(evaluator, "_fraudstream_tuned", False):
            return
        original = evaluator._get_subscriber_client.__func__

        def _get_subscriber_client(cls: type, transform: Any) -> Any:
            return _FastPull(original(cls, transform))

        evaluator._get_subscriber_client = classmethod(_get_subscriber_client)
        evaluator._fraudstream_tuned = True


def is_local(runner: str | None) -> bool:
    """Whether ``--runner`` names a Python DirectRunner (the default when absent)."""
    return runner is None or runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS


def cache_dofn_signatures() -> None:
    """Memoise ``apache_beam.transforms.core.get_function_args_defaults`` (idempotent)."""
    from apache_beam.transforms import core

    with _lock:
        if getattr(core, "_fraudstream_cached", False):
            return
        original = core.get_function_args_defaults
        cache: dict[tuple[Any, bool], tuple[list, list]] = {}

        def get_function_args_defaults(f: Any) -> tuple[list, list]:
            if inspect.ismethod(f):
                key = (f.__func__, True)
            elif inspect.isfunction(f):
                key = (f, False)
            else:
                return original(f)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = original(f)
            return list(hit[0]), list(hit[1])

        core.get_function_args_defaults = get_function_args_defaults
        core._fraudstream_cached = True


def tune_local_runner() -> None:
    """Both patches of this module, with the default Pub/Sub read settings."""
    tune_direct_pubsub_read()
    cache_dofn_signatures()
