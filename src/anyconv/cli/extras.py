"""Optional packages of the ``demo`` extra: import them, or explain in one line how to get them.

The library itself needs only torch; the command line's demo uses scikit-learn, tqdm and matplotlib.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

INSTALL_HINT = "pip install 'anyconv[demo]'"


class MissingExtra(RuntimeError):
    """An optional package the demo needs is not installed."""


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` naming the package and the install command.

    >>> require("json", "json", "read JSON").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtra(f"the demo needs {package} to {purpose}: {INSTALL_HINT}") from error


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None
