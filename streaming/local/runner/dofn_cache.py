"""The DirectRunner's per-bundle DoFn introspection and copies, memoised.

The DirectRunner redoes per-bundle work whose result never changes, which was most of a local
run's CPU time: it inspects every DoFn's signature (``core.get_function_args_defaults``) and
state specs (``userstate.get_dofn_specs``, which wraps every method of the DoFn), and it pickles
(bz2-compressed) the DoFn again to copy it. :func:`cache_dofn_introspection` memoises the first
two (signatures per function code and defaults, specs per original DoFn: a copy's are its
original's) and keeps each DoFn's uncompressed pickle, so a copy is one ``loads``.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Any

from streaming.local.runner.guard import Replaced, patch_once

_MAX_CACHED = 4_096  # signatures memoised before the memo is emptied (bounds its memory)
_TE = "apache_beam.runners.direct.transform_evaluator"
REPLACED = (
    Replaced("apache_beam.transforms.core:get_function_args_defaults", "5e41a60ff81fe8ca"),
    Replaced("apache_beam.transforms.userstate:get_dofn_specs", "eeb36145d3115aa0"),
    Replaced("apache_beam.transforms.userstate:is_stateful_dofn", "9b5d0f650f126c59"),
    Replaced(f"{_TE}:get_dofn_specs", "eeb36145d3115aa0"),  # imported from userstate
    Replaced(f"{_TE}:is_stateful_dofn", "9b5d0f650f126c59"),
    Replaced("apache_beam.internal.pickler:roundtrip", "8b1999c90c14457a"),
)


@patch_once(
    "cache_dofn_introspection", "apache_beam.transforms.core:", "_fraudstream_cached", REPLACED
)
def cache_dofn_introspection() -> None:
    """Memoise the DirectRunner's per-bundle DoFn introspection and copies (idempotent).
    Returns whether they are memoised (False: Beam is not what the patch was written for)."""
    from apache_beam.internal import pickler
    from apache_beam.runners.direct import transform_evaluator as te
    from apache_beam.transforms import core, userstate

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
