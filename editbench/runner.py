"""The sequential-editing protocol.

T requests are applied in steps of S (``edits_per_step``) to one model; the pre-edit
locality answers are computed once before the first step; evaluation happens after the
last step over all T requests and, with ``eval_every=K``, also after every K edits over the
requests edited so far (``curve.jsonl``). These semantics are written into every run's
``config.json``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from editbench.api import BaseEditor, EditbenchError, EditRequest
from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.registry import EDITORS
from editbench.results import RunDir, command_line, git_revision, library_versions

SEQUENTIAL_PROTOCOL = (
    "requests applied in steps of edits_per_step to one model, never reset; pre-edit "
    "locality answers computed once before the first step; final evaluation after the last "
    "step over all requests; curve points after every eval_every edits over the requests "
    "edited so far"
)


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
    protocols: tuple[str, ...] = ("generation",)
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
    # --- capability (issue 5) ---
    capability: str | None = None  # suite name or suite YAML path
    capability_limit: int | None = None  # caps every capability task's sample
    capability_data_dir: str | None = None  # folder that `shared:` task data is relative to
    capability_at_checkpoints: bool = False  # also score capability at eval_every points


# Spec fields that may differ between an interrupted run and its resumption.
_RESUME_FREE = {"resume", "overwrite", "output", "checkpoint_every", "device", "eval_batch_size"}


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
    for key in ("num_edits", "edits_per_step", "eval_every", "checkpoint_every", "capability_limit"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise EditbenchError(f"--{key.replace('_', '-')}: expected a positive integer, got {value}")


def run(spec: RunSpec) -> RunDir:
    """Run one sequential-editing experiment; returns the finished run directory."""
    import torch

    from editbench.models import load_model

    _validate(spec)
    seed_everything(spec.seed)
    # Cheap checks first, so a typo fails before a model is loaded.
    editor_cls: type[BaseEditor] = EDITORS.get(spec.editor)
    hparams_model = Path(spec.model).name if spec.hparams_file is None else spec.model
    config, resolved = load_hparams(
        editor_cls.config_class,
        spec.editor,
        hparams_model,
        {"seed": spec.seed, **spec.overrides},
        spec.hparams_file,
    )
    dataset = load_dataset(
        spec.dataset, data_dir=spec.data_dir, num=spec.num_edits, sample=spec.sample,
        seed=spec.seed, target=spec.target,
    )
    requests = dataset.requests
    if not requests:
        raise EditbenchError(f"dataset {spec.dataset!r} selected no requests")
    total = len(requests)
    step = spec.edits_per_step or config.edits_per_step or total
    settings = EvalSettings(
        protocols=tuple(spec.protocols), max_new_tokens=spec.max_new_tokens,
        batch_size=spec.eval_batch_size,
    )
    # --- capability (issue 5): the suite is read before any model is loaded ---
    capability = None
    if spec.capability is not None:
        from editbench.capability import CapabilitySettings, load_suite

        capability = (load_suite(spec.capability), CapabilitySettings(
            limit=spec.capability_limit, batch_size=spec.eval_batch_size,
            data_dir=spec.capability_data_dir))
    out = RunDir(spec.output or default_output(spec))
    checkpoint = out.load_checkpoint() if spec.resume else None
    if checkpoint is not None:
        _check_resumable(out, spec)
    else:
        out.prepare(overwrite=spec.overwrite)

    handle = load_model(spec.model, spec.device, spec.dtype, spec.trust_remote_code)
    run_config = {
        "editor": spec.editor,
        "hparams": resolved,
        "hparams_file": spec.hparams_file,
        "model": {"name": spec.model, "hf_id": handle.preset.hf_id, "family": handle.preset.family,
                  "identity": handle.identity, **handle.info},
        "dataset": {"name": dataset.name, "path": dataset.path, "sha256": dataset.sha256,
                    "format": dataset.format, "target": dataset.target,
                    "num_edits": total, "sample": spec.sample},
        "protocol": {**settings.describe(), "sequential": SEQUENTIAL_PROTOCOL,
                     "edits_per_step": step, "eval_every": spec.eval_every,
                     "evaluation": "after all edits" + (
                         f", and every {spec.eval_every} edits" if spec.eval_every else "")},
        "seed": spec.seed,
        "versions": library_versions(),
        "git_revision": git_revision(),
        "command": command_line(),
        "spec": asdict(spec),
        "capability": None if capability is None else {
            "suite": capability[0].spec.name, "suite_hash": capability[0].content_hash,
            "tasks": [t.name for t in capability[0].tasks], "settings": capability[1].key(),
            "timing": "pre-edit before the first edit (cached per weights, suite and settings), "
                      "post-edit after the last step"
                      + (" and at every curve point" if spec.capability_at_checkpoints else ""),
        },
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    run_config["comparability"] = comparability(run_config)
    if checkpoint is None:
        out.write_config(run_config)

    # --- capability (issue 5): pre-edit score on the unedited weights, before the editor
    # is built and before a resumed run restores its edited tensors (cached per weights) ---
    capability_pre, capability_time, capability_cached = None, 0.0, False
    if capability is not None:
        from editbench.capability import cached_pre_edit

        t0 = time.perf_counter()
        capability_pre, capability_cached = cached_pre_edit(handle, *capability)
        capability_time += time.perf_counter() - t0

    editor = editor_cls(handle, config)
    evaluator = Evaluator(handle, settings)

    edit_time, eval_time, step_infos, first = 0.0, 0.0, [], 0
    t0 = time.perf_counter()
    if checkpoint is not None:
        baseline = out.load_baseline()
        _restore(handle, editor, checkpoint)
        first, edit_time, step_infos = (
            checkpoint["edits_done"], checkpoint["edit_time"], checkpoint["steps"]
        )
        out.stream("curve.jsonl").truncate(lambda point: point["edits"] <= first)
    else:
        baseline = evaluator.baseline(requests)
        out.save_baseline(baseline)
    baseline_time = time.perf_counter() - t0

    curve = out.stream("curve.jsonl").open(append=checkpoint is not None) if spec.eval_every else None
    try:
        for start in range(first, total, step):
            chunk = requests[start : start + step]
            t0 = time.perf_counter()
            try:
                stats = editor.edit(chunk)
            except torch.cuda.OutOfMemoryError as exc:
                raise EditbenchError(
                    f"out of memory while editing requests {start}-{start + len(chunk) - 1} on "
                    f"{spec.model}; lower batch_size (--set batch_size=...) or --edits-per-step"
                ) from exc
            edit_time += time.perf_counter() - t0
            step_infos.append({"start": start, "size": len(chunk), **stats.info})
            done = start + len(chunk)
            if curve is not None and done < total and done // spec.eval_every > start // spec.eval_every:
                t0 = time.perf_counter()
                point = evaluator.evaluate(requests[:done], baseline, desc=f"evaluate@{done}")
                eval_time += time.perf_counter() - t0
                if capability is not None and spec.capability_at_checkpoints:
                    point = {**point, "capability": _capability_now(handle, capability, capability_pre, done)}
                curve.write({"edits": done, "edit_time_s": edit_time, "results": point})
                curve.flush()
            every = spec.checkpoint_every
            if every and done < total and done // every > start // every:
                out.save_checkpoint({
                    "edits_done": done, "edit_time": edit_time, "steps": step_infos,
                    "editor_state": editor.state_dict(),
                    "weights": _edited_weights(handle, editor),
                })

        editor.finalize()
        cases = out.stream("cases.jsonl").open()
        t0 = time.perf_counter()
        results = evaluator.evaluate(requests, baseline, sink=cases.write)
        final_eval = time.perf_counter() - t0
        eval_time += final_eval
        cases.commit()
        # --- capability (issue 5): post-edit score, after the last step ---
        capability_result = None
        if capability is not None:
            t0 = time.perf_counter()
            capability_result = _capability_now(handle, capability, capability_pre, total)
            capability_time += time.perf_counter() - t0
        if curve is not None:
            if capability_result is not None and spec.capability_at_checkpoints:
                results = {**results, "capability": capability_result}
            curve.write({"edits": total, "edit_time_s": edit_time, "results": results})
            curve.commit()
    finally:
        if curve is not None:
            curve.close()

    metrics = {
        "results": {**results, "capability": capability_result},
        "num_edits": total,
        "edits_per_step": step,
        "edit_time_s": round(edit_time, 3),
        "edit_time_per_request_s": round(edit_time / total, 5),
        "eval_time_s": round(eval_time, 3),
        "final_eval_time_s": round(final_eval, 3),
        "baseline_time_s": round(baseline_time, 3),
        "steps": step_infos,
        **({"capability_time_s": round(capability_time, 3), "capability_pre_cached": capability_cached}
           if capability is not None else {}),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.write_metrics(metrics)
    out.remove_checkpoint()
    return out


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
        "protocol_definitions": {name: p["definitions"][name] for name in p["protocols"]},
        "max_new_tokens": p["max_new_tokens"],
        "locality_definition": p["locality_definition"],
        "evaluation": p["evaluation"],
        "eval_batch_size": p["batch_size"],
        "dtype": run_config["model"].get("dtype"),
        "capability": None if cap is None else {
            "suite": cap["suite"], "suite_hash": cap["suite_hash"], "settings": cap["settings"],
        },
    }


def edit_and_evaluate(
    editor: BaseEditor,
    requests: Sequence[EditRequest],
    step: int,
    evaluator: Evaluator,
    baseline: dict[str, Any],
) -> tuple[dict[str, Any], float]:
    """Edit ``requests`` in steps of ``step``, evaluate once after the last step, then write
    the edited weights back; returns (evaluation, editing seconds).

    Why: tests and benchmarks score several editors, or single edits on a fresh model, on
    one loaded model without the result files of :func:`run` (same step semantics).
    """
    if step < 1:
        raise EditbenchError(f"step: expected a positive integer, got {step}")
    restore = editor.handle.snapshot(editor.edited_parameters())
    try:
        t0 = time.perf_counter()
        for start in range(0, len(requests), step):
            editor.edit(requests[start : start + step])
        editor.finalize()
        seconds = time.perf_counter() - t0
        return evaluator.evaluate(requests, baseline), seconds
    finally:
        restore()


def _capability_now(handle, capability, pre: dict[str, Any], edits: int) -> dict[str, Any]:
    """The suite scored on the model as it is now, compared with the pre-edit score."""
    from editbench.capability import compare, evaluate_suite

    suite, settings = capability
    post = evaluate_suite(handle, suite, settings, desc=f"capability@{edits}")
    return {**compare(pre, post), "time_s": post["time_s"]}


def _edited_weights(handle, editor: BaseEditor) -> dict[str, Any]:
    params = dict(handle.model.named_parameters())
    missing = [n for n in editor.edited_parameters() if n not in params]
    if missing:
        raise EditbenchError(f"editor {spec_name(editor)} lists unknown parameters {missing[:3]}")
    return {n: params[n].detach().cpu() for n in editor.edited_parameters()}


def spec_name(editor: BaseEditor) -> str:
    return repr(editor.name or type(editor).__name__)


def _restore(handle, editor: BaseEditor, checkpoint: dict[str, Any]) -> None:
    import torch

    params = dict(handle.model.named_parameters())
    with torch.no_grad():
        for name, value in checkpoint["weights"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    editor.load_state_dict(checkpoint["editor_state"])


def _check_resumable(out: RunDir, spec: RunSpec) -> None:
    import json

    try:
        previous = json.loads(out.config_path.read_text())["spec"]
    except (OSError, KeyError, ValueError) as exc:
        raise EditbenchError(f"{out.path}: cannot resume, config.json is unreadable ({exc})") from exc
    current = asdict(spec)
    diff = sorted(
        k for k in current
        if k not in _RESUME_FREE and _jsonable(current[k]) != _jsonable(previous.get(k))
    )
    if diff:
        raise EditbenchError(
            f"{out.path}: cannot resume with different settings ({', '.join(diff)}); "
            "use the same flags as the interrupted run"
        )


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=list))
