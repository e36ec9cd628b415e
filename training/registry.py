"""A model registry under a directory or a ``gs://`` prefix: ``ROOT/<version>/`` per model,
``ROOT/current`` the champion.

A version holds ``model.ubj`` (the booster, UBJSON) and ``meta.json``: the ordered feature list,
the spec's fingerprint, the training window, a fingerprint of the data, metrics, the alert
threshold and the promotion decision. ``current`` is a small JSON object naming the champion
(``{"version": "v0003"}``), replaced atomically (a rename on a local disk, one object write on
GCS, which has no symlinks), so a reader (the streaming job) sees either the old or the new
champion, never half of one. Every read and write goes through Beam's ``FileSystems``: a local
path and a ``gs://`` URI behave the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xgboost as xgb
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from features.spec import FeatureSpec

MODEL_FILE = "model.ubj"
META_FILE = "meta.json"
CURRENT = "current"


class RegistryError(ValueError):
    """The model directory or a version in it is unusable; the message says why."""


@dataclass(frozen=True)
class ModelVersion:
    """A loaded version: its booster and metadata."""

    path: str
    """The version's directory (a local path or a ``gs://`` URI)."""
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


def model_meta(spec: FeatureSpec, threshold: float, **fields: object) -> dict:
    """The least ``meta.json`` a version needs to be loaded for ``spec``: its preset, feature
    list and fingerprint, and the alert threshold (``fields`` add to it)."""
    return {
        "preset": spec.name,
        "features": spec.names,
        "spec_fingerprint": spec.fingerprint(),
        "threshold": threshold,
        **fields,
    }


class Registry:
    """Versions of models under one root: a local directory or a ``gs://`` prefix."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = str(root).rstrip("/")
        self.local = FileSystems.get_scheme(self.root) in (None, "file")
        if self.local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise RegistryError(f"{self.root} is not a directory")
        children = self._children()
        if children and not self._looks_like_registry(children):
            raise RegistryError(f"{self.root} is not a model directory (no versions, no current)")
        if create and self.local:
            os.makedirs(self.root, exist_ok=True)
        elif not create and not children and not (self.local and os.path.isdir(self.root)):
            raise RegistryError(f"{self.root}: no such model directory")

    def uri(self, *parts: str) -> str:
        """``ROOT/part/...``."""
        return FileSystems.join(self.root, *parts)

    def _children(self) -> set[str]:
        """First-level names under the root (directories locally, prefixes on GCS)."""
        if self.local:
            return set(os.listdir(self.root)) if os.path.isdir(self.root) else set()
        found = FileSystems.match([self.uri("**")])[0].metadata_list
        prefix = self.root + "/"
        return {m.path[len(prefix) :].split("/", 1)[0] for m in found}

    def _looks_like_registry(self, children: set[str]) -> bool:
        return CURRENT in children or any(self._exists(c, META_FILE) for c in children)

    def _exists(self, *parts: str) -> bool:
        return FileSystems.exists(self.uri(*parts))

    def versions(self) -> list[str]:
        """The versions that have a ``meta.json``, oldest first."""
        return sorted(c for c in self._children() if c != CURRENT and self._exists(c, META_FILE))

    def new_version(self) -> str:
        """``v0001``, ``v0002``, ... (sortable, never reused: a broken version's directory
        still holds its number)."""
        numbers = [int(v[1:]) for v in self._children() if v.startswith("v") and v[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:04d}"

    @contextlib.contextmanager
    def writing(self, meta: dict) -> Iterator[Path]:
        """A new version's local directory to write into (``meta["version"]`` is set if absent);
        on a remote root it is a staging directory, uploaded file by file when the block ends
        (``meta.json`` last, so a version is listed only once complete)."""
        version = meta.setdefault("version", self.new_version())
        if self.local:
            path = Path(self.root) / version
            path.mkdir()
            yield path
            return
        with tempfile.TemporaryDirectory(prefix=f"fraudstream-{version}-") as tmp:
            yield Path(tmp)
            files = sorted(Path(tmp).rglob("*"), key=lambda f: f.name == META_FILE)
            for file in files:
                if file.is_file():
                    relative = file.relative_to(tmp).as_posix()
                    _write(self.uri(version, *relative.split("/")), file.read_bytes())

    def save(self, booster: xgb.Booster, meta: dict) -> str:
        """Write a new version (model and meta only); returns its name."""
        with self.writing(meta) as path:
            booster.save_model(path / MODEL_FILE)
            (path / META_FILE).write_text(to_json(meta))
        return meta["version"]

    def update_meta(self, version: str, **fields: object) -> None:
        meta = json.loads(_read(self.uri(version, META_FILE)))
        meta.update(fields)
        _write(self.uri(version, META_FILE), to_json(meta).encode(), replace=self.local)

    def current_version(self) -> str | None:
        """The champion's name from the ``current`` pointer; None if nothing was promoted.

        :class:`RegistryError` if the pointer is unreadable, or is the directory link of a
        registry written by an older fraudstream."""
        pointer = self.uri(CURRENT)
        if self._exists(CURRENT, META_FILE) or (self.local and os.path.isdir(pointer)):
            raise RegistryError(
                f"{pointer} is a link to a version directory: this registry was written by an "
                "older fraudstream; promote its champion again (`fraudstream promote "
                f"--model_dir {self.root} --version VERSION`)"
            )
        if not FileSystems.exists(pointer):
            return None
        try:
            version = json.loads(_read(pointer))["version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{pointer}: unreadable champion pointer ({exc})") from exc
        if not isinstance(version, str) or not version or "/" in version:
            raise RegistryError(f"{pointer}: unreadable champion pointer (version {version!r})")
        return version

    def load(self, version: str = CURRENT) -> ModelVersion:
        """Load a version (``current``: the champion); :class:`RegistryError` if unusable."""
        if version == CURRENT:
            champion = self.current_version()
            if champion is None:
                raise RegistryError(f"{self.uri(CURRENT)}: no model here (nothing promoted)")
            version = champion
        path = self.uri(version)
        if not self._exists(version, META_FILE):
            raise RegistryError(f"{path}: no model here (missing {META_FILE})")
        try:
            meta = json.loads(_read(self.uri(version, META_FILE)))
            booster = xgb.Booster()
            booster.load_model(bytearray(_read(self.uri(version, MODEL_FILE))))
        except (OSError, ValueError, xgb.core.XGBoostError) as exc:
            raise RegistryError(f"{path}: cannot load the model ({exc})") from exc
        if booster.num_features() != len(meta.get("features", [])):
            raise RegistryError(
                f"{path}: the booster takes {booster.num_features()} features, "
                f"meta.json lists {len(meta.get('features', []))}"
            )
        return ModelVersion(path, booster, meta)

    def champion_uri(self) -> str | None:
        """The champion version's directory, or None if nothing was promoted."""
        version = self.current_version()
        return None if version is None else self.uri(version)

    def champion(self) -> ModelVersion | None:
        return self.load() if self.current_version() is not None else None

    def promote(self, version: str) -> None:
        """Point ``current`` at ``version``, atomically (see the module docstring)."""
        if not self._exists(version, META_FILE):
            raise RegistryError(f"{self.uri(version)}: no model here (missing {META_FILE})")
        pointer = {"version": version, "promoted_at": datetime.now(UTC).isoformat()}
        _write(self.uri(CURRENT), to_json(pointer).encode(), replace=self.local)


def _read(uri: str) -> bytes:
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _write(uri: str, data: bytes, replace: bool = False) -> None:
    """Write ``data`` to ``uri``. ``replace``: through a temporary name renamed over the target
    (local files); an object store replaces an object whole anyway."""
    target = f"{os.path.dirname(uri)}/.{os.path.basename(uri)}.tmp" if replace else uri
    with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    if replace:
        os.replace(target, uri)


def to_json(value: dict) -> str:
    """``value`` as the registry writes JSON (indented, numpy scalars as numbers)."""
    return json.dumps(value, indent=2, default=_json_default) + "\n"


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
