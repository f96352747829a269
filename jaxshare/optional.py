"""Optional dependencies: imported where their feature is used, and named with the extra that
brings them when they are missing.

The core (load, forward, the compression methods, eval, export) needs only the packages in
pyproject's `dependencies`; plots, the NNX view, training and its metric writers, lm-eval and
object-store paths each live behind an extra. A feature that needs one calls `require` at the
point of use, so `import jaxshare` and `jaxshare --help` work without any of them, and a missing
package is one line (`MissingDependency`: the CLI prints it and exits 2) instead of a traceback.

This module imports nothing from jaxshare but jaxshare.errors: any floor may use it.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from jaxshare.errors import MissingDependency


def message(package: str, extra: str, purpose: str) -> str:
    return f"{purpose} needs the {package} package: pip install 'jaxshare[{extra}]' (or pip install {package})"


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it (cheap enough for argument parsing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken spec
        return False


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """`module` imported, or MissingDependency naming its package (default: the module's top-level
    name) and the extra that brings it. A package that is installed but fails to import for another
    reason (a missing dependency of its own) keeps its own ImportError: that is a broken install,
    not a missing extra."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != top:
            raise
        raise MissingDependency(message(package or top, extra, purpose)) from None


def check(module: str, extra: str, purpose: str, package: str | None = None) -> None:
    """Refuse early (before a model loads) when `module` is not installed; imports nothing."""
    if not available(module):
        raise MissingDependency(message(package or module.split(".")[0], extra, purpose))
