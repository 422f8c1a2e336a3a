"""Where the bundled ``hparams/`` and ``datasets/`` folders are.

In a wheel they live under ``editbench/_bundled/`` (see ``pyproject.toml``); in a checkout
or an editable install they are the top-level folders beside ``editbench/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from editbench.errors import EditbenchError

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_bundled" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise EditbenchError(f"bundled folder {name!r} not found beside {_PACKAGE_DIR}")


def checkout_root() -> Path | None:
    """The source checkout editbench runs from, or None for an installed wheel."""
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "editbench").is_dir() else None


def cache_dir(*parts: str) -> Path:
    """The user cache (``EDITBENCH_CACHE`` or ``~/.cache/editbench``)."""
    root = os.environ.get("EDITBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "editbench"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
