"""Make the Python DirectRunner keep up with a local stream: ten patches, one per module.

* :mod:`.pubsub_read` (:func:`tune_direct_pubsub_read`): Pub/Sub is pulled ahead of the runner
  in a thread per subscription, acknowledged from another; an idle subscription stalls nothing,
  and messages held for a busy runner keep their lease.
* :mod:`.dofn_cache` (:func:`cache_dofn_introspection`): a DoFn's signature, state specs and
  pickle are worked out once, not per bundle.
* :mod:`.empty_bundles` (:func:`skip_empty_bundles`): ParDo and Flatten steps run only on
  bundles with elements, not on the empty one every step hands on per output.
* :mod:`.timers` (:func:`skip_keys_without_timers`): the scan for due timers asks only the keyed
  states that can hold one.
* :mod:`.publishers` (:func:`tune_direct_pubsub_write`): ``WriteToPubSub`` serializes with the
  protobuf class and sends each flush in one request through one publisher per process.
* :mod:`.state_copy` (:func:`copy_keyed_states_lightly`): a bundle's copy of a keyed state
  skips the deep copy of its empty timers and global state.
* :mod:`.read_options` (:func:`remember_read_project`): a Pub/Sub read takes the project from the
  pipeline options once per run, not once per bundle.
* :mod:`.event_times` (:func:`parse_event_times_quickly`): a message's event-time attribute is
  parsed with ``datetime.fromisoformat`` where that gives Beam's result, not with dateutil.
* :mod:`.global_window` (:func:`build_global_window_once`): ``GlobalWindow()``, called per
  element read and per element of a DoFn without window arguments, no longer rebuilds the
  singleton's end each time.
* :mod:`.collector` (:func:`freeze_startup_objects`, :func:`collect_young_less_often`): the
  objects loaded at start are kept out of the cyclic collector's passes, and its youngest
  generation is collected every 50,000 new objects instead of 700; called once the pipeline is
  built.

The first nine replace Beam internals of one release: each checks first that the installed Beam
is the one it was written for (:mod:`.guard`) and, if not, is skipped with a warning, the runner
running without it. Local runs only: none of this is imported by the job on Dataflow.
"""

from __future__ import annotations

from streaming.local.runner.collector import collect_young_less_often, freeze_startup_objects
from streaming.local.runner.dofn_cache import cache_dofn_introspection
from streaming.local.runner.empty_bundles import skip_empty_bundles
from streaming.local.runner.event_times import parse_event_times_quickly
from streaming.local.runner.global_window import build_global_window_once
from streaming.local.runner.publishers import tune_direct_pubsub_write
from streaming.local.runner.pubsub_read import tune_direct_pubsub_read
from streaming.local.runner.read_options import remember_read_project
from streaming.local.runner.state_copy import copy_keyed_states_lightly
from streaming.local.runner.timers import skip_keys_without_timers

__all__ = ["collect_young_less_often", "freeze_startup_objects", "tune_local_runner"]


def tune_local_runner() -> dict[str, bool]:
    """Apply the nine Beam patches, the Pub/Sub read with its default settings; returns, by
    patch, whether it is applied (False: skipped, Beam is not what it was written for)."""
    return {
        "tune_direct_pubsub_read": tune_direct_pubsub_read(),
        "cache_dofn_introspection": cache_dofn_introspection(),
        "skip_empty_bundles": skip_empty_bundles(),
        "skip_keys_without_timers": skip_keys_without_timers(),
        "tune_direct_pubsub_write": tune_direct_pubsub_write(),
        "copy_keyed_states_lightly": copy_keyed_states_lightly(),
        "remember_read_project": remember_read_project(),
        "parse_event_times_quickly": parse_event_times_quickly(),
        "build_global_window_once": build_global_window_once(),
    }
