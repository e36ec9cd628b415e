"""training/registry.py on a local directory: versions, the ``current`` pointer, refusals.

The same registry on ``gs://`` (the GCS emulator) is tested in tests/streaming/test_gcs.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from features import presets
from training import model as models
from training.registry import CURRENT, META_FILE, Registry, RegistryError, model_meta

SPEC = presets.BASELINE


def _save(registry: Registry, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, len(SPEC.names))).astype(np.float32)
    booster = models.train(X, (X[:, 0] > 0).astype(int), models.Params(3))
    meta = model_meta(SPEC, 0.5)
    return registry.save(booster, meta)


def test_versions_are_numbered_and_current_is_a_pointer_object(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    first, second = _save(registry, 1), _save(registry, 2)
    assert (first, second) == ("v0001", "v0002") and registry.versions() == [first, second]
    assert registry.champion() is None and registry.current_version() is None
    registry.promote(second)
    pointer = Path(registry.root) / CURRENT
    assert pointer.is_file() and not pointer.is_symlink()
    assert json.loads(pointer.read_text())["version"] == second
    assert registry.load().version == second and registry.champion_uri().endswith("/v0002")
    registry.promote(first)
    assert registry.load().version == first
    assert not [p for p in os.listdir(registry.root) if p.endswith(".tmp")]


def test_a_version_without_meta_cannot_be_promoted(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    (tmp_path / "models" / "v0001").mkdir()
    with pytest.raises(RegistryError, match=r"missing meta\.json"):
        registry.promote("v0001")
    assert registry.new_version() == "v0002"  # the broken directory keeps its number


def test_a_registry_written_by_an_older_version_is_refused_with_what_to_do(tmp_path: Path):
    root = tmp_path / "models"
    version = _save(Registry(root))
    (root / CURRENT).symlink_to(version, target_is_directory=True)  # the older layout
    registry = Registry(root, create=False)
    with pytest.raises(RegistryError, match=r"older fraudstream.*fraudstream promote"):
        registry.load()


@pytest.mark.parametrize("content", ["not json", '{"other": 1}', '{"version": "../x"}'])
def test_an_unreadable_pointer_is_a_registry_error(tmp_path: Path, content: str) -> None:
    registry = Registry(tmp_path / "models")
    _save(registry)
    (tmp_path / "models" / CURRENT).write_text(content)
    with pytest.raises(RegistryError, match="unreadable champion pointer"):
        registry.current_version()


def test_a_missing_or_foreign_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such model directory"):
        Registry(tmp_path / "absent", create=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(RegistryError, match="not a model directory"):
        Registry(tmp_path / "other")


def test_update_meta_rewrites_one_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    version = _save(registry)
    registry.update_meta(version, note="checked")
    meta = json.loads((Path(registry.root) / version / META_FILE).read_text())
    assert meta["note"] == "checked" and meta["version"] == version


def test_promote_command_lists_and_promotes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from streaming.cli import main

    registry = Registry(tmp_path / "models")
    first, second = _save(registry, 1), _save(registry, 2)
    registry.promote(first)
    assert main(["promote", "--model_dir", registry.root]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == [f"{first}  (current)", second]
    assert main(["promote", "--model_dir", registry.root, "--version", second]) == 0
    assert registry.current_version() == second
    assert main(["promote", "--model_dir", registry.root, "--version", "v0009"]) == 2
    assert "missing meta.json" in capsys.readouterr().err
    assert registry.current_version() == second
