"""The scoring handler's live model: hot swap on promotion, faulty versions rejected."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from features import presets
from training import model as models
from training.registry import META_FILE, MODEL_FILE, Registry, RegistryError, model_meta

SPEC = presets.BASELINE


def _save(registry: Registry, seed: int, **meta_overrides) -> str:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, len(SPEC.names))).astype(np.float32)
    y = (X[:, seed % X.shape[1]] > 0.5).astype(int)
    booster = models.train(X, y, models.Params(5))
    meta = model_meta(SPEC, 0.5, **meta_overrides)
    return registry.save(booster, meta)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path / "models")
    registry.promote(_save(registry, 1))
    return registry


def test_a_promoted_version_scores_after_the_next_poll(registry):
    from streaming.job.scoring import LiveModel

    clock = _Clock()
    live = LiveModel(registry.root, SPEC, "cpu", poll_s=10, clock=clock)
    assert live.get().version == "v0001"
    registry.promote(_save(registry, 2))
    clock.now = 5
    assert live.get().version == "v0001"  # not polled yet
    clock.now = 10
    assert live.get().version == "v0002"


@pytest.mark.chaos
@pytest.mark.parametrize("fault", ["corrupt booster", "other spec", "missing meta"])
def test_a_faulty_version_is_rejected_and_the_previous_keeps_scoring(registry, fault, caplog):
    from streaming.job.scoring import LiveModel

    clock = _Clock()
    live = LiveModel(registry.root, SPEC, "cpu", poll_s=1, clock=clock)
    if fault == "other spec":
        bad = _save(registry, 3, spec_fingerprint="0123456789abcdef")
    else:
        bad = _save(registry, 3)
    registry.promote(bad)
    target = Path(registry.root) / bad / (MODEL_FILE if fault == "corrupt booster" else META_FILE)
    if fault == "corrupt booster":
        target.write_bytes(b"not a model")
    elif fault == "missing meta":
        target.unlink()  # after promotion: `promote` refuses a version without meta.json
    clock.now = 1
    with caplog.at_level(logging.ERROR, logger="streaming.job.scoring"):
        assert live.get().version == "v0001"
    assert "rejected, v0001 keeps scoring" in caplog.text
    good = _save(registry, 4)
    registry.promote(good)  # a good version after it is picked up
    clock.now = 2
    assert live.get().version == good != bad


def test_no_usable_champion_fails_at_start(tmp_path):
    from streaming.job.scoring import LiveModel

    registry = Registry(tmp_path / "models")
    version = _save(registry, 1, spec_fingerprint="0123456789abcdef")
    registry.promote(version)
    with pytest.raises(RegistryError, match="trained on spec"):
        LiveModel(registry.root, SPEC, "cpu")


def test_the_handler_shares_one_live_model_per_process(registry):
    from streaming.job.scoring import BoosterHandler

    a = BoosterHandler(registry.root, SPEC.name, device="cpu").load_model()
    b = BoosterHandler(registry.root, SPEC.name, device="cpu").load_model()
    assert a is b
    with pytest.raises(ValueError, match="device"):
        BoosterHandler(registry.root, SPEC.name, device="tpu")
