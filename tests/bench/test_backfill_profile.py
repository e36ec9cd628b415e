"""The backfill profile times every step of :func:`features.backfill.compute` it names."""

import numpy as np
import pytest

from bench.backfill_profile import backfill_profile, write_floor
from features import presets
from features.synthetic import transactions
from features.table import validate


@pytest.mark.parametrize(
    ("preset", "grouped"),
    [("default", True), ("baseline", False)],  # only default has walks a sweep cannot do
)
def test_profile_names_each_step_of_each_entity_kind(preset: str, grouped: bool) -> None:
    spec = presets.get(preset)
    df = validate(transactions(n=2_000), spec)
    result = backfill_profile(df, spec, repeat=1)
    steps = {"whole", "write_floor", "order_check", "derived", "frame"}
    per_entity = ("sweeps", "grouped") if grouped else ("sweeps",)
    steps |= {f"{e.name}_{step}" for e in spec.entities for step in per_entity}
    assert set(result) == {f"backfill_{step}_ms" for step in steps}
    assert all(isinstance(v, float) and v >= 0 for v in result.values())


def test_write_floor_is_the_backfill_output_shape_written_once() -> None:
    spec = presets.BASELINE
    floor = write_floor(1_000, spec)
    assert floor.shape == (1_000, 1 + len(spec.names))
    assert floor.flags.f_contiguous
    assert np.all(floor == 1.0)
