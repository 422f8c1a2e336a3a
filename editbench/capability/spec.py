"""Capability task and suite definitions: small YAML files validated like hparams.

A task file (``editbench/capability/tasks/<name>.yaml``) says where its data is, how a
record becomes a prompt, what the options or answers are and how it is scored. A suite
file (``editbench/capability/suites/<name>.yaml``) lists tasks and how they are averaged.

Data paths in YAML are never absolute: ``capability/default/x.jsonl`` is relative to the
bundled ``datasets/`` folder (or to the task file's own folder for a user's task), and
``shared:capability/sst2.jsonl`` is relative to the capability data dir (see
:func:`shared_data_dir`). ``hf_dataset`` names a Hugging Face hub dataset (online only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from editbench.config import ConfigError, build_config, read_yaml
from editbench.errors import EditbenchError, did_you_mean
from editbench.files import read_jsonl
from editbench.resources import checkout_root, resource_dir

PACKAGE_DIR = Path(__file__).resolve().parent
TASK_DIR = PACKAGE_DIR / "tasks"
SUITE_DIR = PACKAGE_DIR / "suites"
DATA_DIR_ENV = "EDITBENCH_CAPABILITY_DATA_DIR"
SHARED_PREFIX = "shared:"
KINDS = ("multiple_choice", "generation", "perplexity", "harness")


@dataclass
class TaskSpec:
    """One capability task. Which keys matter depends on ``kind`` (checked in validate)."""

    name: str
    kind: Literal["multiple_choice", "generation", "perplexity", "harness"]
    description: str = ""
    # where the records come from
    data: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "test"
    # how a record becomes an item
    prompt: str = "{input}"
    choices: list[str] | None = None  # fixed options; the answer key holds an index or label
    choices_key: str | None = None  # record key: a list of options or a BIG-bench target_scores dict
    answer_key: str | None = None  # record key: option index / option text / answer string(s)
    label_map: dict[str, Any] = field(default_factory=dict)  # string label -> option index
    text_key: str = "text"
    # scoring
    normalization: Literal["none", "tokens", "chars"] = "none"
    match: Literal["exact", "numeric"] = "exact"
    max_new_tokens: int = 16
    max_tokens: int = 256
    chance: float | None = None  # only for harness tasks (built-in kinds compute it from data)
    # sampling
    limit: int | None = None
    sample: Literal["first", "random", "last"] = "random"
    num_fewshot: int = 0
    fewshot_separator: str = "\n\n"
    seed: int = 0
    # lm-evaluation-harness
    harness_task: str | None = None
    harness_metric: str | None = None  # e.g. "acc,none" or "exact_match,flexible-extract"
    harness_include: str | None = None  # folder of local lm-eval task YAML, relative to this file
    harness_defaults: bool = True  # also index lm-eval's ~10K built-in task files (slow)
    metric_scale: float = 1.0  # BLEU is 0-100: 0.01 puts it in [0, 1]

    def validate(self) -> None:
        sources = [x for x in (self.data, self.hf_dataset) if x]
        if self.kind == "harness":
            if not self.harness_task or not self.harness_metric:
                raise ValueError("a harness task needs harness_task and harness_metric")
            if self.chance is None:
                raise ValueError("a harness task needs its chance level (key 'chance')")
        elif len(sources) != 1:
            raise ValueError("give exactly one of 'data' and 'hf_dataset'")
        if self.kind == "multiple_choice" and not (self.choices or self.choices_key):
            raise ValueError("a multiple_choice task needs 'choices' or 'choices_key'")
        if self.kind in ("multiple_choice", "generation") and self.answer_key is None and not (
            self.choices_key and not self.choices
        ):
            raise ValueError(f"a {self.kind} task needs 'answer_key'")
        if self.kind == "perplexity" and self.num_fewshot:
            raise ValueError("a perplexity task takes no few-shot examples")
        for key in ("limit", "max_new_tokens", "max_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be positive, got {value}")
        if self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.data and os.path.isabs(self.data.removeprefix(SHARED_PREFIX)):
            raise ValueError(f"data {self.data!r}: use a relative path")


@dataclass
class SuiteSpec:
    """A list of tasks and how their scores are averaged into the suite's score."""

    name: str
    tasks: list[Any]  # task names / task .yaml paths, or {task: NAME, <key>: <override>...}
    description: str = ""
    backend: Literal["builtin", "lm-eval"] = "builtin"
    average: Literal["mean"] = "mean"
    report_only: list[str] = field(default_factory=list)  # scored, but not in the mean

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("a suite needs at least one task")
        for entry in self.tasks:
            if not (isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("task"), str))):
                raise ValueError(f"a task entry must be a name or a mapping with key 'task', got {entry!r}")


@dataclass
class Suite:
    """A loaded suite: its spec, its tasks and the hash of everything that defines them."""

    spec: SuiteSpec
    tasks: list[TaskSpec]
    task_files: dict[str, Path]
    source: Path
    content_hash: str


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def task_names() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def _load(cls: type, path: Path) -> Any:
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    return build_config(cls, raw, str(path))


def load_task(name_or_path: str, base: Path | None = None) -> tuple[TaskSpec, Path]:
    """A task by built-in name or by a YAML path (relative to ``base``, a suite's folder)."""
    candidates = []
    if name_or_path.endswith((".yaml", ".yml")):
        if base is not None:
            candidates.append(base / name_or_path)
        candidates.append(Path(name_or_path))
    else:
        if base is not None and base != SUITE_DIR:
            candidates.append(base / f"{name_or_path}.yaml")
        candidates.append(TASK_DIR / f"{name_or_path}.yaml")
    for path in candidates:
        if path.is_file():
            return _load(TaskSpec, path), path
    raise ConfigError(
        f"unknown capability task {name_or_path!r}{did_you_mean(name_or_path, task_names())}; "
        f"built-in tasks: {', '.join(task_names())}"
    )


def load_suite(name_or_path: str) -> Suite:
    """A suite by built-in name (``default``, ``shared``, ``paper``) or by a YAML path."""
    path = Path(name_or_path)
    if not (name_or_path.endswith((".yaml", ".yml")) and path.is_file()):
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown capability suite {name_or_path!r}{did_you_mean(name_or_path, suite_names())}; "
                f"built-in suites: {', '.join(suite_names())}, or a path to a suite .yaml"
            )
    spec: SuiteSpec = _load(SuiteSpec, path)
    tasks, files = [], {}
    digest = hashlib.sha256(path.read_bytes())
    for entry in spec.tasks:
        if isinstance(entry, dict):
            overrides = {k: v for k, v in entry.items() if k != "task"}
            task, task_path = load_task(entry["task"], path.parent)
            if overrides:
                task = build_config(
                    TaskSpec, {**dataclasses.asdict(task), **overrides},
                    f"{path} (overrides for task {entry['task']!r})",
                )
        else:
            task, task_path = load_task(entry, path.parent)
        if task.name in files:
            raise ConfigError(f"{path}: two tasks are named {task.name!r}")
        tasks.append(task)
        files[task.name] = task_path
        digest.update(task_path.read_bytes())
    names = [t.name for t in tasks]
    missing = [t for t in spec.report_only if t not in names]
    if missing:
        raise ConfigError(f"{path}: report_only names unknown task(s) {missing}")
    kinds = {t.kind == "harness" for t in tasks}
    if (spec.backend == "lm-eval") != (kinds == {True}):
        raise ConfigError(
            f"{path}: backend {spec.backend!r} needs {'only harness' if spec.backend == 'lm-eval' else 'no harness'} tasks"
        )
    return Suite(spec, tasks, files, path, digest.hexdigest()[:16])


def shared_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Folder that ``shared:`` paths are relative to (the ``../shared/data`` layout).

    Order: ``data_dir``, ``$EDITBENCH_CAPABILITY_DATA_DIR``, ``$EDITBENCH_DATA_DIR``, then
    ``../shared/data`` beside a source checkout; None for an installed wheel without them.
    """
    for origin, value in (
        ("--capability-data-dir", data_dir),
        (DATA_DIR_ENV, os.environ.get(DATA_DIR_ENV)),
        ("EDITBENCH_DATA_DIR", os.environ.get("EDITBENCH_DATA_DIR")),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise EditbenchError(f"{origin} {str(path)!r} is not a directory")
            return path
    root = checkout_root()
    return None if root is None else root.parent / "shared" / "data"


def resolve_data(task: TaskSpec, task_file: Path, data_dir: str | os.PathLike[str] | None) -> Path:
    assert task.data is not None
    if task.data.startswith(SHARED_PREFIX):
        root = shared_data_dir(data_dir)
        path = (root or Path("<no data folder>")) / task.data.removeprefix(SHARED_PREFIX)
        if root is None or not path.is_file():
            raise EditbenchError(
                f"capability task {task.name!r}: {path} not found; pass --capability-data-dir DIR "
                f"(or set {DATA_DIR_ENV}) to the folder holding {task.data.removeprefix(SHARED_PREFIX)}"
            )
        return path
    for path in (task_file.parent / task.data, resource_dir("datasets") / task.data):
        if path.is_file():
            return path
    raise EditbenchError(
        f"capability task {task.name!r}: data {task.data!r} not found beside {task_file} "
        f"nor in the bundled datasets folder"
    )


def read_records(task: TaskSpec, task_file: Path, data_dir: str | os.PathLike[str] | None) -> tuple[list[dict[str, Any]], str]:
    """All records of a task's data and a description of where they came from."""
    if task.hf_dataset:
        try:
            import datasets

            ds = datasets.load_dataset(task.hf_dataset, task.hf_config, split=task.hf_split)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EditbenchError(
                f"capability task {task.name!r}: hub dataset {task.hf_dataset!r} is not reachable ({first})"
            ) from exc
        return [dict(r) for r in ds], f"hf:{task.hf_dataset}/{task.hf_config or ''}:{task.hf_split}"
    path = resolve_data(task, task_file, data_dir)
    if path.suffix == ".jsonl":
        records = [record for _, record in read_jsonl(path)]
    else:
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EditbenchError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EditbenchError(f"{path}: expected JSON records (objects), one per line or in a list")
    return records, str(path)


def split(n: int, task: TaskSpec, limit: int | None) -> tuple[list[int], list[int]]:
    """Indices of the few-shot examples and of the evaluated records (never overlapping).

    The ``num_fewshot`` examples are drawn first (seeded) from the whole file, and shared by
    every prompt of the task; the evaluated records are then the first, the last or a seeded
    random ``limit`` of the rest.
    """
    rng = random.Random(task.seed)
    if task.num_fewshot >= n:
        raise EditbenchError(
            f"capability task {task.name!r}: {task.num_fewshot} few-shot examples need more than {n} records"
        )
    shots = rng.sample(range(n), task.num_fewshot) if task.num_fewshot else []
    taken = set(shots)
    rest = [i for i in range(n) if i not in taken]
    cap = min(x for x in (task.limit, limit, len(rest)) if x is not None)
    if task.sample == "first":
        chosen = rest[:cap]
    elif task.sample == "last":
        chosen = rest[len(rest) - cap :]
    else:
        chosen = sorted(rng.sample(rest, cap))
    return shots, chosen
