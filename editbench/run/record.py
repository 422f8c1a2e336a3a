"""The run directory's record of a run: what ``config.json`` says (and the comparability key
tables group by), the identity a resumed run must share with the interrupted one, and the
checkpointed state (edited tensors, RNG states) that lets it continue bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from editbench.api import BaseEditor, EditRequest
from editbench.errors import EditbenchError
from editbench.evaluate import answer_checks
from editbench.files import json_digest
from editbench.run.plan import Plan
from editbench.run.rundir import RunDir, command_line, git_revision, library_versions
from editbench.run.spec import RESUME_FREE

if TYPE_CHECKING:
    from editbench.models import ModelHandle

SEQUENTIAL_PROTOCOL = (
    "requests applied in steps of edits_per_step to one model, never reset; the unedited "
    "model scored once before the first step on every evaluated request; final evaluation "
    "after the last step; curve points after every eval_every edits over the evaluated "
    "requests edited so far"
)
CHECKPOINT_FORMAT = 2


def describe_run(plan: Plan, handle: ModelHandle, quality=None) -> dict[str, Any]:
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
    ident["spec"] = {k: v for k, v in config["spec"].items() if k not in RESUME_FREE}
    return json.loads(json.dumps(ident, sort_keys=True, default=list))


def fingerprint(config: dict[str, Any]) -> str:
    return json_digest(resume_identity(config))


def check_resumable(out: RunDir, config: dict[str, Any]) -> None:
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



def edited_weights(handle: ModelHandle, editor: BaseEditor) -> dict[str, Any]:
    params = dict(handle.model.named_parameters())
    missing = [n for n in editor.edited_parameters() if n not in params]
    if missing:
        raise EditbenchError(f"editor {editor.name!r} lists unknown parameters {missing[:3]}")
    return {n: params[n].detach().cpu().clone() for n in editor.edited_parameters()}


def restore_weights(handle: ModelHandle, weights: dict[str, Any]) -> None:
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


def rng_states() -> dict[str, Any]:
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


def set_rng_states(states: dict[str, Any]) -> None:
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


