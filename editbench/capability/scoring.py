"""The three scorers: option log-likelihood, short-answer generation, perplexity.

Option log-likelihood: every option is tokenized as the continuation of its prompt
(``editbench.tokens.encode_prompt_target``: one space between them, ids as the model would
generate them), its score is the summed log-probability of its tokens, optionally divided
by its token count (``tokens``) or its character count (``chars``, lm-eval's ``acc_norm``);
the prediction is the highest-scoring option (the first one on a tie).

Generation: greedy decoding (``editbench.evaluate.generation.generate_answers``: raw prompt,
stop at '.', newline or EOS), then normalized exact match against any gold answer, or a
numeric match of the first number in the answer against the gold answer's last number.

Perplexity: exp of the mean per-token negative log-likelihood over all predicted tokens of
all texts (token-weighted, each text truncated to ``max_tokens``; a text's first token is
the context, not predicted, when the tokenizer adds no BOS). Its score in [0, 1] is
1 / perplexity, the geometric-mean probability of a token; chance is 1 / vocabulary size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from editbench.evaluate.generation import generate_answers, length_batches
from editbench.evaluate.normalize import cut_at_stop, normalize_answer
from editbench.models import kv_cache_kwargs, returned_kv_cache
from editbench.tokens import (
    PromptTarget,
    collate_targets,
    encode_prompt_target,
    output_logits,
    pad_batch,
    target_logits,
)

if TYPE_CHECKING:
    from editbench.models import ModelHandle

NORMALIZATIONS = ("none", "tokens", "chars")


@dataclass(frozen=True)
class ChoiceItem:
    context: str
    options: list[str]
    correct: list[int]  # indices of the correct options (usually one)

    @property
    def chance(self) -> float:
        return len(self.correct) / len(self.options)


@dataclass(frozen=True)
class OptionScore:
    logprob: float  # summed log-probability of the option's tokens
    num_tokens: int
    num_chars: int

    def normalized(self, normalization: str) -> float:
        if normalization == "tokens":
            return self.logprob / self.num_tokens
        if normalization == "chars":
            return self.logprob / max(self.num_chars, 1)
        return self.logprob


def _token_logprobs(model, pieces: Sequence[PromptTarget], pad_id: int) -> torch.Tensor:
    """Summed log-probability of each piece's target tokens: [len(pieces)]."""
    batch = collate_targets(pieces, pad_id)
    logits = target_logits(model, batch).float()
    logp = torch.log_softmax(logits, dim=-1)
    labels = batch.labels.to(logp.device)
    picked = logp.gather(1, labels[:, None])[:, 0]
    sums = torch.zeros(len(pieces), dtype=picked.dtype, device=picked.device)
    return sums.index_add_(0, batch.sample_index.to(picked.device), picked).cpu()


def _encode_items(tok, items: Sequence[ChoiceItem]) -> list[list[PromptTarget]]:
    return [[encode_prompt_target(tok, it.context, o) for o in it.options] for it in items]


@torch.no_grad()
def option_scores(
    handle: ModelHandle, items: Sequence[ChoiceItem], batch_size: int = 32, share_prompt: bool = True
) -> list[list[OptionScore]]:
    """Log-likelihood of every option of every item.

    ``share_prompt`` (default): each prompt goes through the model once; its KV cache is
    then repeated for its options, which only run their own tokens. Otherwise every
    (prompt, option) pair is one sequence. Either way a batch holds at most ``batch_size``
    (prompt, option) rows (and at least one prompt), grouped by length, and both give the
    same numbers up to float rounding.
    """
    encoded = _encode_items(handle.tokenizer, items)
    out: list[list[OptionScore]] = [[] for _ in items]
    if share_prompt:
        for batch in _pack(encoded, batch_size):
            sums = _shared_prompt_logprobs(handle, [encoded[i] for i in batch])
            for i, values in zip(batch, sums, strict=True):
                out[i] = [
                    OptionScore(v, len(p.target_ids), len(o.strip()))
                    for v, p, o in zip(values, encoded[i], items[i].options, strict=True)
                ]
        return out
    flat = [(i, j) for i, e in enumerate(encoded) for j in range(len(e))]
    scores: list[list[OptionScore | None]] = [[None] * len(e) for e in encoded]
    for batch in length_batches([len(encoded[i][j].ids) for i, j in flat], batch_size):
        pieces = [encoded[flat[k][0]][flat[k][1]] for k in batch]
        sums = _token_logprobs(handle.model, pieces, handle.tokenizer.pad_token_id)
        for row, k in enumerate(batch):
            i, j = flat[k]
            scores[i][j] = OptionScore(float(sums[row]), len(pieces[row].target_ids),
                                       len(items[i].options[j].strip()))
    return scores  # type: ignore[return-value]


def _pack(encoded: Sequence[Sequence[PromptTarget]], rows: int) -> list[list[int]]:
    """Prompts grouped by length (longest first) so a batch holds at most ``rows`` options."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0].prompt_ids))
    batches: list[list[int]] = []
    used = rows
    for i in order:
        if used + len(encoded[i]) > rows:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += len(encoded[i])
    return batches


def _shared_prompt_logprobs(handle: ModelHandle, group: Sequence[Sequence[PromptTarget]]) -> list[list[float]]:
    """Summed option log-probs for a batch of prompts, each prompt run once.

    Prompts are left-padded with explicit position ids (so absolute-position models such as
    GPT-2 see the same positions as unpadded), their KV cache is indexed once per option,
    and the options are right-padded after it. The prompt's last hidden state predicts each
    option's first token; option position t predicts token t + 1.
    """
    model, pad = handle.model, handle.tokenizer.pad_token_id
    base = model.base_model
    device = handle.input_device
    prompts = [g[0].prompt_ids for g in group]
    ids, mask = pad_batch(prompts, pad, left=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = base(input_ids=ids.to(device), attention_mask=mask.to(device),
               position_ids=pos.to(device), use_cache=True)
    cache = returned_kv_cache(out)
    last = out.last_hidden_state[:, -1]  # [P, H]: predicts each option's first token

    owner = [row for row, g in enumerate(group) for _ in g]
    options = [p.target_ids for g in group for p in g]
    index = torch.tensor(owner)
    # An option's last token is only predicted, never fed: single-token options need no
    # second pass at all.
    owidth = max(len(o) for o in options) - 1
    hidden = None
    if owidth > 0:
        cache.reorder_cache(index.to(last.device))
        oids, omask = pad_batch([o[:-1] for o in options], pad)
        lengths = mask.sum(-1)[index]
        opos = lengths[:, None] + torch.arange(owidth)[None, :]
        full_mask = torch.cat([mask[index], omask], dim=1)
        hidden = base(input_ids=oids.to(device), attention_mask=full_mask.to(device),
                      position_ids=opos.to(device), **kv_cache_kwargs(base, cache),
                      use_cache=True).last_hidden_state

    rows, cols, labels, firsts = [], [], [], []
    for r, o in enumerate(options):
        firsts.append(o[0])
        for t in range(1, len(o)):
            rows.append(r)
            cols.append(t - 1)
            labels.append(o[t])
    first_logp = torch.log_softmax(
        output_logits(model, last[index.to(last.device)]).float(), dim=-1
    )
    sums = first_logp.gather(1, torch.tensor(firsts, device=first_logp.device)[:, None])[:, 0]
    if rows and hidden is not None:
        r_t = torch.tensor(rows, device=hidden.device)
        picked = hidden[r_t, torch.tensor(cols, device=hidden.device)]
        logp = torch.log_softmax(output_logits(model, picked).float(), dim=-1)
        rest = logp.gather(1, torch.tensor(labels, device=logp.device)[:, None])[:, 0]
        sums = sums.index_add(0, r_t.to(sums.device), rest.to(sums.device))
    flat = sums.cpu().tolist()
    result, k = [], 0
    for g in group:
        result.append(flat[k : k + len(g)])
        k += len(g)
    return result


def pick(scores: Sequence[OptionScore], normalization: str) -> int:
    values = [s.normalized(normalization) for s in scores]
    return max(range(len(values)), key=lambda j: (values[j], -j))


def score_choices(
    handle: ModelHandle,
    items: Sequence[ChoiceItem],
    normalization: str = "none",
    batch_size: int = 32,
    share_prompt: bool = True,
) -> tuple[float, list[int]]:
    """Accuracy and each item's predicted option index."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not items:
        return 0.0, []
    scores = option_scores(handle, items, batch_size, share_prompt)
    preds = [pick(s, normalization) for s in scores]
    correct = sum(p in it.correct for p, it in zip(preds, items, strict=True))
    return correct / len(items), preds


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str, last: bool = False) -> float | None:
    """The first (or last) number in ``text``, commas removed; None when there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1 if last else 0].replace(",", ""))
    except ValueError:
        return None


def answer_matches(prediction: str, answers: Sequence[str], match: str = "exact") -> bool:
    if match == "numeric":
        got = parse_number(prediction)
        return got is not None and any(
            (gold := parse_number(a, last=True)) is not None and math.isclose(got, gold)
            for a in answers
        )
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def score_generation(
    handle: ModelHandle,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    match: str = "exact",
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> tuple[float, list[str]]:
    """Share of prompts whose greedy answer matches a gold answer, and the answers."""
    if not prompts:
        return 0.0, []
    raw = generate_answers(handle, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    preds = [cut_at_stop(r) for r in raw]
    hits = sum(answer_matches(p, a, match) for p, a in zip(preds, answers, strict=True))
    return hits / len(prompts), preds


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # summed negative log-likelihood (nats)
    num_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.num_tokens)

    @property
    def score(self) -> float:
        return math.exp(-self.nll / self.num_tokens)


@torch.no_grad()
def perplexity(handle: ModelHandle, texts: Sequence[str], max_tokens: int = 256, batch_size: int = 16) -> PerplexityResult:
    """Token-weighted perplexity of ``texts`` (see the module docstring)."""
    tok = handle.tokenizer
    pieces = []
    for text in texts:
        ids = tok(text, add_special_tokens=True)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            pieces.append(PromptTarget(ids[:1], ids[1:]))
    if not pieces:
        raise ValueError("perplexity needs at least one text of two or more tokens")
    nll, count = 0.0, 0
    for batch in length_batches([len(p.ids) for p in pieces], batch_size):
        chosen = [pieces[k] for k in batch]
        nll -= float(_token_logprobs(handle.model, chosen, tok.pad_token_id).double().sum())
        count += sum(len(p.target_ids) for p in chosen)
    return PerplexityResult(nll, count)
