"""The one user-facing error type and the "did you mean" helper.

A leaf module (it imports nothing from editbench), so every other module can use it
without import cycles.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EditbenchError(Exception):
    """A user-facing error: printed as one line by the CLI, never with a traceback."""


class UnknownNameError(EditbenchError):
    """A registry, preset or suite name that does not exist."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for close matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
