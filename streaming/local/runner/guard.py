"""Whether a local-runner patch fits the installed Beam.

Each patch replaces or wraps Beam internals of one release series, whose code it relies on line
for line. Before patching, it checks that Beam is that series and that every function it
replaces or relies on still has the source it was written against (a digest of
``inspect.getsource``). If not, the patch is skipped with one warning and the runner runs
unpatched: slower, but correct. :func:`patch_once` makes a patching function do that check,
once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BEAM_SERIES = "2.77"  # the apache-beam release series the patches were written for (pyproject)

log = logging.getLogger(__name__)


def source_digest(obj: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``obj``'s source code."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def resolve(path: str) -> Any:
    """The object ``module:qualified.name`` (or a module, ``module:``) names now; raises
    ``ImportError`` or ``AttributeError``."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for name in filter(None, qualname.split(".")):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Replaced:
    """A Beam function (or method) that a patch replaces or relies on.

    ``path`` is ``module:qualified.name``; ``digest`` is :func:`source_digest` of the function
    the patch was written against.
    """

    path: str
    digest: str

    def resolve(self) -> Any:
        """The object ``path`` names now; raises ``ImportError`` or ``AttributeError``."""
        return resolve(self.path)

    def misfit(self) -> str | None:
        """Why the installed function is not the one the patch expects; None if it is."""
        try:
            found = source_digest(self.resolve())
        except (ImportError, AttributeError):
            return f"{self.path} is missing"
        except (OSError, TypeError):
            return f"the source of {self.path} cannot be read"
        if found != self.digest:
            return f"{self.path} is not the code the patch was written for"
        return None


def misfit(replaced: Sequence[Replaced]) -> str | None:
    """Why a patch relying on ``replaced`` does not fit the installed Beam; None if it does."""
    import apache_beam

    version = apache_beam.__version__
    if version.split(".")[:2] != BEAM_SERIES.split("."):
        return f"apache-beam {version} is installed, the patch is for {BEAM_SERIES}.x"
    problems = [problem for r in replaced if (problem := r.misfit()) is not None]
    return "; ".join(problems) or None


def fits(patch: str, replaced: Sequence[Replaced]) -> bool:
    """True if ``patch`` fits the installed Beam; else log one warning saying why and False."""
    reason = misfit(replaced)
    if reason is not None:
        log.warning("local runner patch %s skipped, the runner runs without it: %s", patch, reason)
    return reason is None


_PATCHING = threading.Lock()


def patch_once(
    name: str, owner: str, mark: str, replaced: Sequence[Replaced]
) -> Callable[[Callable[[], None]], Callable[[], bool]]:
    """Decorate the function that applies patch ``name``: the decorated function applies it
    once per process, and only if it :func:`fits` the installed Beam, and returns whether it is
    applied. Applied, the attribute ``mark`` of ``owner`` (a :func:`resolve` path) is True."""

    def decorate(patch: Callable[[], None]) -> Callable[[], bool]:
        def apply() -> bool:
            with _PATCHING:
                target = resolve(owner)
                if getattr(target, mark, False):
                    return True
                if not fits(name, replaced):
                    return False
                patch()
                setattr(target, mark, True)
                return True

        # the patch's name and docstring (not its annotations: ``apply`` returns a bool)
        return functools.update_wrapper(
            apply, patch, assigned=("__module__", "__name__", "__qualname__", "__doc__")
        )

    return decorate
