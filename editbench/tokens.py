"""Prompt/target tokenization shared by trainers, locate-then-edit editors and evaluation.

The target is tokenized *in context*: ``prompt + " " + target`` is tokenized as one string
and split after the prompt's tokens, so the target ids are the ones the model would
generate after the prompt (tokenizing " Paris" alone differs for SentencePiece models;
EasyEdit's bugs #302/#303/#365/#390 came from such mismatches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from editbench.errors import EditbenchError


class ContextOverflowError(EditbenchError):
    """A sequence (plus what must follow it) does not fit in the model's context.

    ``index`` says which of the given sequences; callers add the case id. Without this
    check a long prompt is a device-side assert on a GPU, or silently wrong positions.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def context_length(model) -> int | None:
    """The model's context in tokens, from its config (None where the config has none)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model, lengths: Sequence[int], extra: int = 0) -> None:
    """Raise :class:`ContextOverflowError` for the first ``length + extra`` over the context."""
    limit = context_length(model)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + extra > limit:
            more = f" + {extra} new" if extra else ""
            raise ContextOverflowError(
                f"{n} tokens{more} exceed the model's context of {limit} tokens", i
            )


@dataclass(frozen=True)
class PromptTarget:
    prompt_ids: list[int]
    target_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.target_ids


def _clean(prompt: str) -> str:
    """Trailing spaces go (the target is joined with one); a trailing newline (a chat
    template's generation prompt) stays."""
    return prompt.rstrip(" \t")


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(_clean(prompt), add_special_tokens=True)["input_ids"]


def encode_prompt_target(
    tokenizer, prompt: str, target: str, append_eos: bool = False
) -> PromptTarget:
    """Token ids of ``prompt`` and of ``target`` as its continuation after one space (no
    space after a prompt that ends with a newline)."""
    prompt = _clean(prompt)
    prompt_ids = encode_prompt(tokenizer, prompt)
    sep = "" if prompt.endswith("\n") else " "
    full = tokenizer(f"{prompt}{sep}{target.strip()}", add_special_tokens=True)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids:
        target_ids = full[len(prompt_ids) :]
    else:
        # The boundary merged across the space: fall back to the standalone target.
        target_ids = tokenizer(sep + target.strip(), add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise ValueError(f"target {target!r} tokenizes to nothing after prompt {prompt!r}")
    if append_eos:
        target_ids = target_ids + [tokenizer.eos_token_id]
    return PromptTarget(prompt_ids, list(target_ids))


@dataclass
class TargetBatch:
    """Right-padded prompt+target batch and the positions whose logits predict the target."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [N] batch index of each target token
    cols: torch.Tensor  # [N] position whose logits predict that token
    labels: torch.Tensor  # [N] the target token ids
    sample_index: torch.Tensor  # [N] which sample each target token belongs to

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(*(t.to(device) for t in vars(self).values()))


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``[B, W]`` ids and attention mask, right- or left-padded.

    The one padding helper: training and teacher forcing pad right (positions stay
    natural), generation pads left (the next token follows every prompt).
    """
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    cols = torch.arange(width)[None, :]
    mask = cols >= (width - lengths)[:, None] if left else cols < lengths[:, None]
    ids[mask] = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    return ids, mask.long()


def collate_targets(items: Sequence[PromptTarget], pad_id: int) -> TargetBatch:
    """Pad to the longest sequence in this batch (right padding, so positions are natural)."""
    input_ids, mask = pad_batch([it.ids for it in items], pad_id)
    prompt_len = torch.tensor([len(it.prompt_ids) for it in items], dtype=torch.long)
    target_len = torch.tensor([len(it.target_ids) for it in items], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(items)), target_len)
    # j-th target token of sample i sits at prompt_len[i] + j; the logits one position
    # earlier predict it.
    first = torch.cumsum(target_len, 0) - target_len
    offset = torch.arange(len(rows)) - first[rows]
    cols = prompt_len[rows] + offset - 1
    labels = torch.tensor([t for it in items for t in it.target_ids], dtype=torch.long)
    return TargetBatch(input_ids, mask, rows, cols, labels, rows.clone())


def target_logits(model, batch: TargetBatch) -> torch.Tensor:
    """Logits only at the positions that predict target tokens: [N, vocab].

    Running the LM head over every position of every sequence dominates a small model's
    step (49K-vocabulary SmolLM2, 262K Gemma 3), so the base model's hidden states are
    gathered first.
    """
    hidden = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state
    rows = batch.rows.to(hidden.device)
    cols = batch.cols.to(hidden.device)
    return output_logits(model, hidden[rows, cols])


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on base-model hidden states, as the model's own forward applies it.

    The output embedding, then ``tanh`` soft-capping where the model's config sets
    ``final_logit_softcapping`` (Gemma 2 caps at 30; Gemma 3 configs leave it unset).
    Read from the config the forward reads, so a wrapper that ignores its text config's
    cap (multimodal Gemma 3) is not capped here either.
    """
    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def per_sample_mean(values: torch.Tensor, sample_index: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of per-token ``values`` within each sample: [n]."""
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
        0, sample_index.to(values.device), values
    )
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
        0, sample_index.to(values.device), torch.ones_like(values)
    )
    return sums / counts
