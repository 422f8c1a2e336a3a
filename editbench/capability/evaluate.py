"""Evaluate a suite on a loaded (possibly edited) model, and cache the pre-edit result.

Each task's records become items (prompt template + fixed few-shot prefix), the matching
scorer runs batched, and the suite's score is the mean of its tasks' scores (tasks listed
in ``report_only`` are reported but left out of the mean). The pre-edit result is cached
per (model weights and dtype, suite content, data content, settings).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editbench.capability import scoring
from editbench.capability.spec import Suite, TaskSpec, read_records, resolve_data, split
from editbench.errors import EditbenchError
from editbench.files import atomic_write_json, json_digest
from editbench.progress import bar
from editbench.resources import cache_dir

if TYPE_CHECKING:
    from editbench.models import ModelHandle

CACHE_VERSION = 2


@dataclass(frozen=True)
class CapabilitySettings:
    """Run-time choices; ``limit`` caps every task's sample (None: the task files' limits)."""

    limit: int | None = None
    batch_size: int = 32
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise EditbenchError(f"--capability-limit: expected a positive integer, got {self.limit}")
        if self.batch_size < 1:
            raise EditbenchError(f"capability batch size must be positive, got {self.batch_size}")

    def key(self) -> dict[str, Any]:
        """The settings that change the numbers (batch size and data folder do not)."""
        return {"limit": self.limit}


def _render(task: TaskSpec, record: dict[str, Any], where: str) -> str:
    try:
        return task.prompt.format_map(record)
    except (KeyError, IndexError, AttributeError) as exc:
        raise EditbenchError(
            f"capability task {task.name!r}, {where}: prompt template {task.prompt!r} needs {exc} "
            f"(record keys: {sorted(record)})"
        ) from None


def _field(task: TaskSpec, record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise EditbenchError(
            f"capability task {task.name!r}, {where}: missing key {key!r} (record keys: {sorted(record)})"
        )
    return record[key]


def choice_item(task: TaskSpec, record: dict[str, Any], where: str) -> tuple[list[str], list[int]]:
    """A record's options and the indices of its correct ones."""
    if task.choices_key:
        value = _field(task, record, task.choices_key, where)
        if isinstance(value, dict):  # BIG-bench target_scores: the best-scored options are correct
            options = [str(k) for k in value]
            best = max(value.values())
            correct = [i for i, v in enumerate(value.values()) if v == best and best > 0]
            if task.answer_key is None:
                if not correct:
                    raise EditbenchError(f"capability task {task.name!r}, {where}: no option scores above 0")
                return options, correct
        elif isinstance(value, list) and value:
            options = [str(v) for v in value]
        else:
            raise EditbenchError(
                f"capability task {task.name!r}, {where}: key {task.choices_key!r} must be a "
                f"non-empty list or a mapping of option -> score"
            )
    else:
        options = list(task.choices or [])
    if task.answer_key is None:
        raise EditbenchError(f"capability task {task.name!r}: 'answer_key' is needed unless "
                             f"{task.choices_key!r} holds BIG-bench target_scores")
    answer = _field(task, record, task.answer_key, where)
    if isinstance(answer, str) and answer in task.label_map:
        answer = task.label_map[answer]
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise EditbenchError(f"capability task {task.name!r}, {where}: answer {answer!r} is not an index or an option")
    if isinstance(answer, str):
        if answer not in options:
            raise EditbenchError(
                f"capability task {task.name!r}, {where}: answer {answer!r} is not one of the options {options}"
            )
        answer = options.index(answer)
    if not 0 <= answer < len(options):
        raise EditbenchError(f"capability task {task.name!r}, {where}: answer index {answer} out of range")
    return options, [answer]


def gold_answers(task: TaskSpec, record: dict[str, Any], where: str) -> list[str]:
    value = _field(task, record, task.answer_key or "answer", where)
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise EditbenchError(f"capability task {task.name!r}, {where}: answer must be a string or a list of strings")
    return [str(v) for v in values]


def _target_text(task: TaskSpec, record: dict[str, Any], where: str) -> str:
    if task.kind == "multiple_choice":
        options, correct = choice_item(task, record, where)
        return options[correct[0]]
    return gold_answers(task, record, where)[0]


def prepare_task(task: TaskSpec, task_file: Path, settings: CapabilitySettings) -> dict[str, Any]:
    """Read a task's records and build every prompt: all data errors surface here, before
    any model time is spent."""
    records, source = read_records(task, task_file, settings.data_dir)
    shots, chosen = split(len(records), task, settings.limit)
    where = {i: f"record {i} of {source}" for i in (*shots, *chosen)}
    prefix = "".join(
        _render(task, records[i], where[i]).rstrip() + " " + _target_text(task, records[i], where[i]).strip()
        + task.fewshot_separator
        for i in shots
    )
    prepared: dict[str, Any] = {"n": len(chosen), "num_fewshot": len(shots)}
    if task.kind == "multiple_choice":
        prepared["items"] = [
            scoring.ChoiceItem(prefix + _render(task, records[i], where[i]), *choice_item(task, records[i], where[i]))
            for i in chosen
        ]
    elif task.kind == "generation":
        prepared["prompts"] = [prefix + _render(task, records[i], where[i]) for i in chosen]
        prepared["answers"] = [gold_answers(task, records[i], where[i]) for i in chosen]
    elif task.kind == "perplexity":
        prepared["texts"] = [str(_field(task, records[i], task.text_key, where[i])) for i in chosen]
    else:
        raise EditbenchError(f"capability task {task.name!r}: kind {task.kind!r} needs the lm-eval backend")
    return prepared


def run_task(
    handle: ModelHandle, task: TaskSpec, task_file: Path, settings: CapabilitySettings,
    prepared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one built-in task; returns score, chance, n and timings."""
    prepared = prepared or prepare_task(task, task_file, settings)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"kind": task.kind, "n": prepared["n"], "num_fewshot": prepared["num_fewshot"]}
    if task.kind == "multiple_choice":
        items = prepared["items"]
        score, _ = scoring.score_choices(handle, items, task.normalization, settings.batch_size)
        chance = sum(it.chance for it in items) / len(items)
        out.update(metric=f"accuracy (option log-likelihood, normalization {task.normalization})",
                   options=sum(len(it.options) for it in items))
    elif task.kind == "generation":
        score, _ = scoring.score_generation(
            handle, prepared["prompts"], prepared["answers"], task.match, task.max_new_tokens,
            settings.batch_size,
        )
        chance = 0.0
        out["metric"] = f"{task.match} match of the greedy answer"
    else:
        result = scoring.perplexity(handle, prepared["texts"], task.max_tokens, max(1, settings.batch_size // 2))
        score, chance = result.score, 1.0 / len(handle.tokenizer)
        out.update(metric="1 / perplexity (geometric-mean token probability)",
                   perplexity=round(result.perplexity, 4), tokens=result.num_tokens)
    elapsed = time.perf_counter() - t0
    out.update(score=score, chance=chance, time_s=round(elapsed, 3),
               prompts_per_s=round(prepared["n"] / elapsed, 2) if elapsed > 0 else None)
    return out


def summarize(suite: Suite, tasks: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """The suite's score and chance: the mean over the tasks that are not report-only."""
    names = [t.name for t in suite.tasks if t.name not in suite.spec.report_only]
    return (
        sum(tasks[n]["score"] for n in names) / len(names),
        sum(tasks[n]["chance"] for n in names) / len(names),
    )


def evaluate_suite(handle: ModelHandle, suite: Suite, settings: CapabilitySettings | None = None, desc: str = "capability") -> dict[str, Any]:
    """Score every task of ``suite`` on ``handle``'s model as it is now."""
    settings = settings or CapabilitySettings()
    t0 = time.perf_counter()
    if suite.spec.backend == "lm-eval":
        from editbench.capability.harness import evaluate_harness

        tasks = evaluate_harness(handle, suite.tasks, settings, suite.task_files)
    else:
        prepared = {t.name: prepare_task(t, suite.task_files[t.name], settings) for t in suite.tasks}
        tasks = {}
        with bar(desc, total=len(suite.tasks), unit="task") as progress:
            for task in suite.tasks:
                tasks[task.name] = run_task(
                    handle, task, suite.task_files[task.name], settings, prepared[task.name]
                )
                progress.update(1)
    score, chance = summarize(suite, tasks)
    return {
        "suite": suite.spec.name,
        "score": score,
        "chance": chance,
        "average": f"mean over {', '.join(t.name for t in suite.tasks if t.name not in suite.spec.report_only)}",
        "report_only": list(suite.spec.report_only),
        "tasks": tasks,
        "time_s": round(time.perf_counter() - t0, 3),
        "settings": asdict(settings),
        "suite_hash": suite.content_hash,
    }


def _data_digest(suite: Suite, settings: CapabilitySettings) -> str:
    h = hashlib.sha256()
    for task in suite.tasks:
        if task.data:
            h.update(resolve_data(task, suite.task_files[task.name], settings.data_dir).read_bytes())
        else:
            h.update(f"{task.hf_dataset}|{task.hf_config}|{task.hf_split}|{task.harness_task}".encode())
    return h.hexdigest()[:16]


def cache_key(handle: ModelHandle, suite: Suite, settings: CapabilitySettings) -> str:
    ident = {
        "version": CACHE_VERSION,
        "model": handle.identity,
        "weights": handle.info.get("weights_fingerprint"),
        "dtype": handle.info.get("dtype", str(getattr(handle.model, "dtype", ""))),
        "suite": suite.content_hash,
        "data": _data_digest(suite, settings),
        "settings": settings.key(),
    }
    return json_digest(ident, 24)


def cached_pre_edit(handle: ModelHandle, suite: Suite, settings: CapabilitySettings | None = None) -> tuple[dict[str, Any], bool]:
    """The unedited model's result, from the cache when this (weights, suite, settings) was
    scored before; returns it and whether it came from the cache. Call it before any edit."""
    settings = settings or CapabilitySettings()
    path = cache_dir("capability") / f"{suite.spec.name}-{cache_key(handle, suite, settings)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except json.JSONDecodeError:
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, never trusted
    result = evaluate_suite(handle, suite, settings, desc="capability (pre-edit)")
    atomic_write_json(path, result)
    return result, False


def compare(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, Any]:
    """``results.capability`` of metrics.json: suite, pre, post, delta and per-task scores."""
    return {
        "suite": pre["suite"],
        "pre": pre["score"],
        "post": post["score"],
        "delta": post["score"] - pre["score"],
        "chance": pre["chance"],
        "average": pre.get("average"),
        "tasks": {
            name: {
                "pre": res["score"],
                "post": post["tasks"][name]["score"],
                "chance": res["chance"],
                "n": res["n"],
                **({"perplexity_pre": res["perplexity"], "perplexity_post": post["tasks"][name]["perplexity"]}
                   if "perplexity" in res else {}),
            }
            for name, res in pre["tasks"].items()
        },
        "settings": pre.get("settings"),
    }
