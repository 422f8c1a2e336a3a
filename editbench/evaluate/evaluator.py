"""Reliability, generalization and locality under the generation and teacher-forced protocols.

Requests are evaluated in chunks, so memory stays bounded however many edits a run has;
each chunk's case records go to ``sink`` as soon as the chunk is done. The evaluator never
knows which editor produced the model.

Scores are batch-invariant by construction: prompts are always run in the same fixed
blocks (the prompts of ``batch_size`` consecutive evaluated requests, batched by length
within the block), before and after editing, at curve points and at the end, so the chunk
size changes memory and resume granularity only. An unchanged model therefore reproduces its pre-edit outputs bit for bit, under any
dtype, and scores locality exactly 1.0. A curve point that ends inside a block runs the
whole block and scores only its edited requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from editbench.api import EditRequest
from editbench.errors import EditbenchError
from editbench.evaluate.generation import generate, generate_answers
from editbench.evaluate.metrics import AGGREGATION, definitions, score_record
from editbench.evaluate.normalize import (
    answers_match,
    cut_answer,
    cut_at_stop,
    gold_reachable,
    has_stop,
    normalize_answer,
)
from editbench.evaluate.probability import DEFINITION as PROBABILITY_DEFINITION
from editbench.evaluate.probability import probability_records
from editbench.evaluate.prompts import PROMPT_FORMATS
from editbench.evaluate.records import Accumulator, PreEdit
from editbench.evaluate.teacher_forced import (
    argmax_at_targets,
    continuation_logprobs,
    token_accuracy,
)
from editbench.progress import bar
from editbench.tokens import ContextOverflowError

if TYPE_CHECKING:
    from editbench.models import ModelHandle

PROTOCOLS = ("generation", "teacher_forced", "probability")
LOCALITY_DEFINITION = (
    "locality_known: share of the locality prompts the unedited model knows (its answer "
    "equals the gold answer after exact-match normalization, or begins with it followed by "
    "more words; teacher-forced: every gold token is its argmax) that are still answered "
    "with the gold after editing (teacher-forced: the share of gold tokens still predicted), "
    "per kind as locality_known_<kind>, and known_pre the share known before; locality: "
    "share of locality prompts whose post-edit answer equals the pre-edit answer after "
    "exact-match normalization (pre-edit answers computed once, before any edit, in the same "
    "fixed batches); locality_raw compares raw strings, locality_gold compares with the gold "
    "answer (gold answers holding '.'/newline or normalizing to '' are left out); "
    "locality_neighbourhood / locality_distant: locality over the prompts of that kind; "
    "locality_empty_pre: share of prompts whose pre-edit answer is empty, locality_nonempty: "
    "locality over the other prompts; locality_argmax / locality_kl (generation protocol): "
    "teacher-forced over the first dist_tokens tokens of the pre-edit continuation, agreement "
    "of the post-edit argmax with the pre-edit one, and KL(pre || post) over the pre-edit top "
    "dist_top tokens and the rest of the vocabulary as one bucket"
)
PROTOCOL_DEFINITIONS = {
    "generation": (
        "greedy decoding from the raw prompt (no chat template), stop at '.', newline or EOS "
        "(not at '.' for targets that contain one; their answer is cut after the target), "
        "normalized exact match (lowercase, no punctuation, no articles, collapsed spaces; "
        "articles kept for targets that are only an article)"
    ),
    "teacher_forced": (
        "prompt + ' ' + target fed to the model, argmax at each target position, "
        "score = fraction of target tokens predicted (EasyEdit-compatible)"
    ),
    "probability": PROBABILITY_DEFINITION,
}
_RAW_PROMPT = "from the raw prompt (no chat template)"


def protocol_definition(protocol: str, prompt_format: str = "raw") -> str:
    """The protocol's definition as a run applies it: generation reads from the prompts in
    the run's format (raw runs keep the text they always had, so they stay comparable)."""
    text = PROTOCOL_DEFINITIONS[protocol]
    if prompt_format == "raw":
        return text
    return text.replace(_RAW_PROMPT, f"from the prompt in the {prompt_format} format "
                                     f"({PROMPT_FORMATS[prompt_format]})")


TARGET_METRICS = ("reliability", "generalization")
CASE_FORMAT = 2


@dataclass(frozen=True)
class EvalSettings:
    protocols: tuple[str, ...] = ("generation",)
    max_new_tokens: int = 32
    batch_size: int = 32
    chunk_size: int = 512
    prompt_format: str = "raw"  # applied to the requests by the runner; recorded here
    dist_tokens: int = 5
    dist_top: int = 10

    def __post_init__(self) -> None:
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise EditbenchError(f"unknown protocol {p!r}; expected one of {list(PROTOCOLS)}")
        if not self.protocols:
            raise EditbenchError("protocols: expected at least one protocol")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise EditbenchError("max_new_tokens, batch_size and chunk_size must be positive")
        if self.dist_tokens < 0 or self.dist_top < 1:
            raise EditbenchError("dist_tokens must be >= 0 and dist_top >= 1")

    @property
    def block(self) -> int:
        """Requests per locality block (see the module docstring)."""
        return self.batch_size

    @property
    def chunk(self) -> int:
        """Requests per chunk: a whole number of blocks."""
        return self.block * max(1, self.chunk_size // self.block)

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "definitions": {p: protocol_definition(p, self.prompt_format) for p in self.protocols},
            "prompt_format_definition": PROMPT_FORMATS[self.prompt_format],
            "locality_definition": LOCALITY_DEFINITION,
            "metric_definitions": {p: definitions(p) for p in self.protocols},
            "metric_aggregation": AGGREGATION,
            "case_format": CASE_FORMAT,
        }


@dataclass
class Resumed:
    """What an interrupted evaluation already wrote: its complete chunks, folded."""

    chunks_done: int
    accumulators: dict[str, Accumulator]


class Evaluator:
    def __init__(self, handle: ModelHandle, settings: EvalSettings, quality=None) -> None:
        """``quality``: a ``QualityScorer`` when a run switched quality metrics on (fluency,
        consistency, semantic match, portability); None costs nothing."""
        self.handle = handle
        self.settings = settings
        self.quality = quality
        self._with_quality = False

    # -- public entry points --------------------------------------------------------------

    def baseline(
        self,
        requests: Sequence[EditRequest],
        *,
        targets: bool = False,
        sink: Callable[[dict[str, Any]], None] | None = None,
        resume: Resumed | None = None,
    ) -> PreEdit | None:
        """Score the unedited model: locality outputs (and with ``targets`` also the edit
        and paraphrase prompts). Records go to ``sink``, or are returned as a PreEdit."""
        records: list[dict[str, Any]] = []
        self._run(requests, None, len(requests), sink or records.append, "pre-edit", resume, targets,
                  targets)
        return None if sink is not None else PreEdit(records)

    def evaluate(
        self,
        requests: Sequence[EditRequest],
        baseline: PreEdit,
        sink: Callable[[dict[str, Any]], None] | None = None,
        desc: str = "evaluate",
        *,
        upto: int | None = None,
        resume: Resumed | None = None,
        quality: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Metrics per protocol (fractions in [0, 1]) over ``requests[:upto]``, compared with
        ``baseline`` (which must cover ``requests`` in the same order). ``quality=False``
        skips the quality metrics (curve points: they are scored before and after only)."""
        if not isinstance(baseline, PreEdit):
            raise EditbenchError(f"baseline: expected the PreEdit of Evaluator.baseline, got {type(baseline).__name__}")
        upto = len(requests) if upto is None else upto
        return self._run(requests, baseline, upto, sink, desc, resume, True, quality)

    def resumed(self, records: Iterator[dict[str, Any]], chunks_done: int) -> Resumed:
        """Fold the records of ``chunks_done`` complete chunks back into accumulators."""
        acc = {p: Accumulator() for p in self.settings.protocols}
        for rec in records:
            acc[rec["protocol"]].add_record(rec)
        return Resumed(chunks_done, acc)

    def chunk_records(self, requests: Sequence[EditRequest], upto: int | None = None) -> Callable[[int], int]:
        """How many records chunk ``k`` of an evaluation of ``requests[:upto]`` writes."""
        upto = len(requests) if upto is None else upto
        size, per = self.settings.chunk, len(self.settings.protocols)
        return lambda k: per * max(0, min(size, upto - k * size))

    # -- the loop -------------------------------------------------------------------------

    def _run(self, requests, pre: PreEdit | None, upto: int, sink, desc: str,
             resume: Resumed | None, targets: bool, quality: bool) -> dict[str, dict[str, Any]]:
        settings = self.settings
        self._with_quality = quality and self.quality is not None
        acc = resume.accumulators if resume else {p: Accumulator() for p in settings.protocols}
        first = resume.chunks_done if resume else 0
        reader = pre.reader() if pre is not None else None
        size = settings.chunk
        with bar(desc, upto, "req") as pbar:
            pbar.update(min(upto, first * size))
            for k in range(first, -(-upto // size)):
                start, end = k * size, min(upto, (k + 1) * size)
                chunk = requests[start:end]
                # Whole locality blocks, also past `upto` (see the module docstring).
                block_end = min(len(requests), start + -(-(end - start) // settings.block) * settings.block)
                blocks = requests[start:block_end]
                for protocol in settings.protocols:
                    before = reader.take([r.case_id for r in blocks], protocol) if reader else None
                    score = {"generation": self._generation, "teacher_forced": self._teacher_forced,
                             "probability": self._probability}[protocol]
                    for case in score(chunk, blocks, before, targets):
                        case["chunk"] = k
                        acc[protocol].add_record(case)
                        if sink is not None:
                            sink(case)
                pbar.update(len(chunk))
        return {p: a.result() for p, a in acc.items()}

    def _blocks(self, blocks: Sequence[EditRequest]) -> Iterator[Sequence[EditRequest]]:
        step = self.settings.block
        for i in range(0, len(blocks), step):
            yield blocks[i : i + step]

    def _generate(self, prompts: list[str], stops: list[bool] | None, owners: list[str]) -> list[str]:
        if not prompts:
            return []
        s = self.settings
        try:
            return generate_answers(self.handle, prompts, s.max_new_tokens, s.batch_size, stops)
        except ContextOverflowError as exc:
            raise EditbenchError(f"case {owners[exc.index]!r}: {exc}") from None

    # -- generation protocol --------------------------------------------------------------

    def _generation(self, chunk, blocks, before: dict[str, dict] | None, targets: bool):
        target_out: Iterator[str] = iter(())
        if targets:
            outs: list[str] = []
            for block in self._blocks(chunk):  # batches never cross a block
                prompts, stops, owners = [], [], []
                for r in block:
                    for p, target in self._target_prompts(r):
                        prompts.append(p)
                        stops.append(not has_stop(target))
                        owners.append(r.case_id)
                outs += self._generate(prompts, stops, owners)
            target_out = iter(outs)
        free = self.quality.case_quality(chunk) if self._quality("fluency", "consistency") else {}
        loc_out = self._locality_generations(blocks, before)
        for r in chunk:
            record: dict[str, Any] = {"case_id": r.case_id, "protocol": "generation"}
            if targets:
                rel = _answer_item(r.prompt, r.target_new, next(target_out))
                gens = [_answer_item(p, r.target_new, next(target_out)) for p in r.rephrase_prompts]
                record.update(reliability=rel, generalization=gens)
                if self._quality("portability"):
                    record["portability"] = [
                        {**_answer_item(p.prompt, p.answer, next(target_out)), "kind": p.kind}
                        for p in r.portability]
                if self._quality("semantic"):
                    self._semantic([rel, *gens])
            if r.case_id in free:
                record["quality"] = {k: v for k, v in free[r.case_id].items() if not k.startswith("_")}
            prior = _prior_locality(r, before, "answers")
            locs = []
            for i, (loc, (text, dist)) in enumerate(zip(r.locality, loc_out.get(r.case_id, []), strict=True)):
                answer = cut_at_stop(text)
                item: dict[str, Any] = {
                    "prompt": loc.prompt, "kind": loc.kind, "gold": loc.answer, "output": text,
                    "answer": answer,
                    "gold_match": answers_match(answer, loc.answer) if gold_reachable(loc.answer) else None,
                }
                if prior is None:
                    item["dist"] = dist
                else:
                    pre = prior[i]
                    item["pre"], item["pre_output"] = pre["answer"], pre["output"]
                    item["unchanged"] = normalize_answer(answer) == normalize_answer(pre["answer"])
                    item["unchanged_raw"] = text == pre["output"]
                    item.update(dist)
                locs.append(item)
            record["locality"] = locs
            record["scores"] = score_record("generation", record, before[r.case_id] if before else None)
            yield record

    def _quality(self, *metrics: str) -> bool:
        return self._with_quality and any(m in self.quality.settings.metrics for m in metrics)

    def _target_prompts(self, r: EditRequest) -> list[tuple[str, str]]:
        """(prompt, target) of a request's edit and paraphrase prompts, then (with the
        portability metric on) its portability prompts, in the order cases read them."""
        out = [(p, r.target_new) for p in (r.prompt, *r.rephrase_prompts)]
        if self._quality("portability"):
            out += [(p.prompt, p.answer) for p in r.portability]
        return out

    def _semantic(self, items: list[dict[str, Any]]) -> None:
        """Semantic match of the answers next to exact match (see quality.semantic)."""
        sims = self.quality.semantic([(x["answer"], x["target"]) for x in items])
        for item, sim in zip(items, sims, strict=True):
            item["similarity"], item["semantic_match"] = sim, self.quality.is_match(sim)

    def _locality_generations(self, blocks, before) -> dict[str, list[tuple[str, dict]]]:
        """Per case: (generated text, distribution part) for each locality prompt, block by block.

        Before editing the distribution part is the pre-edit continuation's first
        ``dist_tokens`` tokens with their next-token top-``dist_top`` log-probabilities; after
        editing it is the agreement of the argmax and the KL divergence at those positions.
        """
        s = self.settings
        out: dict[str, list[tuple[str, dict]]] = {}
        for block in self._blocks(blocks):
            owners = [r.case_id for r in block for _ in r.locality]
            prompts = [loc.prompt for r in block for loc in r.locality]
            if not prompts:
                continue
            try:
                gens = generate(self.handle, prompts, s.max_new_tokens, s.batch_size)
            except ContextOverflowError as exc:
                raise EditbenchError(f"case {owners[exc.index]!r}: {exc}") from None
            if not s.dist_tokens:
                conts = []
            elif before is None:
                conts = [ids[: s.dist_tokens] for _, ids in gens]
            else:
                conts = [loc["dist"]["ids"] for r in block for loc in before[r.case_id]["locality"]]
            logps = continuation_logprobs(self.handle, list(zip(prompts, conts, strict=True)), s.batch_size) \
                if s.dist_tokens else [None] * len(prompts)
            pre_dists = None if before is None else \
                [loc["dist"] for r in block for loc in before[r.case_id]["locality"]]
            for k, (cid, (text, _)) in enumerate(zip(owners, gens, strict=True)):
                if not s.dist_tokens:
                    dist: dict[str, Any] = {}
                elif pre_dists is None:
                    dist = _distribution(conts[k], logps[k], s.dist_top)
                else:
                    dist = _compare_distributions(pre_dists[k], logps[k])
                out.setdefault(cid, []).append((text, dist))
        return out

    # -- teacher-forced protocol ----------------------------------------------------------

    def _argmax(self, pairs: list[tuple[str, str]], owners: list[str]):
        try:
            return argmax_at_targets(self.handle, pairs, self.settings.batch_size)
        except ContextOverflowError as exc:
            raise EditbenchError(f"case {owners[exc.index]!r}: {exc}") from None

    def _teacher_forced(self, chunk, blocks, before: dict[str, dict] | None, targets: bool):
        target_out: Iterator = iter(())
        if targets:
            scored: list = []
            for block in self._blocks(chunk):  # batches never cross a block
                pairs, owners = [], []
                for r in block:
                    for p, target in self._target_prompts(r):
                        pairs.append((p, target))
                        owners.append(r.case_id)
                scored += self._argmax(pairs, owners)
            target_out = iter(scored)
        loc_out: dict[str, list] = {}
        for block in self._blocks(blocks):
            pairs = [(r.case_id, (loc.prompt, loc.answer)) for r in block for loc in r.locality]
            outs = self._argmax([p for _, p in pairs], [c for c, _ in pairs])
            for (cid, _), pred in zip(pairs, outs, strict=True):
                loc_out.setdefault(cid, []).append(pred)
        for r in chunk:
            record: dict[str, Any] = {"case_id": r.case_id, "protocol": "teacher_forced"}
            if targets:
                rel = token_accuracy(*next(target_out))
                gens = [token_accuracy(*next(target_out)) for _ in r.rephrase_prompts]
                record.update(reliability=rel, generalization=gens)
                if self._quality("portability"):
                    record["portability"] = [
                        {"prompt": p.prompt, "target": p.answer, "kind": p.kind,
                         "accuracy": token_accuracy(*next(target_out))} for p in r.portability]
            prior = _prior_locality(r, before, "predictions")
            locs = []
            for i, (loc, (gold_ids, pred)) in enumerate(zip(r.locality, loc_out.get(r.case_id, []), strict=True)):
                item = {"prompt": loc.prompt, "kind": loc.kind, "gold": loc.answer, "pred": pred,
                        "gold_accuracy": token_accuracy(gold_ids, pred)}
                if prior is not None:
                    item["unchanged"] = token_accuracy(prior[i]["pred"], pred)
                locs.append(item)
            record["locality"] = locs
            record["scores"] = score_record("teacher_forced", record,
                                            before[r.case_id] if before else None)
            yield record


    # -- probability protocol ---------------------------------------------------------------

    def _probability(self, chunk, blocks, before: dict[str, dict] | None, targets: bool):
        """ROME's probability scores of the chunk's own prompts (no locality blocks: every
        number compares two objects under the same model, never with the pre-edit one)."""
        scored = chunk if targets else [dataclasses.replace(r, target_true=None) for r in chunk]
        for record in probability_records(self.handle, self._blocks(scored), self.settings.batch_size):
            record["scores"] = score_record("probability", record,
                                            before[record["case_id"]] if before else None)
            yield record


def _answer_item(prompt: str, target: str, text: str) -> dict[str, Any]:
    answer = cut_answer(text, target)
    return {"prompt": prompt, "target": target, "output": text, "answer": answer,
            "match": answers_match(answer, target)}


def _prior_locality(r: EditRequest, before: dict[str, dict] | None, what: str) -> list[dict] | None:
    if before is None:
        return None
    prior = before[r.case_id]["locality"]
    if len(prior) != len(r.locality):
        raise EditbenchError(f"case {r.case_id!r}: the pre-edit record has {len(prior)} locality "
                             f"{what}, the request {len(r.locality)}")
    return prior


def _distribution(ids: list[int], logp, top: int) -> dict[str, Any]:
    """The pre-edit side: continuation ids, the argmax and the top log-probs per position."""
    values, index = logp.topk(min(top, logp.shape[-1]), dim=-1)
    return {"ids": list(ids), "argmax": logp.argmax(-1).tolist(), "top_ids": index.tolist(),
            "top_logp": values.tolist()}


def _compare_distributions(pre: dict[str, Any], logp) -> dict[str, Any]:
    """Argmax agreement and KL(pre || post) per position, averaged over the positions.

    KL is taken over the partition {pre-edit top tokens, everything else}, which needs only
    the stored top log-probs; it is zero exactly when nothing changed and a lower bound of
    the full-vocabulary KL otherwise.
    """
    import torch

    agree = (logp.argmax(-1) == torch.tensor(pre["argmax"])).float()
    p = torch.tensor(pre["top_logp"], dtype=torch.float64).exp()
    q = logp.gather(-1, torch.tensor(pre["top_ids"])).double().exp()
    kl = (p * (p.log() - q.log())).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - q.sum(-1)).clamp_min(1e-12)
    kl = kl + torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-300).log() - q_rest.log()), 0.0)
    return {"argmax_agreement": float(agree.mean()), "kl": float(kl.clamp_min(0).mean())}
