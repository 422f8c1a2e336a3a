"""Greedy generation from raw prompts, batched with left padding and a KV cache.

A sequence stops at EOS (any of the model's EOS ids) or at the first generated token whose
text contains '.' or a newline; rows may ask not to stop at '.' (targets that contain one,
see ``normalize.cut_answer``). The batch stops as soon as every sequence has stopped.
Prompts are grouped by length so little compute goes to padding; the grouping depends only
on the prompts given, so the same prompt list is always generated in the same batches.

Decoding settings come from here alone: a checkpoint's own ``generation_config``
(repetition penalty, sampling, a single EOS id) never leaks into the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from editbench.evaluate.normalize import STOP_CHARS
from editbench.tokens import check_fits, encode_prompt, pad_batch

if TYPE_CHECKING:
    from editbench.models import ModelHandle


def eos_ids(handle: ModelHandle) -> list[int]:
    """Every EOS id of the model: the tokenizer's and the generation config's (instruct
    models often list several, e.g. end-of-turn as well as end-of-text)."""
    ids = {handle.tokenizer.eos_token_id}
    configured = getattr(getattr(handle.model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(i for i in ids if i is not None)


@lru_cache(maxsize=16)
def _stop_token_ids(tokenizer, chars: tuple[str, ...]) -> torch.Tensor:
    """Ids of every vocabulary token whose text contains one of ``chars``."""
    ids = [i for i in sorted(tokenizer.get_vocab().values())
           if any(ch in tokenizer.decode([i]) for ch in chars)]
    return torch.tensor(ids, dtype=torch.long)


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


def _greedy_config(handle: ModelHandle, max_new_tokens: int, eos: list[int]):
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
        no_repeat_ngram_size=0, temperature=None, top_p=None, top_k=None,
        pad_token_id=handle.tokenizer.pad_token_id, eos_token_id=eos,
        bos_token_id=getattr(handle.model.generation_config, "bos_token_id", None),
    )


def generate_answers(
    handle: ModelHandle,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stop_at_period: Sequence[bool] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (raw, no chat template), cut at the stop."""
    return [text for text, _ in generate(handle, prompts, max_new_tokens, batch_size, stop_at_period)]


@torch.no_grad()
def generate(
    handle: ModelHandle,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stop_at_period: Sequence[bool] | None = None,
) -> list[tuple[str, list[int]]]:
    """(text, generated token ids) per prompt: the text up to the first EOS, the ids up to
    and including the token that stopped the sequence (a stop token or EOS)."""
    from transformers import StoppingCriteriaList

    tokenizer, model = handle.tokenizer, handle.model
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    check_fits(model, [len(e) for e in encoded], max_new_tokens)
    eos = eos_ids(handle)
    config = _greedy_config(handle, max_new_tokens, eos)
    period = list(stop_at_period) if stop_at_period is not None else [True] * len(prompts)
    outputs: list[tuple[str, list[int]]] = [("", [])] * len(prompts)
    device = handle.input_device
    for stops in (True, False):
        rows = [i for i in range(len(prompts)) if period[i] is stops]
        if not rows:
            continue
        chars = STOP_CHARS if stops else tuple(c for c in STOP_CHARS if c != ".")
        stop_ids = torch.cat([_stop_token_ids(tokenizer, chars), torch.tensor(eos)])
        stop = StoppingCriteriaList([_StopOnTokens(stop_ids)])
        for batch in length_batches([len(encoded[i]) for i in rows], batch_size):
            batch = [rows[j] for j in batch]
            ids, mask = pad_batch([encoded[i] for i in batch], tokenizer.pad_token_id, left=True)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                generation_config=config, stopping_criteria=stop,
            )
            new = out[:, ids.shape[1]:].cpu()
            stop_set = set(stop_ids.tolist())
            for row, i in enumerate(batch):
                tokens = new[row].tolist()
                ends = [k for k, t in enumerate(tokens) if t in eos]
                stops = [k for k, t in enumerate(tokens) if t in stop_set]
                text = tokenizer.decode(tokens[: ends[0]] if ends else tokens, skip_special_tokens=True)
                outputs[i] = (text, tokens[: stops[0] + 1] if stops else tokens)
    return outputs
