"""Free generation about the subject, the text fluency and consistency are computed on.

ROME samples ~100 tokens from each generation prompt with top-k sampling (k = 5) and scores
the decoded sequence *including the prompt*, NFKD-normalized with blank lines joined. The
defaults here follow it, with two stated differences: ``max_new_tokens`` counts new tokens
(ROME grows the whole sequence, prompt included, to 100 tokens) and a sequence stops at EOS
(ROME keeps sampling past GPT-2's end-of-text and deletes the marker).

Sampling is seeded per prompt: each prompt gets its own random generator, seeded from the
run seed and the prompt's key (by default its position; the quality scorer passes
``case_id/index``), so a text does not depend on which other prompts share its batch or on
the order of the requests. Batches are left-padded (``pad_batch(left=True)``) and grouped by
length like the evaluator's own generation.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from editbench.errors import EditbenchError
from editbench.evaluate.generation import _greedy_config, eos_ids, length_batches
from editbench.tokens import check_fits, encode_prompt, pad_batch

if TYPE_CHECKING:
    from editbench.models import ModelHandle


@dataclass(frozen=True)
class FreeGenConfig:
    """How free generations are decoded (recorded in config.json with every quality metric)."""

    max_new_tokens: int = 100
    sample: bool = True  # False: greedy
    top_k: int = 5  # 0: the whole vocabulary
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EditbenchError("free generation: max_new_tokens and batch_size must be positive")
        if self.top_k < 0:
            raise EditbenchError(f"free generation: top_k must be >= 0, got {self.top_k}")
        if not self.temperature > 0:
            raise EditbenchError(f"free generation: temperature must be > 0, got {self.temperature}")

    def describe(self) -> dict[str, Any]:
        decoding = (
            f"sampled, top-k {self.top_k or 'off'}, temperature {self.temperature}, seeded per "
            "prompt" if self.sample else "greedy"
        )
        return {**asdict(self), "decoding": decoding,
                "text": "prompt + continuation, NFKD-normalized, blank lines joined (as ROME)"}


def row_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one prompt, independent of batching and order."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _RowSampler:
    """A logits processor (duck-typed) that samples each row with its own generator.

    It returns scores that are -inf everywhere but at the sampled token, so greedy search
    (the protocol's greedy config) takes exactly that token: generate keeps its KV cache, positions
    and EOS handling, and the randomness is per row instead of the global RNG.
    """

    def __init__(self, generators: list[torch.Generator], top_k: int, temperature: float) -> None:
        self.generators = generators
        self.top_k = top_k
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float().cpu() / self.temperature
        if self.top_k:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        picked = torch.stack([
            torch.multinomial(probs[row], 1, generator=gen)
            for row, gen in enumerate(self.generators)
        ])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, picked.to(scores.device), 0.0)


@torch.no_grad()
def free_generate(handle: ModelHandle, prompts: Sequence[str], config: FreeGenConfig,
                  keys: Sequence[str] | None = None) -> list[str]:
    """The continuation (new text only) of each prompt, up to EOS or ``max_new_tokens``."""
    from transformers import LogitsProcessorList

    if keys is not None and len(keys) != len(prompts):
        raise ValueError("free_generate: one key per prompt")
    keys = [str(i) for i in range(len(prompts))] if keys is None else list(keys)
    tokenizer = handle.tokenizer
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    check_fits(handle.model, [len(e) for e in encoded], config.max_new_tokens)
    eos = eos_ids(handle)
    outputs = [""] * len(prompts)
    for batch in length_batches([len(e) for e in encoded], config.batch_size):
        ids, mask = pad_batch([encoded[i] for i in batch], tokenizer.pad_token_id, left=True)
        processors = LogitsProcessorList()
        if config.sample:
            gens = [torch.Generator().manual_seed(row_seed(config.seed, keys[i])) for i in batch]
            processors.append(_RowSampler(gens, config.top_k, config.temperature))
        out = handle.model.generate(
            input_ids=ids.to(handle.input_device), attention_mask=mask.to(handle.input_device),
            generation_config=_greedy_config(handle, config.max_new_tokens, eos),
            logits_processor=processors,
        )
        new = out[:, ids.shape[1]:].cpu()
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            ends = [k for k, t in enumerate(tokens) if t in eos]
            outputs[i] = tokenizer.decode(tokens[: ends[0]] if ends else tokens,
                                          skip_special_tokens=True)
    return outputs


def scored_text(prompt: str, continuation: str) -> str:
    """What fluency and consistency read: the prompt and its continuation, as ROME decodes
    them (NFKD, blank lines joined into a space)."""
    text = prompt.rstrip() + continuation
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")
