"""Deterministic fault injection for the crash tests (inert unless the variable is set).

``EDITBENCH_FAULT=<point>:<n>`` makes the process SIGKILL itself the n-th time it reaches
``point(<point>)``: the kill tests use it to stop a run exactly inside a baseline chunk, an
epoch (after a training batch), a checkpoint write, the final evaluation or the metrics
write, then resume it and compare with an uninterrupted run. Points are named where they
are placed.
"""

from __future__ import annotations

import os
import signal

_ENV = "EDITBENCH_FAULT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(_ENV)
    if not spec:
        return
    where, _, count = spec.partition(":")
    if where != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
