"""Make the Python DirectRunner keep up with a local stream.

Beam's ``BundleBasedDirectRunner`` reads Pub/Sub with one synchronous pull of at most 10
messages and a 30 s timeout per bundle (``_PubSubReadEvaluator._read_from_pubsub``): about
120 events/s, and a cancel waits out the pending pull (about 28 s). There is no option for
either, so :func:`tune_direct_pubsub_read` wraps the evaluator's subscriber client: every pull
asks for up to ``max_messages`` with ``timeout`` seconds, and an empty pull that hits its
deadline returns no messages instead of raising. Local runs only; Dataflow reads Pub/Sub with
its own streaming source and is not affected.

The DirectRunner also redoes per-bundle work whose result never changes, which was most of a
local run's CPU time (stateful stages get one bundle per key): it inspects every DoFn's
signature (``core.get_function_args_defaults``) and state specs (``userstate.get_dofn_specs``,
which wraps every method of the DoFn), and it pickles the DoFn again to copy it.
:func:`cache_dofn_introspection` memoises the first two (signatures per underlying function;
specs per DoFn class and wrapped function: both come from method defaults, fixed when the
class is defined) and keeps each DoFn's pickled bytes, so a copy is one ``loads``.

The Pub/Sub write DoFn builds a new ``PublisherClient`` (a gRPC channel and its threads) in
``setup``, which the DirectRunner calls for every bundle: :func:`share_pubsub_publishers`
makes it reuse one client per process (the client is thread-safe).

Last, the runner looks for due timers by asking every keyed state of every stateful step on
every scheduling round, an O(keys) scan (a stream has a key per card and per terminal):
:func:`skip_keys_without_timers` makes the scan pass over states that hold no timer.
"""

from __future__ import annotations

import inspect
import threading
import time
import weakref
from typing import Any

UNAVAILABLE_BUDGET_S = 60.0  # how long a local read waits for an unavailable Pub/Sub
DEFAULT_MAX_MESSAGES = 1_000
DEFAULT_TIMEOUT_S = 2.0
LOCAL_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")

_lock = threading.Lock()
_settings: dict[str, float] = {}


class SubscriptionGone(RuntimeError):
    """The subscription a local job reads was deleted (or its emulator restarted)."""


class _FastPull:
    """A subscriber client whose ``pull`` takes larger batches with a short deadline."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pull(self, subscription: str, max_messages: int = 10, timeout: float = 30) -> Any:
        """One pull; an unavailable service is retried for :data:`UNAVAILABLE_BUDGET_S`, a
        vanished subscription stops the job with a message that says so."""
        from google.api_core import exceptions
        from google.cloud.pubsub_v1.types import PullResponse

        deadline, delay = time.monotonic() + UNAVAILABLE_BUDGET_S, 0.5
        while True:
            try:
                return self._client.pull(
                    subscription=subscription,
                    max_messages=int(_settings["max_messages"]),
                    timeout=_settings["timeout"],
                )
            except exceptions.DeadlineExceeded:
                return PullResponse()  # nothing arrived in time: an empty bundle, not an error
            except exceptions.NotFound as exc:
                raise SubscriptionGone(
                    f"Pub/Sub subscription {subscription} does not exist any more (deleted, or "
                    "the emulator restarted: it keeps nothing); the job stops. Recreate the "
                    "topics and subscriptions, then start it again"
                ) from exc
            except exceptions.ServiceUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 4.0)

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


def cache_dofn_introspection() -> None:
    """Memoise the DirectRunner's per-bundle DoFn introspection and copies (idempotent)."""
    from apache_beam.internal import pickler
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.transforms import core, userstate

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

        original_specs = userstate.get_dofn_specs
        specs: dict[Any, tuple[set, set]] = {}

        def get_dofn_specs(dofn: Any) -> tuple[set, set]:
            key = (type(dofn), getattr(dofn, "_fn", None))
            try:
                hit = specs.get(key)
            except TypeError:  # an unhashable wrapped callable: no caching
                return original_specs(dofn)
            if hit is None:
                hit = specs[key] = original_specs(dofn)
            return set(hit[0]), set(hit[1])

        def is_stateful_dofn(dofn: Any) -> bool:
            state_specs, timer_specs = get_dofn_specs(dofn)
            return bool(state_specs or timer_specs)

        userstate.get_dofn_specs = get_dofn_specs
        userstate.is_stateful_dofn = is_stateful_dofn
        te.get_dofn_specs, te.is_stateful_dofn = get_dofn_specs, is_stateful_dofn

        pickled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        original_roundtrip = pickler.roundtrip

        def roundtrip(o: Any) -> Any:
            try:
                blob = pickled.get(o)
            except TypeError:  # not weak-referenceable
                return original_roundtrip(o)
            if blob is None:
                blob = pickled[o] = pickler.dumps(o)
            return pickler.loads(blob)

        pickler.roundtrip = roundtrip
        core._fraudstream_cached = True


def tune_local_runner() -> None:
    """Every patch of this module, with the default Pub/Sub read settings."""
    tune_direct_pubsub_read()
    cache_dofn_introspection()
    skip_keys_without_timers()
    share_pubsub_publishers()


def skip_keys_without_timers() -> None:
    """Patch ``_TransformWatermarks.extract_transform_timers`` to ask only the keyed states
    that hold a timer (same result: a state without timers has none to fire)."""
    from apache_beam.runners.direct import watermark_manager as wm

    with _lock:
        cls = wm._TransformWatermarks
        if getattr(cls, "_fraudstream_tuned", False):
            return

        def extract_transform_timers(self: Any) -> tuple[list, bool]:
            with self._lock:
                fired, has_realtime = [], False
                now = self._clock.time()
                for encoded_key, state in self._keyed_states.items():
                    timers_by_window = getattr(state, "timers", None)
                    if timers_by_window is not None and not any(timers_by_window.values()):
                        continue
                    timers, realtime = state.get_timers(
                        watermark=self._input_watermark, processing_time=now
                    )
                    has_realtime = has_realtime or realtime
                    for window, (name, domain, timestamp, tag) in timers:
                        fired.append(
                            wm.TimerFiring(
                                encoded_key, window, name, domain, timestamp, dynamic_timer_tag=tag
                            )
                        )
                self._fired_timers.update(fired)
                return fired, has_realtime

        cls.extract_transform_timers = extract_transform_timers
        cls._fraudstream_tuned = True


_publishers: dict[bool, Any] = {}


def share_pubsub_publishers() -> None:
    """Patch ``WriteToPubSub``'s DoFn to share one ``PublisherClient`` per process."""
    from apache_beam.io.gcp import pubsub as beam_pubsub

    with _lock:
        cls = beam_pubsub._PubSubWriteDoFn
        if getattr(cls, "_fraudstream_tuned", False):
            return

        def setup(self: Any) -> None:
            from google.cloud import pubsub

            with _lock:
                client = _publishers.get(self.with_ordering)
                if client is None:
                    options = pubsub.types.PublisherOptions(
                        enable_message_ordering=self.with_ordering
                    )
                    client = _publishers[self.with_ordering] = pubsub.PublisherClient(
                        publisher_options=options
                    )
            self._pub_client = client
            self._topic = client.topic_path(self.project, self.short_topic_name)

        cls.setup = setup
        cls._fraudstream_tuned = True
