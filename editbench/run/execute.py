"""One run of the sequential protocol, start to finish.

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

from datetime import datetime, timezone
from typing import Any

from editbench import faults
from editbench.errors import EditbenchError
from editbench.evaluate import Evaluator
from editbench.run.loop import EditLoop, LoopSettings, oom_guard
from editbench.run.phases import Evaluations, PhaseTimer
from editbench.run.plan import Plan, default_output, in_prompt_format, plan_run, seed_everything
from editbench.run.record import check_resumable, describe_run, fingerprint
from editbench.run.rundir import RunDir
from editbench.run.spec import RunSpec


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
    phase = PhaseTimer()
    with phase("load"), oom_guard("loading the model", "use a smaller --dtype or more GPUs"):
        handle = load_model(spec.model, spec.device, spec.dtype, spec.trust_remote_code)
    plan = in_prompt_format(plan, handle)
    quality = None
    if plan.quality is not None:
        from editbench.evaluate.quality import QualityScorer

        quality = QualityScorer(handle, plan.quality, plan.final_set)
    config = describe_run(plan, handle, quality)
    checkpoint = _open_record(out, config, spec)

    evaluations = Evaluations(plan, out, handle, Evaluator(handle, plan.settings, quality))
    evaluations.capability_before()
    with phase("baseline"):
        baseline_time = evaluations.compute_baselines()

    with phase("editor"), oom_guard("building the editor (layer statistics, caches)", plan.edit_hint()):
        editor = plan.editor_cls(handle, plan.config)
    loop = EditLoop(LoopSettings(plan.step, spec.checkpoint_every, plan.edit_hint()),
                    plan.requests, out, editor, evaluations, fingerprint(config))
    loop.restore(checkpoint)
    with phase("edit"):
        loop.edit()
    with phase("evaluation"):
        results, final_time = evaluations.final()
        loop.finish()
        capability = evaluations.capability_after(len(plan.requests))
        evaluations.close_curve(results, capability, loop.edit_time)

    metrics = _metrics(plan, evaluations, loop, results, capability, final_time, baseline_time)
    metrics.update(phases=phase.record, resumed=checkpoint is not None,
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    faults.point("metrics")
    out.write_metrics(metrics)
    out.remove_checkpoint()


def _open_record(out: RunDir, config: dict[str, Any], spec: RunSpec) -> dict[str, Any] | None:
    """A fresh run writes config.json; a resumed one checks it is the same run and returns
    its checkpoint (None when it stopped before the first one)."""
    if not spec.resume:
        out.prepare_fresh(spec.overwrite)
        out.write_config(config)
        return None
    check_resumable(out, config)
    checkpoint = out.load_checkpoint()
    if checkpoint is not None and checkpoint.get("run") != fingerprint(config):
        raise EditbenchError(f"{out.checkpoint_path}: belongs to another run; delete it to restart the edits")
    return checkpoint


def _metrics(plan: Plan, evaluations: Evaluations, loop: EditLoop, results: dict[str, Any],
             capability: dict[str, Any] | None, final_time: float, baseline_time: float) -> dict[str, Any]:
    """``metrics.json``: the results, the pre-edit results and where the time went."""
    total = len(plan.requests)
    quality = evaluations.evaluator.quality
    return {
        "results": {**results, "capability": capability},
        "results_pre": evaluations.baselines["final"].metrics(plan.settings.protocols),
        "num_edits": total,
        "num_evaluated": len(plan.final_set),
        "edits_per_step": plan.step,
        "edit_time_s": round(loop.edit_time, 3),
        "edit_time_per_request_s": round(loop.edit_time / total, 5),
        "eval_time_s": round(evaluations.eval_time, 3),
        "final_eval_time_s": round(final_time, 3),
        "baseline_time_s": round(baseline_time, 3),
        "steps": {"count": loop.steps_done, "file": "steps.jsonl"},
        **({"capability_time_s": round(evaluations.capability_time, 3),
            "capability_pre_cached": evaluations.capability_cached}
           if plan.capability is not None else {}),
        **({"quality_time_s": {k: round(v, 3) for k, v in quality.timings.items()}}
           if quality is not None else {}),
    }
