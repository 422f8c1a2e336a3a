"""Portability: does the model use the edited fact one step further (KnowEdit)?

A request's portability prompts (``EditRequest.portability``: one-hop reasoning, subject
aliases, logical generalization...) are scored exactly like reliability under each
protocol: generation = normalized exact match of the cut answer with the prompt's answer;
teacher forcing = fraction of the answer's tokens predicted. ``portability`` is the mean
over a request's prompts, then over the requests that have any; ``portability_<kind>``
the same within one kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from editbench.api import EditRequest, PortabilityPrompt
from editbench.evaluate.normalize import cut_at_stop, normalize_answer
from editbench.evaluate.teacher_forced import token_accuracy

PORTABILITY_DEFINITION = (
    "portability prompts scored like reliability under each protocol (generation: normalized "
    "exact match of the cut answer with the prompt's answer; teacher_forced: fraction of the "
    "answer's tokens predicted); mean over a request's prompts, then over requests that have "
    "any; portability_<kind> likewise per kind"
)


def portability_prompts(requests: Sequence[EditRequest]) -> list[str]:
    """The prompts to generate from, request by request (the order the items expect)."""
    return [p.prompt for r in requests for p in r.portability]


def portability_pairs(requests: Sequence[EditRequest]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for teacher forcing, in the same order."""
    return [(p.prompt, p.answer) for r in requests for p in r.portability]


def generation_item(prompt: PortabilityPrompt, text: str) -> dict[str, Any]:
    """One portability prompt under the generation protocol (a cases.jsonl item)."""
    answer = cut_at_stop(text)
    return {"prompt": prompt.prompt, "target": prompt.answer, "kind": prompt.kind,
            "output": text, "answer": answer,
            "match": normalize_answer(answer) == normalize_answer(prompt.answer)}


def teacher_forced_item(prompt: PortabilityPrompt, target_ids: Sequence[int],
                        predicted: Sequence[int]) -> dict[str, Any]:
    return {"prompt": prompt.prompt, "target": prompt.answer, "kind": prompt.kind,
            "accuracy": token_accuracy(target_ids, predicted)}


def accumulator_lists(items: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """``{"_portability": [...], "_portability_<kind>": [...]}`` for the evaluator's
    accumulator (values are match flags or token accuracies)."""
    out: dict[str, list[float]] = {}
    for item in items:
        value = float(item["match"]) if "match" in item else float(item["accuracy"])
        out.setdefault("_portability", []).append(value)
        out.setdefault(f"_portability_{item['kind']}", []).append(value)
    return out
