from __future__ import annotations

import pandas as pd
import pytest

from features import presets
from features.table import validate
from streaming.cli import main
from training.simulator import SimulatorConfig, simulate

SMALL = SimulatorConfig(customers=300, terminals=600, days=40, seed=3)


def test_same_seed_same_history_with_all_three_scenarios():
    a, b = simulate(SMALL), simulate(SMALL)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(simulate(SimulatorConfig(300, 600, 40, seed=4)))
    assert set(a["TX_FRAUD_SCENARIO"].unique()) == {0, 1, 2, 3}
    assert (a["TX_FRAUD"] == (a["TX_FRAUD_SCENARIO"] > 0)).all()
    assert (a.loc[a["TX_FRAUD_SCENARIO"] == 1, "TX_AMOUNT"] > 220).all()
    assert 0.002 < a["TX_FRAUD"].mean() < 0.05
    assert a["TX_DATETIME"].is_monotonic_increasing
    validate(a, presets.DEFAULT)  # the reference columns and types


def test_bad_sizes_are_rejected_and_the_cli_writes_parquet(tmp_path, capsys):
    with pytest.raises(ValueError, match="days must be positive"):
        SimulatorConfig(days=0)
    out = tmp_path / "sim.parquet"
    args = ["simulate", "--customers", "100", "--terminals", "200", "--days", "10"]
    assert main([*args, "--output", str(out)]) == 0
    assert len(pd.read_parquet(out)) > 100
    assert "transactions" in capsys.readouterr().out
