"""WISE: a side memory for the edits, a router between it and the main memory, shards merged.

Wang et al., "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing of Large
Language Models" (NeurIPS 2024); WISE-Merge. The main memory is one MLP output (value)
matrix ``W`` (``modules``: one ``mlp_down@L``), which never changes. The side memory ``W'``
starts as a copy of ``W`` and is trained on the edits by the shared fine-tuning trainer
(``editors/_finetune.py``, depth-first: each edit's rows for up to ``max_steps`` steps of
``optimizer`` at ``lr``); it lives outside the model and acts through a forward hook.

Routing activation (the paper's Delta_act): at a position with value-matrix input ``a``,
``d = ||act(W' a) - act(W a)||`` with ``act`` the model's hidden activation (SiLU on LLaMA),
as the released code (``score_activation: false``: the plain ``||(W' - W) a||``). The score of
a row, as released (``score_mean: sequence``), is the mean of ``d`` over all its real tokens
in the forward (with a KV cache: over the cached prefix too), one decision for the whole row:
a teacher-forced prompt + target is routed on the target's tokens as well.
``score_mean: prefix`` scores each position by the mean over the tokens up to it, so
teacher-forced scoring and greedy decoding with a KV cache make the same decisions. A row
(position) uses the side memory when its score is at least ``epsilon = act_ratio * min over
edits of the edit's activation``, else the main memory's output, unchanged. The edit's
activation, measured after training it: as released, the mean over the edit's rows (prompt
and context-template variants, each with the target) of their scores; ``prefix``: the lowest
score over the bare prompt's target-predicting positions.

Training loss per edit (rows: the edit prompt and its context-template variants, each with
the target): target NLL through the side memory, plus the routing margins on the scores
(``x_i``: ``irrelevant_per_edit`` texts from ``irrelevant_corpus``)::

    mean+(s(x_i) - alpha) + mean+(beta - s(x_e)) + mean+(s(x_i) - s(x_e) + gamma)

(``mean+``: the mean of the positive entries, as the released code; ``sequence``: one score
per edit row and per irrelevant text, over their real tokens (the released code also
averages over the padding of its batch); ``prefix``: ``s(x_e)`` at each target-predicting
position of every row and ``s(x_i)`` at every position, each a hinge of its own, which is
stricter). The scores are computed from the value matrix's inputs, read once per edit: the
layers below are frozen.

Knowledge sharding and merging: each shard of ``shard_size`` edits trains a random subspace
of ``W'`` (gradients masked to a seeded Bernoulli(``mask_ratio``) set of entries), then is
saved and ``W'`` restarts from ``W``; every ``merge_every`` edits the saved shards are merged
into one memory by TIES (per shard delta from ``W``: keep the ``density`` largest
magnitudes; elect each entry's sign by the weighted sum; average the agreeing deltas), with
the previous merged memory as one more input (weights 0.4 / n per shard and 0.6 for it, as
the released code). The router scores every memory besides the main one (the merged
memory, the shards saved since the last merge, the shard in training); a position reads the
one with the highest score when that score reaches epsilon (ties: the shard in training, as
the released code prefers it). :meth:`finalize` merges what is pending once a run has made
at least ``shard_size`` edits, as the released code does before it evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from editbench.api import EditbenchError, EditRequest, EditStats
from editbench.models import passed_kv_cache
from editbench.registry import register_editor
from editbench.tokens import encode_prompt, pad_batch
from editors._finetune import FinetuneConfig, FinetuneEditor
from editors._locate.keys import context_templates, read_positions

# TIES weights of a later merge: the new shards share 0.4, the previous merged memory 0.6.
NEW_SHARDS_WEIGHT, MERGED_WEIGHT = 0.4, 0.6


@dataclass
class WiseConfig(FinetuneConfig):
    """The trainer's settings (one module, depth-first, one edit at a time) plus WISE's."""

    pipeline: Literal["depth_first", "breadth_first"] = "depth_first"
    edits_per_step: int | None = 1
    modules: list[str] = field(default_factory=lambda: ["mlp_down@20"])
    optimizer: Literal["adam", "adamw", "sgd"] = "sgd"
    lr: float = 1.0
    weight_decay: float = 0.0
    # Rows of one edit trained together: the prompt and its context-template variants.
    batch_size: int = 16
    max_steps: int = 70
    # As released: EasyEdit's WISE trains on prompt + " " + target with no EOS after it.
    append_eos: bool = False
    # Stop an edit once target NLL + routing margins are below this (the released code: 0.02).
    loss_threshold: float = 0.02
    # Routing.
    act_ratio: float = 0.88
    alpha: float = 5.0
    beta: float = 20.0
    gamma: float = 10.0
    norm_constraint: float | None = 1.0
    # Routing score, as released: each row's mean over all its tokens, one decision a row
    # ('sequence'); 'prefix': each position's mean over the tokens up to it.
    score_mean: Literal["sequence", "prefix"] = "sequence"
    # As released: the distance between the model's hidden activation of the two outputs.
    score_activation: bool = True
    # Knowledge sharding and merging.
    mask_ratio: float = 0.2
    shard_size: int = 500
    merge_every: int = 1000
    density: float = 0.53
    merge_weight: float = 1.0
    # Context templates: per length, that many seeded model samples + ". {prompt}".
    context_template_lengths: list[int] = field(default_factory=lambda: [5, 10])
    context_templates_per_length: int = 5
    # Irrelevant inputs x_i: 'self' (model samples), a .jsonl/.txt corpus, 'hf:...', or an
    # edit dataset (.json) whose locality prompts + answers are used (the paper's choice).
    irrelevant_corpus: str = field(default="self", metadata={"data_path": True})
    irrelevant_pool: int = 100
    irrelevant_per_edit: int = 1
    irrelevant_tokens: int = 32

    def validate(self) -> None:
        super().validate()
        if len(self.modules) != 1:
            raise ValueError(f"modules: WISE keeps a side copy of exactly one module, got {self.modules}")
        if self.pipeline != "depth_first":
            raise ValueError("pipeline: WISE trains one edit at a time (depth_first)")
        rows = 1 + len(self.context_template_lengths) * self.context_templates_per_length
        if self.batch_size < rows:
            raise ValueError(f"batch_size: must hold an edit's {rows} rows (prompt + context "
                             f"templates), got {self.batch_size}")
        if not 0 < self.act_ratio <= 1:
            raise ValueError(f"act_ratio: expected a number in (0, 1], got {self.act_ratio}")
        for key in ("alpha", "beta", "gamma"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: expected a non-negative margin, got {getattr(self, key)}")
        if self.norm_constraint is not None and not self.norm_constraint > 0:
            raise ValueError(f"norm_constraint: expected a positive number or null, got {self.norm_constraint}")
        if not 0 < self.mask_ratio <= 1:
            raise ValueError(f"mask_ratio: expected a fraction in (0, 1], got {self.mask_ratio}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density: expected a fraction in (0, 1], got {self.density}")
        if self.shard_size < 1 or self.merge_every < 1 or self.merge_every % self.shard_size:
            raise ValueError(f"merge_every: expected a positive multiple of shard_size "
                             f"({self.shard_size}), got {self.merge_every}")
        if not self.merge_weight > 0:
            raise ValueError(f"merge_weight: expected a positive number, got {self.merge_weight}")
        if self.context_templates_per_length < 0 or any(n < 1 for n in self.context_template_lengths):
            raise ValueError("context_template_lengths / context_templates_per_length: expected "
                             "positive lengths and a count >= 0")
        for key in ("irrelevant_pool", "irrelevant_per_edit", "irrelevant_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)}")


def mean_positive(x: torch.Tensor) -> torch.Tensor:
    """The mean of the positive entries (0 when there is none): a hinge whose scale does
    not shrink as more of its terms are satisfied."""
    positive = x[x > 0]
    return positive.mean() if positive.numel() else x.new_zeros(())


def ties_merge(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
               density: float) -> torch.Tensor:
    """TIES merging of ``tensors`` into ``base`` (trim, elect sign, disjoint mean)."""
    deltas = []
    for t in tensors:
        delta = t.float() - base.float()
        keep = int(density * delta.numel())
        if keep < 1:
            raise EditbenchError(f"wise: density {density} keeps no entry of a {delta.numel()}-entry matrix")
        if keep < delta.numel():
            flat = delta.abs().flatten()
            cut = flat.kthvalue(flat.numel() - keep + 1).values
            delta = torch.where(delta.abs() >= cut, delta, torch.zeros_like(delta))
        deltas.append(delta)
    w = torch.tensor(list(weights), dtype=torch.float32, device=base.device).view(-1, *[1] * base.dim())
    weighted = torch.stack(deltas) * w
    majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = (weighted.sign() == majority).float()
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1.0
    return (base.float() + (weighted * agree).sum(0) / divisor).to(base.dtype)


def hidden_activation(config: Any) -> nn.Module:
    """The model's MLP activation, from its config (``hidden_act``; Gemma:
    ``hidden_activation``; GPT-2: ``activation_function``)."""
    from transformers.activations import ACT2FN

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_act", "hidden_activation", "activation_function"):
        name = getattr(text, key, None)
        if isinstance(name, str):
            return ACT2FN[name]
    raise EditbenchError("wise: the model's config names no hidden activation (hidden_act); "
                         "set score_activation: false")


class _Stream:
    """Which positions of the current forward are real tokens, and each row's running score
    sums over the forwards before it (a KV-cached prefix); read by the router.

    A forward pre-hook on the base model: a forward that starts at position 0 (no cache)
    starts new rows; a cached decoding step continues them.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        width = ids.shape[1]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= width:
            # A 2-D mask spans the cached prefix and the new tokens.
            start = mask.shape[1] - width
            self.mask = mask[:, start:].float()
        else:
            start = self._cached(kwargs)
            self.mask = torch.ones(ids.shape[0], width)
        if start == 0:
            self.sums = {}

    @staticmethod
    def _cached(kwargs: dict[str, Any]) -> int:
        """Tokens before this forward's, from its cache (named ``cache`` in recent
        transformers, ``past_key_values`` before) or cache positions."""
        position = kwargs.get("cache_position")
        if isinstance(position, torch.Tensor) and position.numel():
            return int(position.reshape(-1)[0])
        past = passed_kv_cache(kwargs)
        return int(past.get_seq_length()) if hasattr(past, "get_seq_length") else 0

    def running_mean(self, name: str, d: torch.Tensor, whole_row: bool) -> torch.Tensor:
        """Per position, the mean of ``d`` ([B, T]) over the row's real tokens up to it, or
        (``whole_row``) over all of them so far, at every position of the row."""
        mask = self.mask.to(d.device) if self.mask is not None else torch.ones_like(d)
        if mask.shape != d.shape:  # a forward that did not pass through the base model
            mask, self.sums = torch.ones_like(d), {}
        zero = d.new_zeros(d.shape[0])
        carried_sum, carried_n = self.sums.get(name, (zero, zero))
        if carried_sum.shape[0] != d.shape[0]:
            carried_sum, carried_n = zero, zero
        sums = torch.cumsum(d * mask, 1) + carried_sum[:, None]
        counts = torch.cumsum(mask, 1) + carried_n[:, None]
        self.sums[name] = (sums[:, -1], counts[:, -1])
        means = sums / counts.clamp(min=1)
        return means[:, -1:].expand_as(means) if whole_row else means


class _Router:
    """The forward hook on the main memory's module: side memory everywhere while an edit
    trains; otherwise each position's output from the memory the routing picks."""

    def __init__(self, editor: WiseEditor) -> None:
        self.editor = editor
        self.training = False
        self.record: dict[str, Any] | None = None  # each position's route and scores (diagnostics)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        ed = self.editor
        a = args[0]
        if self.training:
            return ed.apply(a, ed.side)
        memories = ed.memories()
        if not memories:
            return None
        outs = [ed.apply(a, weight) for _, weight in memories]
        whole_row = ed.config.score_mean == "sequence"
        scores = [ed.stream.running_mean(name, ed.distance(out, output), whole_row)
                  for (name, _), out in zip(memories, outs, strict=True)]
        # The highest score that reaches epsilon picks its memory (index + 1); none: main (0).
        # Later memories win ties: the side memory is last, as the released code prefers it.
        eps = ed.threshold
        best = torch.full(output.shape[:-1], -math.inf, device=output.device)
        route = torch.zeros(output.shape[:-1], dtype=torch.long, device=output.device)
        for i, s in enumerate(scores, start=1):
            s = s.to(output.device)
            take = (s >= eps) & (s >= best)
            route = torch.where(take, i, route)
            best = torch.where(take, s, best)
        if self.record is not None:
            self.record["route"] = ["main", *(name for name, _ in memories)], route.cpu()
            self.record["scores"] = {name: s.cpu() for (name, _), s in zip(memories, scores, strict=True)}
        if not bool((route > 0).any()):
            return None
        out = output
        for i, cand in enumerate(outs, start=1):
            out = torch.where((route == i)[..., None], cand.to(out.dtype), out)
        return out


@register_editor("wise")
class WiseEditor(FinetuneEditor):
    """WISE-Merge on ``config.modules[0]``: side memory + router + shards merged by TIES."""

    config_class = WiseConfig
    config: WiseConfig

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The side memory: a copy of the module's weight, kept outside the model."""
        (name,) = self.module_names
        self.module = self.handle.model.get_submodule(name)
        weight = getattr(self.module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise EditbenchError(f"{self.name}: module {name!r} has no 2-D weight to copy")
        self.main = weight
        self.layout = self.handle.preset.weight_layout
        self.side = nn.Parameter(weight.detach().clone())
        self.side.register_hook(self._mask_gradient)  # the shard's subspace: masked gradients
        self.side.requires_grad_(False)
        self.merged: torch.Tensor | None = None
        self.shards: list[torch.Tensor] = []
        self.min_act = math.inf
        self.edits_done = 0
        self.side_edits = 0
        self._mask: torch.Tensor | None = None
        self._mask_shard = -1
        self._edit_acts: tuple[torch.Tensor, list[int], list[range]] | None = None
        self._irrelevant_acts: tuple[torch.Tensor, list[int]] | None = None
        return {f"{name}.wise_side": self.side}

    def __init__(self, handle, config: WiseConfig) -> None:
        super().__init__(handle, config)
        cfg = self.config
        self.templates = context_templates(handle, cfg.context_template_lengths,
                                           cfg.context_templates_per_length, cfg.seed)
        self.irrelevant = self._irrelevant_texts()
        self.activation = hidden_activation(handle.model.config)
        self.stream = _Stream()
        self.router = _Router(self)
        self._hooks = [handle.model.base_model.register_forward_pre_hook(self.stream, with_kwargs=True),
                       self.module.register_forward_hook(self.router)]

    def detach(self) -> None:
        """Take the side memory and router off the model (which is then the unedited one)."""
        for h in self._hooks:
            h.remove()

    # -- the memories ---------------------------------------------------------------------

    def apply(self, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The module's output with ``weight`` in place of its own."""
        w = weight.to(a.dtype)
        out = a @ w if self.layout == "in_out" else nn.functional.linear(a, w)
        bias = getattr(self.module, "bias", None)
        return out if bias is None else out + bias.to(out.dtype)

    @property
    def threshold(self) -> float:
        """epsilon: the lowest activation of any edit, times act_ratio (inf before the first)."""
        return self.config.act_ratio * self.min_act

    def memories(self) -> list[tuple[str, torch.Tensor]]:
        """The memories the router chooses among besides the main one: the merged memory,
        the shards saved since the last merge, the shard in training (when it holds edits)."""
        found = [] if self.merged is None else [("merged", self.merged)]
        found += [(f"shard{i}", shard) for i, shard in enumerate(self.shards)]
        return found + ([("side", self.side)] if self.side_edits else [])

    def distance(self, out: torch.Tensor, main_out: torch.Tensor) -> torch.Tensor:
        """d per position: ``||act(out) - act(main_out)||`` (``score_activation``) or
        ``||out - main_out||``, in float32."""
        out, main_out = out.float(), main_out.float()
        if self.config.score_activation:
            out, main_out = self.activation(out), self.activation(main_out)
        return (out - main_out).norm(dim=-1)

    def _delta_norms(self, acts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """d for each row of ``acts`` ([m, d_in]) between ``weight`` and the main memory."""
        acts = acts.float()
        if self.config.score_activation:
            return self.distance(self.apply(acts, weight.float()), self.apply(acts, self.main.float()))
        diff = weight.float() - self.main.float()
        out = acts @ diff if self.layout == "in_out" else acts @ diff.T
        return out.norm(dim=-1)

    @staticmethod
    def _prefix_means(d: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
        out, start = [], 0
        for n in lengths:
            seg = d[start : start + n]
            out.append(torch.cumsum(seg, 0) / torch.arange(1, n + 1, device=d.device))
            start += n
        return out

    def _scores(self, d: torch.Tensor, lengths: Sequence[int],
                spans: Sequence[range] | None = None) -> torch.Tensor:
        """The scores the margins see: one per row (``sequence``), or (``prefix``) one per
        position, at ``spans`` of each row when given."""
        means = self._prefix_means(d, lengths)
        if self.config.score_mean == "sequence":
            return torch.stack([m[-1] for m in means])
        if spans is None:
            return torch.cat(means)
        return torch.cat([m[span.start : span.stop] for m, span in zip(means, spans, strict=True)])

    def _activation(self) -> float:
        """The trained edit's activation (see the module docstring)."""
        acts, lengths, spans = self._edit_acts
        d = self._delta_norms(acts, self.side)
        if self.config.score_mean == "sequence":
            return float(self._scores(d, lengths).mean())
        bare = self._prefix_means(d[: lengths[0]], lengths[:1])[0]
        return float(bare[spans[0].start : spans[0].stop].min())

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self._mask is None else grad * self._mask.to(grad.dtype)

    def _ensure_mask(self) -> None:
        """The current shard's random subspace, drawn from the seed and the shard's index
        (so a resumed run draws the same one)."""
        shard = self.edits_done // self.config.shard_size
        if shard != self._mask_shard:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + shard)
            mask = torch.rand(self.side.shape, generator=gen) < self.config.mask_ratio
            self._mask, self._mask_shard = mask.to(self.side.device), shard

    # -- what an edit trains on -------------------------------------------------------------

    def _irrelevant_texts(self) -> list[list[int]]:
        cfg, tok = self.config, self.handle.tokenizer
        spec = cfg.irrelevant_corpus
        if spec.endswith(".json"):
            from editbench.data import load_dataset

            if not Path(spec).is_file():
                raise EditbenchError(f"irrelevant_corpus {spec!r}: no such file")
            texts = [f"{loc.prompt} {loc.answer}" for r in load_dataset(spec).requests for loc in r.locality]
        else:
            from editors._locate.stats import resolve_corpus

            corpus = resolve_corpus(spec, cfg.seed)
            texts = []
            for text in corpus.texts(self.handle, cfg.irrelevant_pool * cfg.irrelevant_tokens,
                                     cfg.irrelevant_tokens):
                texts.append(text)
                if len(texts) == cfg.irrelevant_pool:
                    break
        pool = [ids[: cfg.irrelevant_tokens] for ids in (encode_prompt(tok, t) for t in texts[: cfg.irrelevant_pool])]
        pool = [ids for ids in pool if ids]
        if not pool:
            raise EditbenchError(f"irrelevant_corpus {spec!r}: no text to use as irrelevant inputs")
        return pool

    def _read_inputs(self, seqs: list[list[int]]) -> torch.Tensor:
        """The module's input at every position of every sequence: ``[sum of lengths, d_in]``."""
        name = self.module_names[0]
        got = read_positions(self.handle, seqs, [list(range(len(s))) for s in seqs], {name: "input"})
        return got[name].to(self.side.device)

    def regularizer(self) -> torch.Tensor | None:
        """The routing margins of the edit in training (see the module docstring)."""
        if self._edit_acts is None or self._irrelevant_acts is None:
            return None
        cfg = self.config
        acts, lengths, spans = self._edit_acts
        s_in = self._scores(self._delta_norms(acts, self.side), lengths, spans)
        out_acts, out_lengths = self._irrelevant_acts
        s_out = self._scores(self._delta_norms(out_acts, self.side), out_lengths)
        loss = (mean_positive(s_out - cfg.alpha) + mean_positive(cfg.beta - s_in)
                + mean_positive(s_out[:, None] - s_in[None, :] + cfg.gamma))
        return loss.to(self.handle.input_device)

    regularizer_in_threshold = True

    def after_step(self, step: int) -> None:
        c = self.config.norm_constraint
        if c is not None:
            with torch.no_grad():
                main = self.main.to(self.side.dtype)
                self.side.copy_(torch.clamp(self.side, min=main - c, max=main + c))

    def cache_anchor(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        return list(self.module.parameters())

    # -- editing --------------------------------------------------------------------------

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        infos = []
        # Each request is one inner trainer step; checkpoints stay between runner steps.
        hook, self._boundary_hook = self._boundary_hook, None
        try:
            for r in requests:
                infos.append(self._edit_one(r))
        finally:
            self._boundary_hook = hook
        return EditStats(num_requests=len(requests), info={
            "optimizer_steps": sum(i["optimizer_steps"] for i in infos),
            "mean_final_loss": sum(i["mean_final_loss"] for i in infos) / len(infos),
            "activation": [round(i["activation"], 4) for i in infos],
            "threshold": self.threshold, "edits_done": self.edits_done,
            "merged": self.merged is not None, "shards_pending": len(self.shards),
        })

    def _edit_one(self, request: EditRequest) -> dict[str, Any]:
        cfg = self.config
        self._ensure_mask()
        variants = [EditRequest(case_id=f"{request.case_id}#{i}", prompt=t.format(request.prompt),
                                subject=request.subject, target_new=request.target_new)
                    for i, t in enumerate(self.templates)]
        items = list(self._encode(variants))
        seqs = [it.ids for it in items]
        # Target-predicting positions: from the prompt's last token to the one before the end.
        spans = [range(len(it.prompt_ids) - 1, len(it.ids) - 1) for it in items]
        self._edit_acts = (self._read_inputs(seqs), [len(s) for s in seqs], spans)
        pool = self.irrelevant
        chosen = [pool[(self.edits_done * cfg.irrelevant_per_edit + j) % len(pool)]
                  for j in range(cfg.irrelevant_per_edit)]
        self._irrelevant_acts = (self._read_inputs(chosen), [len(s) for s in chosen])
        self.router.training = True
        try:
            info = super().edit(variants).info
            with torch.no_grad():
                activation = self._activation()
        finally:
            self.router.training = False
            self._edit_acts = self._irrelevant_acts = None
        self.min_act = min(self.min_act, activation)
        self.edits_done += 1
        self.side_edits += 1
        if self.edits_done % cfg.shard_size == 0:
            self._save_shard()
        if self.edits_done % cfg.merge_every == 0:
            self._merge()
        return {**info, "activation": activation}

    def _save_shard(self) -> None:
        if self.side_edits:
            self.shards.append(self.side.detach().clone())
        with torch.no_grad():
            self.side.copy_(self.main)
        self.side_edits = 0

    def _merge(self) -> None:
        if not self.shards:
            return
        n, cfg = len(self.shards), self.config
        if self.merged is None:
            self.merged = ties_merge(self.main, self.shards, [cfg.merge_weight / n] * n, cfg.density)
        else:
            self.merged = ties_merge(self.main, [*self.shards, self.merged],
                                     [NEW_SHARDS_WEIGHT / n] * n + [MERGED_WEIGHT], cfg.density)
        self.shards = []

    def finalize(self) -> None:
        """Merge the shard in training and the saved ones once the run has made at least
        ``shard_size`` edits (fewer: the side memory is evaluated as it is)."""
        if self.edits_done >= self.config.shard_size and (self.side_edits or self.shards):
            self._save_shard()
            self._merge()

    # -- diagnostics ----------------------------------------------------------------------

    @torch.no_grad()
    def routes(self, prompts: Sequence[str]) -> tuple[list[str], dict[str, list[float]]]:
        """The memory each prompt's last token reads, and its scores there (left-padded
        batch, as generation runs it)."""
        tok = self.handle.tokenizer
        ids, mask = pad_batch([encode_prompt(tok, p) for p in prompts], tok.pad_token_id, left=True)
        self.router.record = {}
        try:
            self.handle.model.base_model(input_ids=ids.to(self.handle.input_device),
                                         attention_mask=mask.to(self.handle.input_device), use_cache=False)
            record = self.router.record
        finally:
            self.router.record = None
        if "route" not in record:
            return ["main"] * len(prompts), {}
        names, route = record["route"]
        return ([names[int(i)] for i in route[:, -1]],
                {k: v[:, -1].tolist() for k, v in record["scores"].items()})

    # -- state ----------------------------------------------------------------------------

    def edited_parameters(self) -> list[str]:
        return []

    def state_dict(self) -> dict[str, Any]:
        """Views of the live memories (a checkpoint writes them at once)."""
        state = super().state_dict()
        state["wise"] = {"side": self.side.detach(), "merged": self.merged, "shards": list(self.shards),
                         "min_act": self.min_act, "edits_done": self.edits_done,
                         "side_edits": self.side_edits}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        wise = state["wise"]
        if tuple(wise["side"].shape) != tuple(self.side.shape):
            raise EditbenchError(f"{self.name}: saved side memory has shape {tuple(wise['side'].shape)}, "
                                 f"module {self.module_names[0]!r} has {tuple(self.side.shape)}")
        device, dtype = self.side.device, self.side.dtype
        with torch.no_grad():
            self.side.copy_(wise["side"].to(device, dtype))
        self.merged = None if wise["merged"] is None else wise["merged"].to(device, dtype)
        self.shards = [s.to(device, dtype) for s in wise["shards"]]
        self.min_act, self.edits_done = float(wise["min_act"]), int(wise["edits_done"])
        self.side_edits = int(wise["side_edits"])
