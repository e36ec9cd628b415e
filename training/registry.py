"""A model registry on a directory: ``DIR/<version>/`` per model, ``DIR/current`` the champion.

A version holds ``model.ubj`` (the booster, UBJSON) and ``meta.json``: the ordered feature list,
the spec's fingerprint, the training window, a fingerprint of the data, metrics, the alert
threshold and the promotion decision. ``current`` is a symlink swapped atomically, so a reader
(the streaming job) sees either the old or the new champion, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from features.spec import FeatureSpec

MODEL_FILE = "model.ubj"
META_FILE = "meta.json"
CURRENT = "current"


class RegistryError(ValueError):
    """The model directory or a version in it is unusable; the message says why."""


@dataclass(frozen=True)
class ModelVersion:
    """A loaded version: its booster and metadata."""

    path: Path
    booster: xgb.Booster
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def features(self) -> list[str]:
        return self.meta["features"]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    def check_spec(self, spec: FeatureSpec) -> None:
        """Raise :class:`RegistryError` unless this model was trained on ``spec``'s features."""
        if self.features != spec.names or self.meta["spec_fingerprint"] != spec.fingerprint():
            raise RegistryError(
                f"model {self.version} was trained on spec {self.meta['preset']} "
                f"({self.meta['spec_fingerprint']}), not {spec.name} ({spec.fingerprint()})"
            )


class Registry:
    """Versions of models under one directory."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is not a directory")
        if self.root.exists() and any(self.root.iterdir()) and not self._looks_like_registry():
            raise RegistryError(f"{self.root} is not a model directory (no versions, no current)")
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.exists():
            raise RegistryError(f"{self.root}: no such model directory")

    def _looks_like_registry(self) -> bool:
        return (self.root / CURRENT).exists() or any(
            (p / META_FILE).exists() for p in self.root.iterdir() if p.is_dir()
        )

    def versions(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and (p / META_FILE).exists()
        )

    def new_version(self) -> str:
        """``v0001``, ``v0002``, ... (sortable, never reused: a broken version's directory
        still holds its number)."""
        names = (p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())
        numbers = [int(v[1:]) for v in names if v.startswith("v") and v[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def save(self, booster: xgb.Booster, meta: dict) -> Path:
        """Write a new version; returns its directory."""
        version = meta.setdefault("version", self.new_version())
        path = self.root / version
        path.mkdir()
        booster.save_model(path / MODEL_FILE)
        (path / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        return path

    def update_meta(self, version: str, **fields: object) -> None:
        path = self.root / version / META_FILE
        meta = json.loads(path.read_text())
        meta.update(fields)
        path.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")

    def load(self, version: str = CURRENT) -> ModelVersion:
        """Load a version (``current`` by default); :class:`RegistryError` if unusable."""
        path = self.root / version
        if not (path / META_FILE).exists():
            raise RegistryError(f"{path}: no model here (missing {META_FILE})")
        try:
            meta = json.loads((path / META_FILE).read_text())
            booster = xgb.Booster()
            booster.load_model(path / MODEL_FILE)
        except (OSError, ValueError, xgb.core.XGBoostError) as exc:
            raise RegistryError(f"{path}: cannot load the model ({exc})") from exc
        if booster.num_features() != len(meta.get("features", [])):
            raise RegistryError(
                f"{path}: the booster takes {booster.num_features()} features, "
                f"meta.json lists {len(meta.get('features', []))}"
            )
        return ModelVersion(path.resolve(), booster, meta)

    def champion(self) -> ModelVersion | None:
        return self.load() if (self.root / CURRENT).exists() else None

    def promote(self, version: str) -> None:
        """Point ``current`` at ``version`` atomically (a new symlink renamed over the old)."""
        tmp = self.root / f".{CURRENT}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(version, target_is_directory=True)
        os.replace(tmp, self.root / CURRENT)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
