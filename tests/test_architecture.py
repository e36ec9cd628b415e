"""The package rules, read from the imports of every module (function-level imports too).

* ``features/`` is pure: numpy and numba, no Beam, Feast, cloud client or project package.
* ``training/`` depends on ``features/`` only (of the project's packages); of Beam it uses
  only the ``FileSystems`` I/O (the registry on a path or ``gs://``), never pipelines.
* ``streaming/job/`` (what Dataflow workers import) never imports local tooling, batch
  commands or a command module.
* ``streaming/store/`` never imports the job, local tooling or batch commands.
* ``feature_repo/`` imports only the store's names from the project.
* Nothing imports a private name (``_x``) of another module; a test may reach into the
  privates of the project module it tests, not into another test module's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("streaming", "features", "training", "bench", "feature_repo", "tests")
COMMANDS = ("streaming.cli", "streaming.monitoring.command", "streaming.store.materialize")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (``from a.b import c`` -> ``a.b``)
    names: tuple[str, ...]  # names taken by ``from ... import``
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    """Every import statement of a file, wherever it stands."""
    me = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(me, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(a.name for a in node.names)
            found.append(Import(me, node.module, names, node.lineno))
    return found


def python_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


ALL = [i for p in python_files(*PROJECT) for i in imports_of(p)]


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(imports: list[Import], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    """``module:line -> target`` for each import by a module under ``importer`` of a module
    under one of ``forbidden``."""
    return [
        f"{i.module}:{i.line} -> {i.target}"
        for i in imports
        if _under(i.module, importer) and _under(i.target, *forbidden)
    ]


def test_the_rules_see_every_package() -> None:
    modules = {i.module for i in ALL}
    for package in ("streaming.job", "streaming.store", "features", "training", "feature_repo"):
        assert any(_under(m, package) for m in modules), package


def test_features_is_pure() -> None:
    forbidden = ("apache_beam", "feast", "google", "xgboost", "streaming", "training", "bench")
    assert violations(ALL, "features", forbidden) == []


def test_training_depends_on_features_only() -> None:
    assert violations(ALL, "training", ("streaming", "bench")) == []
    beam = [i for i in ALL if _under(i.module, "training") and _under(i.target, "apache_beam")]
    io = ("apache_beam.io.filesystems", "apache_beam.io.filesystem")
    assert [f"{i.module}:{i.line} -> {i.target}" for i in beam if i.target not in io] == []


def test_the_job_never_imports_local_tooling_batch_or_commands() -> None:
    forbidden = ("streaming.local", "streaming.batch", *COMMANDS)
    assert violations(ALL, "streaming.job", forbidden) == []


def test_the_store_never_imports_the_job_or_tooling() -> None:
    forbidden = ("streaming.job", "streaming.local", "streaming.batch", "streaming.cli")
    assert violations(ALL, "streaming.store", forbidden) == []


def test_feature_repo_imports_only_the_store_names() -> None:
    project = [i for i in ALL if _under(i.module, "feature_repo") and _under(i.target, *PROJECT)]
    allowed = ("streaming.store.names", "features")
    assert [
        f"{i.module}:{i.line} -> {i.target}" for i in project if not _under(i.target, *allowed)
    ] == []
    assert project, "feature_repo/definitions.py should build its names from streaming.store.names"


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [
        f"{i.module}:{i.line} -> {i.target}.{name}"
        for i in ALL
        if _under(i.target, *PROJECT)
        and i.target != i.module
        and (not _under(i.module, "tests") or _under(i.target, "tests"))
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize(
    ("source", "rule", "caught"),
    [
        ("from streaming.local.emulators import up\n", "job", True),
        ("from streaming.job.pipeline import build\n", "job", False),
        ("def f():\n    from streaming.batch import parity\n", "job", True),
        ("from streaming.job.pipeline import _secret\n", "private", True),
    ],
)
def test_the_checks_catch_a_planted_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, rule: str, caught: bool
) -> None:
    fake_root = tmp_path
    module = fake_root / "streaming" / "job" / "planted.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    monkeypatch.setattr(f"{__name__}.ROOT", fake_root)
    planted = imports_of(module)
    if rule == "job":
        found = violations(planted, "streaming.job", ("streaming.local", "streaming.batch"))
    else:
        found = [n for i in planted for n in i.names if n.startswith("_")]
    assert bool(found) is caught
