"""The probability protocol: ROME / MEMIT / AlphaEdit's CounterFact scores.

For every prompt, the mean negative log-probability per token of ``target_new`` and of
``target_true`` as its continuation (teacher-forced, each object tokenized in context as
``prompt + " " + object``, as every editbench protocol tokenizes targets; ROME tokenizes
``" " + object`` on its own, which is the same for GPT-2 where the prompt ends a word).
Edit and paraphrase prompts succeed when P(new) > P(true); neighbourhood prompts (the
same relation about another subject that has the true object) when P(true) > P(new). The
magnitudes are the differences of exp(-NLL), as ROME's ``summarize.py`` averages them:
mean over a request's prompts, then over requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from editbench.api import EditRequest
from editbench.evaluate.generation import length_batches
from editbench.tokens import check_fits, collate_targets, encode_prompt_target, target_logits

if TYPE_CHECKING:
    from editbench.models import ModelHandle

DEFINITION = (
    "ROME/MEMIT's CounterFact probability scores: per prompt, the mean token negative "
    "log-probability (NLL) of target_new and of target_true after the prompt (teacher-"
    "forced; each object tokenized in context as prompt + ' ' + object); efficacy_score: "
    "share of edit prompts with NLL(new) < NLL(true), efficacy_magnitude: mean of "
    "exp(-NLL(new)) - exp(-NLL(true)); paraphrase_score / paraphrase_magnitude: the same "
    "on the paraphrases; neighbourhood_score: share of neighbourhood locality prompts with "
    "NLL(true) < NLL(new), neighbourhood_magnitude: mean of exp(-NLL(true)) - "
    "exp(-NLL(new)); each a mean over a request's prompts, then over requests (ROME's "
    "summarize.py); requests without target_true are not scored"
)


@torch.no_grad()
def target_nll(handle: ModelHandle, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """For each (prompt, target): the mean negative log-probability of the target's tokens."""
    tokenizer = handle.tokenizer
    items = [encode_prompt_target(tokenizer, p, t) for p, t in pairs]
    check_fits(handle.model, [len(it.ids) for it in items])
    out = [0.0] * len(items)
    for batch in length_batches([len(it.ids) for it in items], batch_size):
        tb = collate_targets([items[i] for i in batch], tokenizer.pad_token_id).to(handle.input_device)
        logp = torch.log_softmax(target_logits(handle.model, tb).double(), -1)
        nll = -logp.gather(-1, tb.labels.unsqueeze(-1)).squeeze(-1).cpu()
        sample = tb.sample_index.cpu()
        for row, i in enumerate(batch):
            out[i] = float(nll[sample == row].mean())
    return out


def scored_prompts(r: EditRequest) -> list[tuple[str, str]]:
    """(part, prompt) of a request's scored prompts: the edit prompt, its paraphrases, its
    neighbourhood locality prompts (none without ``target_true``)."""
    if r.target_true is None:
        return []
    return [("efficacy", r.prompt), *(("paraphrase", p) for p in r.rephrase_prompts),
            *(("neighbourhood", loc.prompt) for loc in r.locality if loc.kind == "neighbourhood")]


def probability_records(handle: ModelHandle, blocks: Iterator[Sequence[EditRequest]],
                        batch_size: int) -> Iterator[dict[str, Any]]:
    """One record per request, block by block (batches never cross a block, so a request's
    numbers do not depend on the other blocks)."""
    for block in blocks:
        pairs, owners = [], []
        for r in block:
            for part, prompt in scored_prompts(r):
                pairs += [(prompt, r.target_new), (prompt, r.target_true)]
                owners.append((r.case_id, part, prompt))
        nll = target_nll(handle, pairs, batch_size) if pairs else []
        items: dict[str, dict[str, list[dict[str, Any]]]] = {r.case_id: {} for r in block}
        for k, (cid, part, prompt) in enumerate(owners):
            items[cid].setdefault(part, []).append(
                {"prompt": prompt, "nll_new": nll[2 * k], "nll_true": nll[2 * k + 1]})
        for r in block:
            yield {"case_id": r.case_id, "protocol": "probability", "target_true": r.target_true,
                   **{part: items[r.case_id].get(part, [])
                      for part in ("efficacy", "paraphrase", "neighbourhood")}}
