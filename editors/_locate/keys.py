"""Subject-token keys: where the edit is read from, and the hooks that read it.

A key is the input of an MLP output matrix at one token of a prompt: the subject's last
token (``subject_last``, the default of ROME/MEMIT/AlphaEdit), its first token
(``subject_first``) or the prompt's last token (``last``). Positions come from the fast
tokenizer's character offsets, so they are exact for any tokenizer that merges spaces
into tokens; batches are right-padded with an attention mask, so a key does not depend on
what else is in its batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from editbench.api import EditbenchError
from editbench.models import kv_cache_kwargs, returned_kv_cache
from editbench.tokens import pad_batch

if TYPE_CHECKING:
    from editbench.models import ModelHandle

STARTERS = ("The", "Therefore", "Because", "I", "You")
Where = Literal["input", "output"]


class StopForward(Exception):
    """Raised by a hook once every tensor a pass needs has been captured."""


def _subject_pattern(subject: str, bounded: bool) -> str:
    """``subject`` as a regex; ``bounded``: no word character may touch a word-character end
    (so "gold" is not found inside "golden")."""
    pattern = re.escape(subject)
    if bounded and re.match(r"\w", subject):
        pattern = r"(?<!\w)" + pattern
    if bounded and re.search(r"\w$", subject):
        pattern += r"(?!\w)"
    return pattern


def subject_span(text: str, subject: str, start: int = 0) -> tuple[int, int] | None:
    """Character span of the first occurrence of ``subject`` in ``text[start:]``.

    The originals substitute the subject into the prompt's "{}", so the key is always the
    prompt's own mention: a context template before ``start`` is never searched, and a
    match must stand as a word of its own. Fallbacks, in order and still only after
    ``start``: ignoring case, then a match inside a longer word (better than no match).
    """
    for bounded in (True, False):
        for flags in (0, re.IGNORECASE):
            found = re.compile(_subject_pattern(subject, bounded), flags).search(text, start)
            if found:
                return found.start(), found.end()
    return None


@dataclass(frozen=True)
class Located:
    """Token ids of one text and the index of the token the key is read at."""

    ids: list[int]
    position: int
    subject_found: bool = True


def locate(tokenizer, text: str, subject: str, rule: str, start: int = 0) -> Located:
    """Tokenize ``text`` (as ``editbench.tokens.encode_prompt`` does) and find the key token
    (the subject is searched from character ``start`` on: see ``subject_span``)."""
    text = text.rstrip()
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if not ids:
        raise EditbenchError(f"text {text!r} tokenizes to nothing")
    if rule == "last":
        return Located(ids, len(ids) - 1)
    span = subject_span(text, subject, start)
    if span is None:
        # The subject is not in the prompt (some zsRE records): read the last token.
        return Located(ids, len(ids) - 1, subject_found=False)
    start, end = span
    covering = [
        i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start and a < end
    ]
    if not covering:
        return Located(ids, len(ids) - 1, subject_found=False)
    return Located(ids, covering[-1] if rule == "subject_last" else covering[0])


def locate_in_template(tokenizer, template: str, prompt: str, subject: str, rule: str) -> Located:
    """``locate`` on ``template.format(prompt)`` with the subject searched only inside the
    prompt: a template sampled from the model may mention the subject too."""
    return locate(tokenizer, template.format(prompt), subject, rule, start=template.index("{}"))


def _first_tensor(x):
    return x[0] if isinstance(x, tuple | list) else x


@contextmanager
def capture(
    model: nn.Module, specs: dict[str, Where], stop: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Hooks that store each named module's input or output of the latest forward.

    With ``stop=True`` the forward is aborted (``StopForward``) as soon as every module
    has fired, so a pass that needs early layers does not run the rest of the model.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def check_done() -> None:
        if stop and len(store) == len(specs):
            raise StopForward

    for name, where in specs.items():
        module = model.get_submodule(name)
        if where == "input":
            def pre(mod, args, kwargs, name=name):
                store[name] = args[0] if args else next(iter(kwargs.values()))
                check_done()

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(mod, args, output, name=name):
                store[name] = _first_tensor(output)
                check_done()

            handles.append(module.register_forward_hook(post))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Run the base model (no LM head); a ``StopForward`` from a hook ends it early."""
    with suppress(StopForward):
        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)


def read_at(
    handle: ModelHandle,
    items: Sequence[Located],
    specs: dict[str, Where],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Each module's input/output at each item's key position: ``{name: [n, d]}`` (float32,
    on the module's device)."""
    return read_positions(handle, [it.ids for it in items], [[it.position] for it in items],
                          specs, batch_size)


@torch.no_grad()
def read_positions(
    handle: ModelHandle,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    specs: dict[str, Where],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Each module's input/output at the given positions of each token sequence:
    ``{name: [m, d]}`` (float32, on the module's device), sequences in order, each one's
    positions in the given order; one forward per batch, stopped after the last module."""
    model, pad = handle.model, handle.tokenizer.pad_token_id
    out: dict[str, list[torch.Tensor]] = {name: [] for name in specs}
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start : start + batch_size], pad)
        chunk_pos = positions[start : start + batch_size]
        rows = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(chunk_pos)])
        cols = torch.tensor([c for p in chunk_pos for c in p], dtype=torch.long)
        with capture(model, specs, stop=True) as store:
            forward(model, ids.to(handle.input_device), mask.to(handle.input_device))
        for name in specs:
            t = store[name]
            out[name].append(t[rows.to(t.device), cols.to(t.device)].float())
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.no_grad()
def sample_texts(handle: ModelHandle, prompts: Sequence[str], length: int, seed: int, top_k: int = 5) -> list[str]:
    """Seeded top-k samples continuing ``prompts`` (context templates, self-generated corpora).

    Uses its own ``torch.Generator``, so it neither reads nor changes the global RNG.
    """
    tok, model = handle.tokenizer, handle.model
    device = handle.input_device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[str] = [""] * len(prompts)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(tok(p, add_special_tokens=True)["input_ids"]), []).append(i)
    for prefix, idx in groups.items():
        ids = torch.tensor([list(prefix)] * len(idx), dtype=torch.long, device=device)
        past = None
        step_ids = ids
        for _ in range(length):
            res = model(input_ids=step_ids, **kv_cache_kwargs(model, past), use_cache=True)
            past = returned_kv_cache(res)
            logits = res.logits[:, -1].float().cpu()
            top, top_idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
            choice = torch.multinomial(torch.softmax(top, -1), 1, generator=gen)
            nxt = top_idx.gather(1, choice).to(device)
            ids = torch.cat([ids, nxt], dim=1)
            step_ids = nxt
        for row, i in enumerate(idx):
            out[i] = tok.decode(ids[row].tolist(), skip_special_tokens=True)
    return out


def context_template_groups(handle: ModelHandle, lengths: Sequence[int], per_length: int,
                            seed: int) -> list[list[str]]:
    """``[["{}"]]`` plus, per length, ``per_length`` seeded model samples each + ``". {}"``.

    Grouped as the released MEMIT code groups them (its key is the mean of the groups'
    means; see ``LocateEditor.average_keys``). The originals draw the samples unseeded, so
    two runs edit with different templates; here the seed fixes them.
    """
    groups = [["{}"]]
    if per_length == 0:
        return groups
    for n, length in enumerate(lengths):
        starters = [STARTERS[i % len(STARTERS)] for i in range(per_length)]
        group = []
        for text in sample_texts(handle, starters, length, seed * 1000 + n):
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            group.append(text + ". {}")
        groups.append(group)
    return groups


def context_templates(handle: ModelHandle, lengths: Sequence[int], per_length: int, seed: int) -> list[str]:
    """The templates of ``context_template_groups`` in one list (the bare prompt first)."""
    return [t for group in context_template_groups(handle, lengths, per_length, seed) for t in group]
