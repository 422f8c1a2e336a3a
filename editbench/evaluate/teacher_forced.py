"""Teacher-forced token accuracy (EasyEdit's default protocol).

Feed prompt + target, take the argmax at each target position; the score of a pair is
the fraction of target tokens predicted. Kept for comparison with published EasyEdit
numbers only: it inflates results relative to generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from editbench.evaluate.generation import length_batches
from editbench.tokens import (
    PromptTarget,
    check_fits,
    collate_targets,
    encode_prompt,
    encode_prompt_target,
    target_logits,
)

if TYPE_CHECKING:
    from editbench.models import ModelHandle


@torch.no_grad()
def argmax_at_targets(
    handle: ModelHandle, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> list[tuple[list[int], list[int]]]:
    """For each (prompt, target): (target token ids, argmax ids at those positions)."""
    tokenizer = handle.tokenizer
    items = [encode_prompt_target(tokenizer, p, t) for p, t in pairs]
    check_fits(handle.model, [len(it.ids) for it in items])
    out: list[tuple[list[int], list[int]]] = [([], [])] * len(items)
    for batch in length_batches([len(it.ids) for it in items], batch_size):
        tb = collate_targets([items[i] for i in batch], tokenizer.pad_token_id).to(
            handle.input_device
        )
        pred = target_logits(handle.model, tb).argmax(-1).cpu()
        sample = tb.sample_index.cpu()
        for row, i in enumerate(batch):
            out[i] = (items[i].target_ids, pred[sample == row].tolist())
    return out


def token_accuracy(target_ids: Sequence[int], predicted: Sequence[int]) -> float:
    return sum(int(a == b) for a, b in zip(target_ids, predicted, strict=True)) / len(target_ids)


@torch.no_grad()
def continuation_logprobs(
    handle: ModelHandle, pairs: Sequence[tuple[str, Sequence[int]]], batch_size: int = 32
) -> list[torch.Tensor]:
    """For each (prompt, continuation ids): the next-token log-probabilities at the positions
    that predict those ids, teacher-forced: ``[len(ids), vocab]`` float32 on the CPU."""
    tokenizer = handle.tokenizer
    items = [PromptTarget(encode_prompt(tokenizer, p), list(ids)) for p, ids in pairs]
    check_fits(handle.model, [len(it.ids) for it in items])
    out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for batch in length_batches([len(it.ids) for it in items], batch_size):
        tb = collate_targets([items[i] for i in batch], tokenizer.pad_token_id).to(handle.input_device)
        logp = torch.log_softmax(target_logits(handle.model, tb).float(), -1).cpu()
        sample = tb.sample_index.cpu()
        for row, i in enumerate(batch):
            out[i] = logp[sample == row]
    return out
