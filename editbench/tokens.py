"""Prompt/target tokenization shared by trainers, locate-then-edit editors and evaluation.

The target is tokenized *in context*: ``prompt + " " + target`` is tokenized as one string
and split after the prompt's tokens, so the target ids are the ones the model would
generate after the prompt (tokenizing " Paris" alone differs for SentencePiece models;
EasyEdit's bugs #302/#303/#365/#390 came from such mismatches).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
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
    """Right-padded prompt+target batch and the positions whose logits predict the target.

    A packed batch (:meth:`TargetTable.pack`) is one row of the sequences back to back,
    no attention mask and per-sequence ``position_ids``: the model's mask functions read
    the position restarts as sequence boundaries (each sequence attends to itself only).
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor | None  # [B, L]; None when packed
    rows: torch.Tensor  # [N] batch index of each target token
    cols: torch.Tensor  # [N] position whose logits predict that token
    labels: torch.Tensor  # [N] the target token ids
    sample_index: torch.Tensor  # [N] which sample each target token belongs to
    position_ids: torch.Tensor | None = None  # [1, L] when packed

    def to(self, device: torch.device | str) -> TargetBatch:
        return TargetBatch(*(None if t is None else t.to(device) for t in vars(self).values()))

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """The keyword arguments of the model's forward for this batch."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``[B, W]`` ids and attention mask, right- or left-padded.

    Training and teacher forcing pad right (positions stay natural), generation pads left
    (the next token follows every prompt). A front door to :func:`pad_flat`, the one
    padding helper.
    """
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    flat = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.long)
    return pad_flat(flat, lengths, pad_id, left=left)


def pad_flat(
    flat: torch.Tensor, lengths: torch.Tensor, pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated sequences (``flat``, ``lengths``) -> ``[B, W]`` ids and attention mask."""
    width = int(lengths.max()) if len(lengths) else 0
    ids = torch.full((len(lengths), width), pad_id, dtype=flat.dtype)
    cols = torch.arange(width)[None, :]
    mask = cols >= (width - lengths)[:, None] if left else cols < lengths[:, None]
    ids[mask] = flat
    return ids, mask.long()


def ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    first = torch.cumsum(lengths, 0) - lengths
    return torch.arange(int(lengths.sum())) + torch.repeat_interleave(starts - first, lengths)


@dataclass(frozen=True)
class TargetTable:
    """The prompt+target ids of many requests as flat tensors: a batch of any of them is
    collated with tensor ops, not per-token Python loops (a breadth-first step re-batches
    every request in every epoch)."""

    ids: torch.Tensor  # [N] every sequence, concatenated
    starts: torch.Tensor  # [R] where each sequence begins in ids
    lengths: torch.Tensor  # [R]
    prompt_lengths: torch.Tensor  # [R]
    pad_id: int

    @classmethod
    def of(cls, items: Iterable[PromptTarget], pad_id: int) -> TargetTable:
        """The table of ``items``, read once: a generator is consumed without its items
        being kept (a 100K-request step's Python int lists would cost more than the table)."""
        ids, lengths, prompt = array("q"), array("q"), array("q")
        for it in items:
            ids.extend(it.prompt_ids)
            ids.extend(it.target_ids)
            lengths.append(len(it.prompt_ids) + len(it.target_ids))
            prompt.append(len(it.prompt_ids))
        lengths_t = _long(lengths)
        return cls(_long(ids), torch.cumsum(lengths_t, 0) - lengths_t, lengths_t, _long(prompt), pad_id)

    def select(self, index: torch.Tensor) -> TargetTable:
        """Requests ``index`` as a table of their own (in that order)."""
        lengths = self.lengths[index]
        return TargetTable(self.ids[self.positions(index)], torch.cumsum(lengths, 0) - lengths,
                           lengths, self.prompt_lengths[index], self.pad_id)

    def __len__(self) -> int:
        return len(self.lengths)

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Where the tokens of requests ``index`` sit in :attr:`ids`, in batch order."""
        return ranges(self.starts[index], self.lengths[index])

    def collate(self, index: torch.Tensor) -> TargetBatch:
        """Requests ``index`` right-padded to the longest of them (positions stay natural)."""
        lengths = self.lengths[index]
        input_ids, mask = pad_flat(self.ids[self.positions(index)], lengths, self.pad_id)
        prompt_len = self.prompt_lengths[index]
        target_len = lengths - prompt_len
        rows = torch.repeat_interleave(torch.arange(len(index)), target_len)
        # j-th target token of sample i sits at prompt_len[i] + j; the logits one position
        # earlier predict it.
        first = torch.cumsum(target_len, 0) - target_len
        cols = prompt_len[rows] + torch.arange(len(rows)) - first[rows] - 1
        labels = input_ids[rows, cols + 1]
        return TargetBatch(input_ids, mask, rows, cols, labels, rows.clone())

    def pack(self, index: torch.Tensor) -> TargetBatch:
        """Requests ``index`` back to back in one row, no padding (see :class:`TargetBatch`).

        Why: a right-padded batch of zsRE requests holds 1.5x its real tokens (batch 20,
        smollm2 tokens), and every padded position costs a full forward and backward.
        """
        lengths = self.lengths[index]
        first = torch.cumsum(lengths, 0) - lengths  # where each request starts in the row
        input_ids = self.ids[self.positions(index)][None]
        position_ids = (torch.arange(int(lengths.sum())) - torch.repeat_interleave(first, lengths))[None]
        prompt_len = self.prompt_lengths[index]
        target_len = lengths - prompt_len
        sample = torch.repeat_interleave(torch.arange(len(index)), target_len)
        target_first = torch.cumsum(target_len, 0) - target_len
        cols = first[sample] + prompt_len[sample] + torch.arange(len(sample)) - target_first[sample] - 1
        labels = input_ids[0, cols + 1]
        return TargetBatch(input_ids, None, torch.zeros_like(cols), cols, labels, sample, position_ids)


def _long(values: array) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(values, dtype=np.int64).copy())


def collate_targets(items: Sequence[PromptTarget], pad_id: int) -> TargetBatch:
    """Pad to the longest sequence in this batch (right padding, so positions are natural)."""
    return TargetTable.of(items, pad_id).collate(torch.arange(len(items)))


def target_logits(model, batch: TargetBatch) -> torch.Tensor:
    """Logits only at the positions that predict target tokens: [N, vocab].

    Running the LM head over every position of every sequence dominates a small model's
    step (49K-vocabulary SmolLM2, 262K Gemma 3), so the base model's hidden states are
    gathered first. No KV cache: one forward reads none, and keeping every layer's keys and
    values alive costs memory (and would make the lower layers' outputs matter to the upper
    ones beyond their hidden states, which the trainer's prefix cache relies on not to).
    """
    hidden = model.base_model(**batch.model_inputs(), use_cache=False).last_hidden_state
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
