"""Greedy generation from raw prompts, batched with left padding and a KV cache.

A sequence stops at EOS or at the first generated token whose text contains '.' or a
newline; the batch stops as soon as every sequence has stopped. Prompts are grouped by
length so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from editbench.evaluate.normalize import STOP_CHARS, cut_at_stop
from editbench.tokens import encode_prompt, pad_batch


@lru_cache(maxsize=8)
def _stop_token_ids(tokenizer) -> torch.Tensor:
    """Ids of every vocabulary token whose text contains a stop character."""
    vocab = tokenizer.get_vocab()
    ids = [
        i
        for i in sorted(vocab.values())
        if any(ch in tokenizer.decode([i]) for ch in STOP_CHARS)
    ]
    return torch.tensor(sorted(set(ids) | {tokenizer.eos_token_id}), dtype=torch.long)


class _StopOnTokens:
    """transformers StoppingCriteria (duck-typed): per-sequence done flags."""

    def __init__(self, stop_ids: torch.Tensor) -> None:
        self.stop_ids = stop_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.stop_ids.to(input_ids.device))


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so OOM shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def greedy_new_tokens(handle, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                      **kwargs) -> torch.Tensor:
    """Greedy decoding of a left-padded batch: the new token ids ``[B, <= max_new_tokens]``.

    Sampling settings of the model's generation config are switched off, so what decides
    each token is only argmax and whatever ``kwargs`` adds (stopping criteria, logits
    processors).
    """
    tokenizer = handle.tokenizer
    out = handle.model.generate(
        input_ids=ids.to(handle.input_device),
        attention_mask=mask.to(handle.input_device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    return out[:, ids.shape[1]:].cpu()


def decode_until_eos(tokenizer, tokens: Sequence[int]) -> str:
    tokens = list(tokens)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


@torch.no_grad()
def generate_answers(
    handle, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 32
) -> list[str]:
    """Greedy continuations of ``prompts`` (raw, no chat template), cut at the stop."""
    from transformers import StoppingCriteriaList

    tokenizer = handle.tokenizer
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    stop = StoppingCriteriaList([_StopOnTokens(_stop_token_ids(tokenizer))])
    outputs: list[str] = [""] * len(prompts)
    for batch in length_batches([len(e) for e in encoded], batch_size):
        ids, mask = pad_batch([encoded[i] for i in batch], tokenizer.pad_token_id, left=True)
        new = greedy_new_tokens(handle, ids, mask, max_new_tokens, stopping_criteria=stop)
        for row, i in enumerate(batch):
            outputs[i] = decode_until_eos(tokenizer, new[row].tolist())
    return outputs


def answers(raw: Sequence[str]) -> list[str]:
    return [cut_at_stop(r) for r in raw]
