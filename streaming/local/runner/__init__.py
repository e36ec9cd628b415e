"""Make the Python DirectRunner keep up with a local stream: five patches, one per module.

* :mod:`.pubsub_read` (:func:`tune_direct_pubsub_read`): Pub/Sub is pulled ahead of the runner
  in a thread per subscription, acknowledged from another; an idle subscription stalls nothing.
* :mod:`.dofn_cache` (:func:`cache_dofn_introspection`): a DoFn's signature, state specs and
  pickle are worked out once, not per bundle.
* :mod:`.timers` (:func:`skip_keys_without_timers`): the scan for due timers asks only the keyed
  states that can hold one.
* :mod:`.publishers` (:func:`share_pubsub_publishers`): ``WriteToPubSub`` shares one publisher
  per process instead of building one per bundle.
* :mod:`.gc_freeze` (:func:`freeze_startup_objects`): the objects loaded at start are kept out
  of the cyclic collector's full passes; called once the pipeline is built.

The first four replace Beam internals of one release: each checks first that the installed Beam
is the one it was written for (:mod:`.guard`) and, if not, is skipped with a warning, the runner
running without it. Local runs only: none of this is imported by the job on Dataflow.
"""

from __future__ import annotations

from streaming.local.runner.dofn_cache import cache_dofn_introspection
from streaming.local.runner.gc_freeze import freeze_startup_objects
from streaming.local.runner.publishers import share_pubsub_publishers
from streaming.local.runner.pubsub_read import tune_direct_pubsub_read
from streaming.local.runner.timers import skip_keys_without_timers

__all__ = ["freeze_startup_objects", "tune_local_runner"]


def tune_local_runner() -> dict[str, bool]:
    """Apply the four Beam patches, the Pub/Sub read with its default settings; returns, by
    patch, whether it is applied (False: skipped, Beam is not what it was written for)."""
    return {
        "tune_direct_pubsub_read": tune_direct_pubsub_read(),
        "cache_dofn_introspection": cache_dofn_introspection(),
        "skip_keys_without_timers": skip_keys_without_timers(),
        "share_pubsub_publishers": share_pubsub_publishers(),
    }
