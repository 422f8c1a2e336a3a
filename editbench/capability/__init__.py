"""General-capability evaluation: built-in offline suites and an lm-evaluation-harness backend.

``load_suite("default" | "shared" | "paper" | path)`` reads a suite; ``evaluate_suite``
scores a loaded model as it is; ``cached_pre_edit`` does the same for an unedited model
through the cache; ``compare`` builds ``results.capability`` of metrics.json.
"""

from editbench.capability.evaluate import (
    CapabilitySettings,
    cached_pre_edit,
    compare,
    evaluate_suite,
    run_task,
)
from editbench.capability.spec import (
    Suite,
    SuiteSpec,
    TaskSpec,
    load_suite,
    load_task,
    shared_data_dir,
    suite_names,
    task_names,
)

__all__ = [
    "CapabilitySettings",
    "Suite",
    "SuiteSpec",
    "TaskSpec",
    "cached_pre_edit",
    "compare",
    "evaluate_suite",
    "load_suite",
    "load_task",
    "run_task",
    "shared_data_dir",
    "suite_names",
    "task_names",
]
