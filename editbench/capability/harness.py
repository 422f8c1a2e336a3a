"""The lm-evaluation-harness backend: its tasks run on the already-loaded (edited) model.

The model object is wrapped in lm-eval's ``HFLM`` as it is in memory, so an edited 72B
model is never saved and reloaded. One ``simple_evaluate`` call per task, so each task
keeps its own few-shot count, limit and seed. ``sample: random`` with a ``limit`` draws a
seeded random subset of every subtask (``limit: 500`` on MMLU: 500 random questions per
subject, all of a subject that has fewer); ``sample: first`` takes lm-eval's first
``limit`` documents. lm-eval is an optional extra: ``pip install editbench[lm-eval]``.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editbench.capability.evaluate import CapabilitySettings
from editbench.capability.spec import TaskSpec
from editbench.errors import EditbenchError
from editbench.extras import require

if TYPE_CHECKING:
    from editbench.models import ModelHandle


def _import():
    feature = "the lm-eval capability backend"
    lm_eval = require("lm_eval", feature)
    hf = require("lm_eval.models.huggingface", feature)
    tasks = require("lm_eval.tasks", feature)
    return lm_eval.simple_evaluate, hf.HFLM, tasks.TaskManager


def make_lm(handle: ModelHandle, batch_size: int = 32):
    """lm-eval's HF model around the in-memory model and tokenizer (no save, no reload)."""
    _, HFLM, _ = _import()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=batch_size)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _samples(manager, task: TaskSpec, cap: int) -> dict[str, list[int]]:
    """A seeded random ``cap`` documents of every leaf task (all when it has fewer)."""
    loaded = manager.load([task.harness_task])
    out = {}
    for name, obj in loaded["tasks"].items():
        n = len(obj.eval_docs)
        rng = random.Random(f"{task.seed}:{name}")
        out[name] = sorted(rng.sample(range(n), cap)) if n > cap else list(range(n))
    return out


def _metric(result: dict[str, Any], task: TaskSpec) -> float:
    for section in ("results", "groups"):
        entry = result.get(section, {}).get(task.harness_task)
        if entry and task.harness_metric in entry:
            return float(entry[task.harness_metric]) * task.metric_scale
    known = sorted(result.get("results", {}).get(task.harness_task, {}))
    raise EditbenchError(
        f"capability task {task.name!r}: lm-eval reported no {task.harness_metric!r} for "
        f"{task.harness_task!r}; it reported {known}"
    )


def task_manager(task: TaskSpec, task_file: Path | None, managers: dict[Any, Any] | None = None):
    """lm-eval's task index for ``task``; indexing the built-in tasks takes seconds, so one
    index is shared by the tasks of a suite that need the same one."""
    _, _, TaskManager = _import()
    include = None
    if task.harness_include is not None:
        include = str((task_file.parent if task_file else Path.cwd()) / task.harness_include)
    key = (include, task.harness_defaults)
    managers = {} if managers is None else managers
    if key not in managers:
        managers[key] = TaskManager(include_path=include, include_defaults=task.harness_defaults)
    return managers[key]


def run_harness_task(
    lm, task: TaskSpec, task_file: Path | None, settings: CapabilitySettings, manager=None
) -> dict[str, Any]:
    simple_evaluate, _, _ = _import()
    manager = manager or task_manager(task, task_file)
    cap = min((x for x in (task.limit, settings.limit) if x is not None), default=None)
    t0 = time.perf_counter()
    try:
        samples = _samples(manager, task, cap) if cap is not None and task.sample == "random" else None
        result = simple_evaluate(
            model=lm,
            tasks=[task.harness_task],
            num_fewshot=task.num_fewshot,
            limit=cap if samples is None else None,
            samples=samples,
            task_manager=manager,
            bootstrap_iters=0,
            log_samples=False,
            random_seed=task.seed,
            numpy_random_seed=task.seed,
            torch_random_seed=task.seed,
            fewshot_random_seed=task.seed,
        )
    except EditbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many kinds
        raise EditbenchError(
            f"capability task {task.name!r}: lm-eval task {task.harness_task!r} failed "
            f"(is its data reachable? hub datasets need network access): {_one_line(exc)}"
        ) from exc
    elapsed = time.perf_counter() - t0
    n = sum(int(v.get("effective", 0)) for v in result.get("n-samples", {}).values())
    return {
        "kind": "harness",
        "harness_task": task.harness_task,
        "metric": f"lm-eval {task.harness_metric}" + (f" x {task.metric_scale}" if task.metric_scale != 1 else ""),
        "num_fewshot": task.num_fewshot,
        "n": n,
        "score": _metric(result, task),
        "chance": task.chance,
        "time_s": round(elapsed, 3),
        "prompts_per_s": round(n / elapsed, 2) if elapsed > 0 else None,
        "lm_eval_version": result.get("config", {}).get("lm_eval_version")
        or _lm_eval_version(),
    }


def _lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return None


def evaluate_harness(
    handle: ModelHandle, tasks: list[TaskSpec], settings: CapabilitySettings, task_files: dict[str, Path] | None = None
) -> dict[str, dict[str, Any]]:
    """Score every harness task on the in-memory model."""
    lm = make_lm(handle, settings.batch_size)
    files, managers = task_files or {}, {}
    return {
        t.name: run_harness_task(
            lm, t, files.get(t.name), settings, task_manager(t, files.get(t.name), managers)
        )
        for t in tasks
    }
