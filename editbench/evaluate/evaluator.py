"""Reliability, generalization and locality under the generation and teacher-forced protocols.

Requests are evaluated in chunks, so memory stays bounded however many edits a run has;
each case's outputs go to ``sink`` as soon as its chunk is done. The evaluator never
knows which editor produced the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from editbench.api import EditbenchError, EditRequest
from editbench.evaluate.generation import generate_answers
from editbench.evaluate.normalize import cut_at_stop, normalize_answer
from editbench.evaluate.teacher_forced import argmax_at_targets, token_accuracy
from editbench.progress import bar

PROTOCOLS = ("generation", "teacher_forced")
LOCALITY_DEFINITION = (
    "share of locality prompts whose post-edit answer equals the pre-edit answer after "
    "exact-match normalization (pre-edit answers computed once, before any edit); "
    "locality_raw compares raw strings, locality_gold compares with the gold answer"
)
PROTOCOL_DEFINITIONS = {
    "generation": (
        "greedy decoding from the raw prompt (no chat template), stop at '.', newline or EOS, "
        "normalized exact match (lowercase, no punctuation, no articles, collapsed spaces)"
    ),
    "teacher_forced": (
        "prompt + ' ' + target fed to the model, argmax at each target position, "
        "score = fraction of target tokens predicted (EasyEdit-compatible)"
    ),
}


@dataclass(frozen=True)
class EvalSettings:
    protocols: tuple[str, ...] = ("generation",)
    max_new_tokens: int = 32
    batch_size: int = 32
    chunk_size: int = 512

    def __post_init__(self) -> None:
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise EditbenchError(f"unknown protocol {p!r}; expected one of {list(PROTOCOLS)}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise EditbenchError("max_new_tokens, batch_size and chunk_size must be positive")

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "definitions": {p: PROTOCOL_DEFINITIONS[p] for p in self.protocols},
            "locality_definition": LOCALITY_DEFINITION,
        }


@dataclass
class _Mean:
    total: float = 0.0
    n: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.n += 1

    def value(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass
class _Accumulator:
    means: dict[str, _Mean] = field(default_factory=dict)

    def add(self, key: str, values: Sequence[float]) -> None:
        if values:  # a case contributes the mean over its prompts of that kind
            self.means.setdefault(key, _Mean()).add(sum(values) / len(values))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: m.value() for k, m in self.means.items()}
        out["n"] = {k: m.n for k, m in self.means.items()}
        return out


Baseline = dict[str, dict[str, list[Any]]]  # protocol -> case_id -> pre-edit locality outputs


class Evaluator:
    def __init__(self, handle, settings: EvalSettings) -> None:
        self.handle = handle
        self.settings = settings

    def _chunks(self, requests: Sequence[EditRequest]):
        size = self.settings.chunk_size
        for start in range(0, len(requests), size):
            yield requests[start : start + size]

    def baseline(self, requests: Sequence[EditRequest]) -> Baseline:
        """Pre-edit outputs on the locality prompts (computed once per run)."""
        out: Baseline = {p: {} for p in self.settings.protocols}
        with bar("pre-edit locality", len(requests), "req") as pbar:
            for chunk in self._chunks(requests):
                prompts = [(r.case_id, loc) for r in chunk for loc in r.locality]
                if "generation" in out:
                    raw = self._generate([loc.prompt for _, loc in prompts])
                    for (cid, _), text in zip(prompts, raw, strict=True):
                        out["generation"].setdefault(cid, []).append(text)
                if "teacher_forced" in out:
                    preds = argmax_at_targets(
                        self.handle,
                        [(loc.prompt, loc.answer) for _, loc in prompts],
                        self.settings.batch_size,
                    )
                    for (cid, _), (_, pred) in zip(prompts, preds, strict=True):
                        out["teacher_forced"].setdefault(cid, []).append(pred)
                pbar.update(len(chunk))
        return out

    def _generate(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        return generate_answers(
            self.handle, prompts, self.settings.max_new_tokens, self.settings.batch_size
        )

    def evaluate(
        self,
        requests: Sequence[EditRequest],
        baseline: Baseline,
        sink: Callable[[dict[str, Any]], None] | None = None,
        desc: str = "evaluate",
    ) -> dict[str, dict[str, Any]]:
        """Metrics per protocol (fractions in [0, 1]); per-case records go to ``sink``."""
        acc = {p: _Accumulator() for p in self.settings.protocols}
        with bar(desc, len(requests), "req") as pbar:
            for chunk in self._chunks(requests):
                for protocol in self.settings.protocols:
                    score = self._generation if protocol == "generation" else self._teacher_forced
                    for case in score(chunk, baseline.get(protocol, {})):
                        for key in ("reliability", "generalization", "locality",
                                    "locality_raw", "locality_gold"):
                            acc[protocol].add(key, case.pop(f"_{key}", []))
                        if sink is not None:
                            sink(case)
                pbar.update(len(chunk))
        return {p: a.result() for p, a in acc.items()}

    def _generation(self, chunk: Sequence[EditRequest], pre: dict[str, list[str]]):
        prompts: list[str] = []
        for r in chunk:
            prompts += [r.prompt, *r.rephrase_prompts, *(loc.prompt for loc in r.locality)]
        raw = iter(self._generate(prompts))
        for r in chunk:
            rel_raw = next(raw)
            gen_raw = [next(raw) for _ in r.rephrase_prompts]
            loc_raw = [next(raw) for _ in r.locality]
            pre_raw = pre.get(r.case_id)
            if r.locality and (pre_raw is None or len(pre_raw) != len(r.locality)):
                raise EditbenchError(f"case {r.case_id!r}: no pre-edit locality answers")

            def item(prompt: str, target: str, text: str) -> dict[str, Any]:
                answer = cut_at_stop(text)
                return {"prompt": prompt, "target": target, "output": text, "answer": answer,
                        "match": normalize_answer(answer) == normalize_answer(target)}

            rel = item(r.prompt, r.target_new, rel_raw)
            gens = [item(p, r.target_new, t) for p, t in zip(r.rephrase_prompts, gen_raw, strict=True)]
            locs = []
            for loc, post, before in zip(r.locality, loc_raw, pre_raw or [], strict=True):
                post_a, pre_a = cut_at_stop(post), cut_at_stop(before)
                locs.append({
                    "prompt": loc.prompt, "gold": loc.answer, "pre": pre_a, "post": post_a,
                    "unchanged": normalize_answer(post_a) == normalize_answer(pre_a),
                    "unchanged_raw": post == before,
                    "gold_match": normalize_answer(post_a) == normalize_answer(loc.answer),
                })
            yield {
                "case_id": r.case_id, "protocol": "generation",
                "reliability": rel, "generalization": gens, "locality": locs,
                "_reliability": [float(rel["match"])],
                "_generalization": [float(g["match"]) for g in gens],
                "_locality": [float(x["unchanged"]) for x in locs],
                "_locality_raw": [float(x["unchanged_raw"]) for x in locs],
                "_locality_gold": [float(x["gold_match"]) for x in locs],
            }

    def _teacher_forced(self, chunk: Sequence[EditRequest], pre: dict[str, list[list[int]]]):
        pairs: list[tuple[str, str]] = []
        for r in chunk:
            pairs += [(r.prompt, r.target_new), *((p, r.target_new) for p in r.rephrase_prompts)]
            pairs += [(loc.prompt, loc.answer) for loc in r.locality]
        scored = iter(argmax_at_targets(self.handle, pairs, self.settings.batch_size))
        for r in chunk:
            rel_t, rel_p = next(scored)
            gens = [next(scored) for _ in r.rephrase_prompts]
            locs = [next(scored) for _ in r.locality]
            pre_preds = pre.get(r.case_id)
            if r.locality and (pre_preds is None or len(pre_preds) != len(r.locality)):
                raise EditbenchError(f"case {r.case_id!r}: no pre-edit locality predictions")
            rel = token_accuracy(rel_t, rel_p)
            gen = [token_accuracy(t, p) for t, p in gens]
            unchanged = [token_accuracy(b, p) for (_, p), b in zip(locs, pre_preds or [], strict=True)]
            gold = [token_accuracy(t, p) for t, p in locs]
            yield {
                "case_id": r.case_id, "protocol": "teacher_forced",
                "reliability": rel, "generalization": gen,
                "locality": unchanged, "locality_gold": gold,
                "_reliability": [rel], "_generalization": gen,
                "_locality": unchanged, "_locality_gold": gold,
            }
