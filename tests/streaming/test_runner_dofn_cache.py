"""The local runner's memoised DoFn introspection and copies."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.transforms import core, userstate

from streaming.local.runner.dofn_cache import cache_dofn_introspection


def test_dofn_copies_reuse_their_originals_introspection_and_do_not_pile_up():
    assert cache_dofn_introspection()
    dofn = beam.Map(lambda x: x + 1).fn
    copies = [pickler.roundtrip(dofn) for _ in range(50)]
    assert all(c is not dofn and c._fn is not dofn._fn for c in copies)
    specs = [userstate.get_dofn_specs(c) for c in copies]
    assert all(s == specs[0] for s in specs)
    args = [core.get_function_args_defaults(c._fn) for c in copies]
    assert all(a == (["x"], []) for a in args)
    cells = [c.cell_contents for c in core.get_function_args_defaults.__closure__]
    memo = next(c for c in cells if isinstance(c, dict))
    assert sum(1 for key in memo if key[0] == dofn._fn.__code__) == 1  # one entry, 50 copies
