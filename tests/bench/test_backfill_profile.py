"""The backfill profile times every step of :func:`features.backfill.compute` it names."""

import numpy as np

from bench.backfill_profile import backfill_profile, write_floor
from features import presets
from features.synthetic import transactions
from features.table import validate


def test_profile_names_each_step_of_each_entity_kind() -> None:
    spec = presets.DEFAULT
    df = validate(transactions(n=2_000), spec)
    result = backfill_profile(df, spec, repeat=1)
    steps = {"whole", "write_floor", "order_check", "derived", "frame"}
    steps |= {f"{e.name}_{step}" for e in spec.entities for step in ("sort", "walks")}
    assert set(result) == {f"backfill_{step}_ms" for step in steps}
    assert all(isinstance(v, float) and v >= 0 for v in result.values())


def test_write_floor_is_the_backfill_output_shape_written_once() -> None:
    spec = presets.BASELINE
    floor = write_floor(1_000, spec)
    assert floor.shape == (1_000, 1 + len(spec.names))
    assert floor.flags.f_contiguous
    assert np.all(floor == 1.0)
