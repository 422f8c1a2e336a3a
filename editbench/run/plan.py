"""Planning a run: everything that can be checked without a model, so a typo fails in seconds."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editbench.api import BaseEditor, EditorConfig, EditRequest
from editbench.config import load_hparams
from editbench.data import LoadedDataset, load_dataset
from editbench.errors import EditbenchError
from editbench.evaluate import EvalSettings, answer_checks
from editbench.evaluate.prompts import check_prompt_format, format_request
from editbench.registry import EDITORS
from editbench.run.spec import RunSpec

if TYPE_CHECKING:
    from editbench.models import ModelHandle

log = logging.getLogger(__name__)


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

    def edit_hint(self) -> str:
        """What to lower after an OOM while editing: the editor's own batch-like keys."""
        keys = [f.name for f in dataclasses.fields(self.config) if "batch" in f.name]
        sets = " or ".join(f"--set {k}=..." for k in keys)
        return f"lower {sets + ' or ' if sets else ''}--edits-per-step"


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


def resolve_hparams(spec: RunSpec) -> tuple[EditorConfig, dict[str, Any]]:
    """The typed hparams of a run of ``spec`` and the mapping its config.json records."""
    return load_hparams(EDITORS.get(spec.editor).config_class, spec.editor, spec.model,
                        {"seed": spec.seed, **spec.overrides}, spec.hparams_file,
                        data_dir=spec.data_dir)


def plan_run(spec: RunSpec) -> Plan:
    """Check everything that can be checked without a model, so a typo fails in seconds."""
    spec.validate()
    editor_cls: type[BaseEditor] = EDITORS.get(spec.editor)
    config, resolved = resolve_hparams(spec)
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
    sample = eval_sample(requests, spec.eval_sample, spec.seed)
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
    if "probability" in spec.protocols:
        _warn_without_true(final_set)
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
    settings = QualitySettings(
        metrics=tuple(spec.metrics), corpus=corpus, references=spec.quality_references,
        generation_prompts=spec.generation_prompts,
        generation=FreeGenConfig(max_new_tokens=spec.generation_tokens,
                                 sample=not spec.generation_greedy, seed=spec.seed,
                                 batch_size=spec.eval_batch_size),
        semantic_model=spec.semantic_model,
        semantic_threshold=DEFAULT_THRESHOLD if spec.semantic_threshold is None else spec.semantic_threshold,
    )
    settings.check_libraries()
    return settings


def in_prompt_format(plan: Plan, handle: ModelHandle) -> Plan:
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


def eval_sample(requests: list[EditRequest], n: int | None, seed: int) -> list[EditRequest]:
    """A seeded subset of ``n`` requests in run order (all of them without ``n``)."""
    if n is None or n >= len(requests):
        return list(requests)
    keep = set(random.Random(f"eval-sample:{seed}").sample(range(len(requests)), n))
    return [r for i, r in enumerate(requests) if i in keep]


def _warn_without_true(requests: Sequence[EditRequest]) -> None:
    missing = [r.case_id for r in requests if r.target_true is None]
    if missing:
        log.warning("probability protocol: %d of %d requests have no target_true (e.g. case %s; "
                    "the data names no true object): they are left out of its scores",
                    len(missing), len(requests), missing[0])


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
