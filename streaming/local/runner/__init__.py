"""Make the Python DirectRunner keep up with a local stream.

Beam's ``BundleBasedDirectRunner`` reads Pub/Sub with one synchronous pull of at most 10
messages and a 30 s timeout per bundle (``_PubSubReadEvaluator._read_from_pubsub``), on the one
thread that runs every stage: about 120 events/s, an idle subscription (labels are sparse)
stalls the whole job for the pull's timeout, and a cancel waits out the pending pull (about
28 s). There is no option for any of it, so :func:`tune_direct_pubsub_read` wraps the
evaluator's subscriber client: a thread per subscription pulls up to ``max_messages`` with
``timeout`` seconds ahead of the runner, and the runner's read takes what was pulled meanwhile,
waiting ``idle_wait`` seconds only when it has no other work queued. Local runs only; Dataflow
reads Pub/Sub with its own streaming source and is not affected.

The DirectRunner also redoes per-bundle work whose result never changes, which was most of a
local run's CPU time: it inspects every DoFn's signature (``core.get_function_args_defaults``)
and state specs (``userstate.get_dofn_specs``, which wraps every method of the DoFn), and it
pickles (bz2-compressed) the DoFn again to copy it. :func:`cache_dofn_introspection` memoises
the first two (signatures per function code and defaults, specs per original DoFn: a copy's
are its original's) and keeps each DoFn's uncompressed pickle, so a copy is one ``loads``.

The Pub/Sub write DoFn builds a new ``PublisherClient`` (a gRPC channel and its threads) in
``setup``, which the DirectRunner calls for every bundle: :func:`share_pubsub_publishers`
makes it reuse one client per process (the client is thread-safe), which sends a batch at once
(the DoFn waits for it at the end of every bundle). Acknowledgements leave the runner's thread
too.

Last, the runner looks for due timers by asking every keyed state of every stateful step on
every scheduling round, an O(keys) scan (a stream has a key per card and per terminal):
:func:`skip_keys_without_timers` skips the steps whose DoFn declares no timer and, elsewhere,
the states that hold none. And :func:`freeze_startup_objects` keeps the cyclic garbage
collector's full passes, which stopped the job for ~200 ms, off the objects loaded at start.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

UNAVAILABLE_BUDGET_S = 60.0  # how long a local read waits for an unavailable Pub/Sub
DEFAULT_MAX_MESSAGES = 1_000
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_IDLE_WAIT_S = 0.1
PUBLISH_MAX_LATENCY_S = 0.001
GC_SETTLE_S = 30.0

log = logging.getLogger(__name__)
_lock = threading.Lock()
_settings: dict[str, float] = {}
_MAX_CACHED = 4_096  # signatures memoised before the memo is emptied (bounds its memory)
_reading = threading.local()  # the runner's work queue while its Pub/Sub read pulls
_ARRIVED = threading.Condition()  # notified when any prefetcher holds new messages or stops


class SubscriptionGone(RuntimeError):
    """The subscription a local job reads was deleted (or its emulator restarted)."""


class _Prefetcher:
    """Pulls one subscription in a thread of its own, ahead of the runner.

    The runner's single worker thread then never blocks in a pull: an idle subscription (labels
    are sparse) no longer stalls every other stage for the pull's timeout. Pulled messages are
    handed over unacknowledged (the evaluator acknowledges them, as before) at the runner's next
    read, all at once; the thread stops pulling while ``max_messages`` wait, so nothing is held
    near its ack deadline. Messages still held at shutdown are redelivered.
    """

    def __init__(self, client: Any, subscription: str) -> None:
        self._client, self._subscription = client, subscription
        self._held: list = []
        self._error: BaseException | None = None
        self._stopped = False
        name = f"pubsub-prefetch {subscription.rsplit('/', 1)[-1]}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def take(self, wait_s: float) -> Any:
        """Every message pulled since the last take (a ``PullResponse``; empty after ``wait_s``
        without any, or as soon as another subscription's arrive: the condition is shared);
        raises what stopped the pulls."""
        from google.cloud.pubsub_v1.types import PullResponse

        with _ARRIVED:
            if not self._held and self._error is None:
                _ARRIVED.wait(wait_s)
            if self._error is not None:
                raise self._error  # every later take fails the same way
            held, self._held = self._held, []
            _ARRIVED.notify_all()
        return PullResponse(received_messages=held)

    def stop(self) -> None:
        with _ARRIVED:
            self._stopped = True
            _ARRIVED.notify_all()

    def _run(self) -> None:
        limit = int(_settings["max_messages"])
        while True:
            with _ARRIVED:
                while len(self._held) >= limit and not self._stopped:
                    _ARRIVED.wait()
                if self._stopped:
                    return
            try:
                received = list(self._pull().received_messages)
            except BaseException as exc:  # handed to the runner's thread, which fails the job
                with _ARRIVED:
                    self._error = exc
                    _ARRIVED.notify_all()
                return
            if received:
                with _ARRIVED:
                    self._held.extend(received)
                    _ARRIVED.notify_all()

    def _pull(self) -> Any:
        """One pull; an unavailable service is retried for :data:`UNAVAILABLE_BUDGET_S`, a
        vanished subscription stops the job with a message that says so."""
        from google.api_core import exceptions
        from google.cloud.pubsub_v1.types import PullResponse

        deadline, delay = time.monotonic() + UNAVAILABLE_BUDGET_S, 0.5
        while True:
            try:
                return self._client.pull(
                    subscription=self._subscription,
                    max_messages=int(_settings["max_messages"]),
                    timeout=_settings["timeout"],
                )
            except exceptions.DeadlineExceeded:
                return PullResponse()  # nothing arrived in time: pull again
            except exceptions.NotFound as exc:
                raise SubscriptionGone(
                    f"Pub/Sub subscription {self._subscription} does not exist any more "
                    "(deleted, or the emulator restarted: it keeps nothing); the job stops. "
                    "Recreate the topics and subscriptions, then start it again"
                ) from exc
            except exceptions.ServiceUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 4.0)


class _FastPull:
    """A subscriber client whose ``pull`` hands over what a :class:`_Prefetcher` pulled and
    whose ``acknowledge`` is sent from a thread of its own (the runner acknowledges right after
    the pull, before processing, so sending it later loses no guarantee; a failed one means a
    redelivery, which the entity states refuse as ``DUPLICATE``)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._prefetchers: dict[str, _Prefetcher] = {}
        self._acks = ThreadPoolExecutor(1, thread_name_prefix="pubsub-ack")

    def pull(self, subscription: str, max_messages: int = 10, timeout: float = 30) -> Any:
        """What was pulled meanwhile. When nothing was, and the runner has no other work
        queued, wait a little for it: the runner calls again at once, so the wait keeps an idle
        job from spinning, and a busy one never waits on an idle subscription."""
        prefetcher = self._prefetchers.get(subscription)
        if prefetcher is None:
            prefetcher = self._prefetchers[subscription] = _Prefetcher(self._client, subscription)
        work = getattr(_reading, "work", None)
        idle = work is None or work.qsize() <= 1  # the runner's monitor task is always queued
        return prefetcher.take(_settings["idle_wait"] if idle else 0.0)

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        sent = self._acks.submit(
            self._client.acknowledge, subscription=subscription, ack_ids=ack_ids
        )
        sent.add_done_callback(_log_failed_ack)

    def close(self) -> None:
        for prefetcher in self._prefetchers.values():
            prefetcher.stop()
        self._acks.shutdown(wait=True)  # acknowledgements still queued are sent
        self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _log_failed_ack(sent: Future) -> None:
    error = sent.exception()
    if error is not None:
        log.warning("Pub/Sub acknowledge failed (the messages will be redelivered): %s", error)


def tune_direct_pubsub_read(
    max_messages: int = DEFAULT_MAX_MESSAGES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_wait_s: float = DEFAULT_IDLE_WAIT_S,
) -> None:
    """Patch the DirectRunner's Pub/Sub read (idempotent; later calls change the settings):
    pulls of up to ``max_messages`` with ``timeout_s`` run ahead in a thread per
    subscription; a read finding nothing pulled waits ``idle_wait_s`` for it."""
    if max_messages < 1 or timeout_s <= 0 or idle_wait_s < 0:
        raise ValueError(
            "need max_messages >= 1, timeout_s > 0 and idle_wait_s >= 0, got "
            f"{max_messages}, {timeout_s}, {idle_wait_s}"
        )
    from apache_beam.runners.direct import executor as ex
    from apache_beam.runners.direct import transform_evaluator as te

    evaluator = te._PubSubReadEvaluator
    with _lock:
        _settings.update(max_messages=max_messages, timeout=timeout_s, idle_wait=idle_wait_s)
        if getattr(evaluator, "_fraudstream_tuned", False):
            return
        original = evaluator._get_subscriber_client_state_unlocked.__func__

        def _get_subscriber_client_state_unlocked(cls: type, transform: Any) -> Any:
            state = original(cls, transform)  # one per read transform, closed with it
            if not isinstance(state.client, _FastPull):
                state.client = _FastPull(state.client)
            return state

        evaluator._get_subscriber_client_state_unlocked = classmethod(
            _get_subscriber_client_state_unlocked
        )
        finish_bundle = evaluator.finish_bundle

        def finish_bundle_knowing_the_queue(self: Any) -> Any:
            _reading.work = getattr(self._evaluation_context, "_fraudstream_work", None)
            try:
                return finish_bundle(self)  # the pull happens here
            finally:
                _reading.work = None

        evaluator.finish_bundle = finish_bundle_knowing_the_queue
        parallel = ex._ExecutorServiceParallelExecutor
        init = parallel.__init__

        def __init__(self: Any, value_to_consumers: Any, registry: Any, context: Any) -> None:
            init(self, value_to_consumers, registry, context)
            context._fraudstream_work = self.executor_service.queue  # what the workers take

        parallel.__init__ = __init__
        evaluator._fraudstream_tuned = True


def cache_dofn_introspection() -> None:
    """Memoise the DirectRunner's per-bundle DoFn introspection and copies (idempotent)."""
    from apache_beam.internal import pickler
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.transforms import core, userstate

    with _lock:
        if getattr(core, "_fraudstream_cached", False):
            return
        original = core.get_function_args_defaults
        cache: dict[tuple, tuple[list, list]] = {}

        def get_function_args_defaults(f: Any) -> tuple[list, list]:
            # A DoFn's copy holds new function objects (cloudpickle rebuilds lambdas), so a
            # function is known by its code and defaults; a bound method by its function.
            try:
                if inspect.ismethod(f):
                    key: tuple = (f.__func__,)
                elif inspect.isfunction(f) and not hasattr(f, "__wrapped__"):
                    kw = tuple(sorted((f.__kwdefaults__ or {}).items()))
                    key = (f.__code__, f.__defaults__, kw)
                else:
                    return original(f)
                hit = cache.get(key)
            except TypeError:  # unhashable defaults: no caching
                return original(f)
            if hit is None:
                if len(cache) > _MAX_CACHED:
                    cache.clear()
                hit = cache[key] = original(f)
            return list(hit[0]), list(hit[1])

        core.get_function_args_defaults = get_function_args_defaults

        original_specs = userstate.get_dofn_specs
        specs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        origin: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # copy -> original

        def get_dofn_specs(dofn: Any) -> tuple[set, set]:
            # Specs come from method defaults, fixed with the DoFn: a copy has its original's.
            try:
                key = origin.get(dofn, dofn)
                hit = specs.get(key)
            except TypeError:  # not weak-referenceable or unhashable: no caching
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
        lib = pickler.desired_pickle_lib
        dumps, loads = getattr(lib, "_dumps", None), getattr(lib, "_loads", None)
        if dumps is None or loads is None:  # another pickler: Beam's (compressed) form
            dumps, loads = pickler.dumps, pickler.loads

        def roundtrip(o: Any) -> Any:
            try:
                blob = pickled.get(o)
            except TypeError:  # not weak-referenceable
                return original_roundtrip(o)
            if blob is None:
                blob = pickled[o] = dumps(o)  # uncompressed: a copy is one plain ``loads``
            copy = loads(blob)
            with contextlib.suppress(TypeError):  # a copy that is not weak-referenceable
                origin[copy] = origin.get(o, o)
            return copy

        pickler.roundtrip = roundtrip
        core._fraudstream_cached = True


def tune_local_runner() -> None:
    """Every patch of this module, with the default Pub/Sub read settings."""
    tune_direct_pubsub_read()
    cache_dofn_introspection()
    skip_keys_without_timers()
    share_pubsub_publishers()


def freeze_startup_objects(settle_s: float = GC_SETTLE_S) -> None:
    """``gc.freeze()`` now and once more after ``settle_s`` (by then the first bundles have
    loaded the kernels, the model and Feast), so that the cyclic collector's full passes skip
    the objects a job keeps for its whole life. Those passes took 170-200 ms each, every
    transaction in flight waiting; frozen, 10-45 ms. The price: cyclic garbage pending at either
    moment is never collected (a one-time, bounded amount)."""
    gc.freeze()
    timer = threading.Timer(settle_s, gc.freeze)
    timer.daemon = True
    timer.start()


def skip_keys_without_timers() -> None:
    """Patch ``_TransformWatermarks.extract_transform_timers`` to ask only the keyed states
    that hold a timer, and none at all for a stateful ``ParDo`` whose DoFn declares no timer
    (same result: a state without timers has none to fire)."""
    from apache_beam.runners.direct import watermark_manager as wm

    with _lock:
        cls = wm._TransformWatermarks
        if getattr(cls, "_fraudstream_tuned", False):
            return
        init = cls.__init__

        def __init__(self: Any, clock: Any, keyed_states: Any, transform: Any) -> None:
            init(self, clock, keyed_states, transform)
            self._fraudstream_timerless = _declares_no_timers(transform)

        def extract_transform_timers(self: Any) -> tuple[list, bool]:
            if self._fraudstream_timerless:
                return [], False
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

        cls.__init__ = __init__
        cls.extract_transform_timers = extract_transform_timers
        cls._fraudstream_tuned = True


def _declares_no_timers(applied: Any) -> bool:
    """Whether ``applied`` is a ParDo of a stateful DoFn without timer specs (a grouping or a
    splittable DoFn keeps its timers in keyed state too: those are not skipped)."""
    import apache_beam as beam
    from apache_beam.transforms import userstate

    transform = getattr(applied, "transform", None)
    if type(transform) is not beam.ParDo or not userstate.is_stateful_dofn(transform.fn):
        return False
    return not userstate.get_dofn_specs(transform.fn)[1]


_publishers: dict[bool, Any] = {}


def share_pubsub_publishers() -> None:
    """Patch ``WriteToPubSub``'s DoFn to share one ``PublisherClient`` per process, which sends
    a batch after :data:`PUBLISH_MAX_LATENCY_S`."""
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
                    # the DoFn waits for every publish at the end of each bundle: a batch
                    # need not wait for more messages (Beam's client waits 10 ms)
                    batching = pubsub.types.BatchSettings(max_latency=PUBLISH_MAX_LATENCY_S)
                    client = _publishers[self.with_ordering] = pubsub.PublisherClient(
                        batch_settings=batching, publisher_options=options
                    )
            self._pub_client = client
            self._topic = client.topic_path(self.project, self.short_topic_name)

        cls.setup = setup
        cls._fraudstream_tuned = True
