"""The target-vector optimisation shared by ROME (delta at one MLP output) and MEMIT /
AlphaEdit (z at the last edited layer's residual stream, or one delta per edited layer's
MLP output where the block normalises that output: see ``editors/_locate/batch.py``).

For every request a vector delta is added to the output of each insert module at the key
token of each rewriting prompt (context template + prompt, followed by the target) and of
the KL prompt "{subject} is a". The deltas minimise

    NLL(target | rewriting prompts) + kl_factor * KL(p_now || p_before) on the KL prompt
    + v_weight_decay * sum over modules of |delta| / |h0|^2

with Adam, and after every step each |delta| is clamped to clamp_norm_factor * |h0| (h0:
that module's output at the bare prompt). Requests are optimised together in mini-batches, each
with its own delta; a request stops moving once its loss is below ``v_loss_threshold``
(per-request early stop, as the originals do one request at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from editbench.api import EditbenchError, EditRequest
from editbench.tokens import (
    collate_targets,
    encode_prompt_target,
    output_logits,
    pad_batch,
    per_sample_mean,
)
from editors._locate.config import LocateConfig
from editors._locate.keys import Located, _first_tensor, locate, locate_in_template

if TYPE_CHECKING:
    from editbench.models import ModelHandle

KL_PROMPT = "{} is a"


@dataclass
class Targets:
    """Per request: the optimised delta and the module outputs it is added to."""

    delta: torch.Tensor  # [n, d], or [n, modules, d] from ``optimize_module_targets``
    h_bare: torch.Tensor  # the same shape: output at the key token of the bare prompt (no delta)
    final_loss: list[float]
    steps: int
    subject_missing: int


def target_text(request: EditRequest, suffix: str) -> tuple[str, bool]:
    """The optimised continuation and whether EOS is appended."""
    if suffix == "period":
        return request.target_new.strip() + ".", False
    return request.target_new, suffix == "eos"


def rewriting_items(tokenizer, request: EditRequest, templates: Sequence[str], cfg: LocateConfig):
    """(PromptTarget, key position) for every template, plus the KL prompt's Located."""
    target, eos = target_text(request, cfg.target_suffix)
    items, positions, missing = [], [], 0
    for template in templates:
        text = template.format(request.prompt)
        loc = locate_in_template(tokenizer, template, request.prompt, request.subject, cfg.fact_token)
        try:
            pt = encode_prompt_target(tokenizer, text, target, append_eos=eos)
        except ValueError as exc:
            raise EditbenchError(f"request {request.case_id!r}: {exc}") from exc
        if pt.prompt_ids != loc.ids:
            raise EditbenchError(f"request {request.case_id!r}: prompt tokenization mismatch")
        items.append(pt)
        positions.append(loc.position)
        missing += not loc.subject_found
    kl = locate(tokenizer, KL_PROMPT.format(request.subject), request.subject, cfg.fact_token)
    return items, positions, kl, missing


class _Deltas:
    """The trainable deltas [n, modules, d], made zero by the first forward that reaches a
    hooked module (d is that module's output width), so they are in the graph of the very
    first pass: the first backward already has the NLL/KL gradient, as in the originals."""

    def __init__(self, n: int, modules: int) -> None:
        self.n, self.modules = n, modules
        self.tensor: torch.Tensor | None = None

    def get(self, h: torch.Tensor) -> torch.Tensor:
        if self.tensor is None:
            self.tensor = torch.zeros(self.n, self.modules, h.shape[-1], device=h.device,
                                      dtype=torch.float32, requires_grad=True)
        return self.tensor


class _AddAt:
    """Forward hook adding ``delta[group[row], slot]`` to the output at ``(row, position)``;
    ``seen``: the output there in the first pass (delta = 0 then)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, group: torch.Tensor, slot: int,
                 deltas: _Deltas) -> None:
        self.rows, self.cols, self.group, self.slot = rows, cols, group, slot
        self.deltas = deltas
        self.seen: torch.Tensor | None = None

    def __call__(self, module, args, output):
        h = _first_tensor(output)
        dev = h.device
        rows, cols = self.rows.to(dev), self.cols.to(dev)
        if self.seen is None:
            self.seen = h[rows, cols].detach().float()
        delta = self.deltas.get(h)
        values = delta[:, self.slot].to(dev)[self.group.to(dev)].to(h.dtype)
        h = h.index_put((rows, cols), values, accumulate=True)
        return (h, *output[1:]) if isinstance(output, tuple) else h


def optimize_targets(
    handle: ModelHandle,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    insert_module: str,
    cfg: LocateConfig,
) -> Targets:
    """Optimise one delta per request at ``insert_module``'s output (see module docstring):
    ``delta`` and ``h_bare`` are [n, d]."""
    tg = optimize_module_targets(handle, requests, templates, [insert_module], cfg)
    tg.delta, tg.h_bare = tg.delta[:, 0], tg.h_bare[:, 0]
    return tg


def optimize_module_targets(
    handle: ModelHandle,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    insert_modules: Sequence[str],
    cfg: LocateConfig,
) -> Targets:
    """Optimise one delta per request and module, all modules together: ``delta`` and
    ``h_bare`` are [n, modules, d] (the modules' outputs must share their width)."""
    parts = [
        _optimize_batch(handle, requests[i : i + cfg.v_batch_size], templates, insert_modules, cfg)
        for i in range(0, len(requests), cfg.v_batch_size)
    ]
    return Targets(
        delta=torch.cat([p.delta for p in parts]),
        h_bare=torch.cat([p.h_bare for p in parts]),
        final_loss=[x for p in parts for x in p.final_loss],
        steps=max(p.steps for p in parts),
        subject_missing=sum(p.subject_missing for p in parts),
    )


def _optimize_batch(handle: ModelHandle, requests, templates, insert_modules, cfg: LocateConfig) -> Targets:
    tok, model = handle.tokenizer, handle.model
    n, t = len(requests), len(templates)
    items, positions, kl_locs, missing = [], [], [], 0
    for r in requests:
        its, pos, kl, miss = rewriting_items(tok, r, templates, cfg)
        items += its
        positions += pos
        kl_locs.append(kl)
        missing += miss
    batch = collate_targets(items, tok.pad_token_id)
    # The KL rows (prompt only) go into the same forward, after the rewriting rows.
    ids, mask = pad_batch([it.ids for it in items] + [k.ids for k in kl_locs], tok.pad_token_id)
    rows = torch.arange(n * t + n)
    cols = torch.tensor(positions + [k.position for k in kl_locs])
    group = torch.cat([torch.arange(n).repeat_interleave(t), torch.arange(n)])
    deltas = _Deltas(n, len(insert_modules))
    hooks = [_AddAt(rows, cols, group, slot, deltas) for slot in range(len(insert_modules))]

    device = handle.input_device
    ids, mask = ids.to(device), mask.to(device)
    handles = [model.get_submodule(name).register_forward_hook(hook)
               for name, hook in zip(insert_modules, hooks, strict=True)]
    tgt_rows = batch.rows.to(device)
    tgt_cols = batch.cols.to(device)
    labels = batch.labels
    kl_rows = torch.arange(n * t, n * t + n, device=device)
    kl_cols = torch.tensor([k.position for k in kl_locs], device=device)

    delta: torch.Tensor | None = None
    opt = None
    kl_init = h_bare = None
    active = torch.ones(n, dtype=torch.bool)
    losses = torch.zeros(n)
    steps = 0
    try:
        for it in range(cfg.v_num_grad_steps):
            hidden = model.base_model(
                input_ids=ids, attention_mask=mask, use_cache=False
            ).last_hidden_state
            logits = output_logits(model, hidden[tgt_rows, tgt_cols]).float()
            nll = nn.functional.cross_entropy(logits, labels.to(logits.device), reduction="none")
            per_row = per_sample_mean(nll, batch.sample_index, n * t)
            nll_r = per_row.view(n, t).mean(1)
            kl_logp = torch.log_softmax(
                output_logits(model, hidden[kl_rows, kl_cols]).float(), -1
            )
            if delta is None:
                # The first pass ran with delta = 0 in the graph: it gives the unedited
                # outputs ([n, modules, d] at the bare prompt, template 0) and distribution.
                delta = deltas.tensor
                assert delta is not None, "the insert modules were not reached"
                h_bare = torch.stack([h.seen[: n * t].view(n, t, -1)[:, 0] for h in hooks], 1)
                kl_init = kl_logp.detach()
                opt = torch.optim.Adam([delta], lr=cfg.v_lr)
            kl_r = (kl_logp.exp() * (kl_logp - kl_init)).sum(-1)
            h_norm2 = h_bare.to(delta.device).norm(dim=-1) ** 2
            wd_r = cfg.v_weight_decay * (delta.norm(dim=-1) / h_norm2).sum(-1)
            loss_r = nll_r.to(delta.device) + cfg.kl_factor * kl_r.to(delta.device) + wd_r
            losses = loss_r.detach().cpu()
            active &= losses >= cfg.v_loss_threshold
            if not bool(active.any()) or it == cfg.v_num_grad_steps - 1:
                break
            opt.zero_grad(set_to_none=True)
            loss_r[active.to(loss_r.device)].sum().backward()
            before = delta.detach().clone()
            opt.step()
            steps += 1
            with torch.no_grad():
                frozen = (~active).to(delta.device)
                delta[frozen] = before[frozen]
                max_norm = cfg.clamp_norm_factor * h_bare.to(delta.device).norm(dim=-1)
                norms = delta.norm(dim=-1)
                scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), 1.0)
                delta.mul_(scale.unsqueeze(-1))
    finally:
        for h in handles:
            h.remove()
    assert delta is not None and h_bare is not None
    return Targets(
        delta=delta.detach(),
        h_bare=h_bare,
        final_loss=[round(float(x), 5) for x in losses],
        steps=steps,
        subject_missing=missing,
    )



def describe(targets: Targets) -> dict[str, Any]:
    losses = targets.final_loss
    return {
        "v_steps": targets.steps,
        "v_mean_final_loss": round(sum(losses) / len(losses), 5),
        "v_max_final_loss": max(losses),
        "subject_not_found": targets.subject_missing,
    }


def template_items(
    tokenizer, requests: Sequence[EditRequest], templates: Sequence[str], rule: str
) -> list[Located]:
    """Request-major: ``len(templates)`` consecutive items per request."""
    return [
        locate_in_template(tokenizer, tpl, r.prompt, r.subject, rule)
        for r in requests
        for tpl in templates
    ]
