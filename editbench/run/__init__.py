"""Running experiments: one run of the sequential protocol, grids of runs, and tuning.

- :mod:`~editbench.run.spec`: :class:`RunSpec`, what defines a run (the CLI's flags);
- :mod:`~editbench.run.plan`: everything checked before a model loads;
- :mod:`~editbench.run.record`: config.json, the comparability key, resume identity,
  checkpointed state; :mod:`~editbench.run.rundir`: the run directory's files;
- :mod:`~editbench.run.loop`: the edit loop (steps, checkpoints);
- :mod:`~editbench.run.phases`: the evaluation phases (baseline, curve, final, capability);
- :mod:`~editbench.run.execute`: :func:`run`, the protocol start to finish;
- :mod:`~editbench.run.sweep` / :mod:`~editbench.run.grid`: grids of runs, local or on Ray;
- :mod:`~editbench.run.tune`: ``editbench tune``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names and the module that defines each; imported on first use, so that the CLI
# (which reads RunSpec's fields) starts without importing torch.
_EXPORTS = {
    "run": "execute", "check_finite": "loop", "edit_and_evaluate": "loop",
    "edit_sequentially": "loop", "oom_guard": "loop", "Plan": "plan", "plan_run": "plan",
    "comparability": "record", "describe_run": "record", "resume_identity": "record",
    "RunDir": "rundir", "RunSpec": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'editbench.run' has no attribute {name!r}")
    return getattr(importlib.import_module(f"editbench.run.{_EXPORTS[name]}"), name)
