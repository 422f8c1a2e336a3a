"""The shared fine-tuning trainer: target-only loss, chosen tensors, DF or BF pipeline.

FT-M, LocFT-BF (and the LoRA editors) are configurations of this one code path:

- ``depth_first``: requests in their given order, ``batch_size`` at a time; each batch gets
  up to ``max_steps`` optimizer steps and moves on once its loss is below
  ``loss_threshold`` (FT-M: batch 1, 25 steps).
- ``breadth_first``: all requests of an edit step form one training set; for ``epochs``
  epochs, shuffle (seeded) and run mini-batches, skipping a step whose batch loss is below
  ``loss_threshold``, and stop once an epoch's mean loss is below ``epoch_stop_threshold``
  (LocFT-BF).

Loss: cross-entropy on the target tokens only (target with a leading space and EOS),
averaged per sample, then over the batch.

Frozen-prefix cache (``prefix_cache``): every layer below the first trained one is frozen,
so its output for a request never changes during a step. The hidden states at the input of
the first trained layer are computed once per step and every optimizer step runs the
model's own forward from there (the lower layers are skipped, the cached states injected),
so losses and weights equal the uncached path's (up to float rounding of other batch
shapes). ``prefix_cache_max_mb`` bounds it; on a GPU it stays on the device when it fits.

Breadth-first steps call :meth:`~editbench.api.BaseEditor.boundary` at every epoch's end;
the runner may checkpoint there, and :meth:`FinetuneEditor.state_dict` then holds what
resuming inside the step needs (optimizer moments, the shuffled order, the epoch, the
epoch losses so far and the shuffling RNG).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from editbench import faults
from editbench.api import BaseEditor, EditbenchError, EditorConfig, EditRequest, EditStats
from editbench.progress import bar
from editbench.tokens import (
    PromptTarget,
    TargetTable,
    check_fits,
    encode_prompt_target,
    per_sample_mean,
    target_logits,
)

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig(EditorConfig):
    """Hyperparameters of the shared trainer (``modules`` use preset templates: ``mlp_down@6``)."""

    pipeline: Literal["depth_first", "breadth_first"] = "breadth_first"
    modules: list[str] = field(default_factory=lambda: ["mlp_down@6"])
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    batch_size: int = 100
    epochs: int = 25
    max_steps: int = 25
    loss_threshold: float = 1e-2
    epoch_stop_threshold: float = 1e-2
    append_eos: bool = True
    bf16_autocast: bool = True
    # Hidden states at the first trained layer's input, computed once per step.
    prefix_cache: bool = True
    prefix_cache_max_mb: float = 8192.0
    # Each batch's sequences back to back in one row instead of padded to the longest
    # (the same batches and losses; checked against padding once per editor).
    packing: bool = True

    def validate(self) -> None:
        super().validate()
        self.validate_targets()
        for key in ("batch_size", "epochs", "max_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        # Adam's first step moves a weight by about lr / (1 - beta1): far above 1e6 it no
        # longer fits a float32 and the optimizer itself fails.
        if not 0 < self.lr <= 1e6:
            raise ValueError(f"lr: expected a positive number of at most 1e6, got {self.lr}")
        if not 0 < self.prefix_cache_max_mb < math.inf:
            raise ValueError(
                f"prefix_cache_max_mb: expected a positive number, got {self.prefix_cache_max_mb}"
            )

    tune_lr_key = "lr"

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        return {"modules": [f"{template}@{layer}"]}

    def validate_targets(self) -> None:
        """What gets trained; the LoRA editor names its targets with other keys."""
        if not self.modules:
            raise ValueError("modules: expected at least one module (e.g. 'mlp_down@6')")


def encode_requests(handle, requests: Sequence[EditRequest], append_eos: bool) -> Iterator[PromptTarget]:
    """Each request's prompt and target ids (see ``editbench.tokens``), checked to fit the
    model's context; a request that does not is named in one line."""
    for r in requests:
        try:
            item = encode_prompt_target(handle.tokenizer, r.prompt, r.target_new, append_eos)
            check_fits(handle.model, [len(item.ids)])
        except (ValueError, EditbenchError) as exc:
            raise EditbenchError(f"request {r.case_id!r}: {exc}") from None
        yield item


def target_loss(model: nn.Module, items: Sequence[PromptTarget], pad_id: int, device) -> torch.Tensor:
    """Mean over samples of the mean target-token NLL (prompt and padding masked)."""
    return batch_loss(model, TargetTable.of(items, pad_id), torch.arange(len(items)), device)


def sample_losses(model: nn.Module, table: TargetTable, index: torch.Tensor, device,
                  cache: PrefixCache | None = None, packed: bool = False) -> torch.Tensor:
    """Each request's mean target-token NLL ([len(index)]), from ``cache`` when given;
    ``packed``: the batch as one row without padding (:meth:`TargetTable.pack`)."""
    batch = table.pack(index) if packed else table.collate(index)
    inject = nullcontext() if cache is None else cache.injected(index, batch.attention_mask)
    batch = batch.to(device)
    with inject:
        logits = target_logits(model, batch).float()
    nll = nn.functional.cross_entropy(logits, batch.labels.to(logits.device), reduction="none")
    return per_sample_mean(nll, batch.sample_index, len(index))


def batch_loss(model: nn.Module, table: TargetTable, index: torch.Tensor, device,
               cache: PrefixCache | None = None, packed: bool = False) -> torch.Tensor:
    """:func:`target_loss` of requests ``index`` of ``table`` (see :func:`sample_losses`)."""
    return sample_losses(model, table, index, device, cache, packed).mean()


# Largest per-request loss difference, relative, that still counts as "packing computes the
# padded batch's losses": float rounding of other matrix shapes is ~1e-6 in float32 and up
# to a few 1e-3 under bfloat16; a forward that let packed sequences see each other, or
# ignored their positions, is off by far more.
PACKING_RTOL = {"float32": 1e-3, "low_precision": 5e-2}
PACKING_CHECK_REQUESTS = 4


def packing_mismatch(model: nn.Module, table: TargetTable, index: torch.Tensor, device,
                     autocast: bool = False) -> str | None:
    """None when the model computes the same losses for ``index`` packed as padded; else why not.

    Why: packing relies on the forward reading sequence boundaries from restarting position
    ids (transformers' mask functions do, for the families in presets/families.yaml); a
    custom model's forward may not, and would then silently train on leaked context.
    ``autocast``: the forward runs under bfloat16 autocast (as is a half-precision model's).
    """
    with torch.no_grad():
        padded = sample_losses(model, table, index, device)
        packed = sample_losses(model, table, index, device, packed=True)
    low = autocast or next(model.parameters()).dtype != torch.float32
    rtol = PACKING_RTOL["low_precision" if low else "float32"]
    worst = float(((packed - padded).abs() / padded.abs().clamp_min(1.0)).max())
    if not worst <= rtol:
        return (f"packed losses differ from padded ones by up to {worst:.3g} (relative, allowed "
                f"{rtol:g}): the forward of {type(model).__name__} does not separate packed sequences")
    return None


def chunks(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# -- the frozen-prefix cache ---------------------------------------------------------------


class _PrefixReached(Exception):
    """Ends a forward at the first trained layer's input: the rest is not needed."""


def first_trained_layer(model: nn.Module, layers_name: str, trainable: Sequence[nn.Parameter]) -> int | str:
    """The index of the first layer holding a trained tensor when everything the forward
    computes before it is frozen and deterministic; else why there is no prefix to cache."""
    layers = model.get_submodule(layers_name)
    ids = {id(p) for p in trainable}
    first = next((i for i, layer in enumerate(layers) if any(id(p) in ids for p in layer.parameters())), None)
    if first is None:
        return "a trained tensor lies outside the decoder layers"
    if first == 0:
        return "the first layer is trained"
    upper = tuple(f"{layers_name}.{i}." for i in range(first, len(layers)))
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in ids and not name.startswith(upper):
            return f"trained tensor {name} is used below layer {first}"
    for name, module in model.named_modules():
        if module.training and not f"{name}.".startswith(upper):
            return f"module {name or 'model'} is in training mode (dropout below layer {first})"
    return first


def _passthrough(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


class PrefixCache:
    """The hidden states at the input of layer ``first`` of every request of one step
    (real positions only, flat ``[tokens, hidden]`` in :class:`TargetTable` order).

    Why: the layers below are frozen, so these states never change during a step; each
    optimizer step then runs the model's own forward (masks, rotary embeddings, Gemma's
    per-layer attention types all as the model computes them) with the lower layers
    replaced by pass-throughs and the cached states handed to layer ``first``.
    """

    def __init__(self, layers: nn.ModuleList, first: int, table: TargetTable, flat: torch.Tensor,
                 device: torch.device) -> None:
        self.layers, self.first, self.table, self.flat, self.device = layers, first, table, flat, device

    @property
    def megabytes(self) -> float:
        return self.flat.numel() * self.flat.element_size() / 2**20

    @classmethod
    def build(cls, model: nn.Module, layers_name: str, first: int, table: TargetTable, chunk: int,
              input_device, max_mb: float, packed: bool = False) -> PrefixCache | str:
        """Run the lower layers once over ``table`` in chunks of ``chunk`` requests (packed,
        or right-padded in chunks of similar length: a request's states do not depend on
        its chunk-mates); returns the cache, or why the model cannot use one (the caller
        trains uncached)."""
        total = int(table.lengths.sum())
        if not total:
            return "no requests"
        layers = model.get_submodule(layers_name)
        target, below = layers[first], layers[first - 1]
        seen: dict[str, Any] = {}

        def before(module, args, kwargs):
            seen["input"] = args[0] if args else kwargs.get("hidden_states")
            raise _PrefixReached

        def after(module, args, output):
            seen["output"] = output

        hooks = [target.register_forward_pre_hook(before, with_kwargs=True),
                 below.register_forward_hook(after)]
        flat: torch.Tensor | None = None
        hidden: Any = None
        by_length = torch.argsort(table.lengths, stable=True)
        try:
            with torch.no_grad():
                for start in range(0, len(table), chunk):
                    index = by_length[start : start + chunk]
                    batch = (table.pack(index) if packed else table.collate(index)).to(input_device)
                    seen.clear()
                    with suppress(_PrefixReached):
                        model.base_model(**batch.model_inputs(), use_cache=False)
                    hidden = seen.get("input")
                    # Pass-throughs are exact only where the forward hands each layer's
                    # output to the next layer as it is.
                    if (not isinstance(hidden, torch.Tensor) or hidden is not seen.get("output")
                            or tuple(hidden.shape[:2]) != tuple(batch.input_ids.shape)):
                        return (f"the forward of {type(model).__name__} does not pass layer "
                                f"{first - 1}'s output to layer {first} as is")
                    if flat is None:
                        mb = total * hidden.shape[-1] * hidden.element_size() / 2**20
                        if mb > max_mb:
                            return (f"it would take {mb:.0f} MB, over prefix_cache_max_mb="
                                    f"{max_mb:g} (raise it to use the cache)")
                        flat = torch.empty(total, hidden.shape[-1], dtype=hidden.dtype,
                                           device=_cache_device(hidden.device, mb))
                    rows = hidden[0] if batch.attention_mask is None else \
                        hidden[batch.attention_mask.bool().to(hidden.device)]
                    flat[table.positions(index).to(flat.device)] = rows.to(flat.device)
        finally:
            for hook in hooks:
                hook.remove()
        return cls(layers, first, table, flat, hidden.device)

    def hidden(self, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``[B, W, hidden]`` states of requests ``index`` padded like ``mask`` (zeros at
        padding, which right padding and the attention mask keep away from real tokens);
        ``[1, tokens, hidden]`` back to back for a packed batch (``mask`` None)."""
        if mask is None:
            return self.flat[self.table.positions(index).to(self.flat.device)][None].to(self.device)
        out = torch.zeros(*mask.shape, self.flat.shape[-1], dtype=self.flat.dtype, device=self.flat.device)
        out[mask.bool().to(self.flat.device)] = self.flat[self.table.positions(index).to(self.flat.device)]
        return out.to(self.device)

    @contextmanager
    def injected(self, index: torch.Tensor, mask: torch.Tensor | None) -> Iterator[None]:
        """Within: a forward over requests ``index`` skips the lower layers."""
        hidden = self.hidden(index, mask)
        lower = list(self.layers[: self.first])
        # An instance-level forward (accelerate's dispatch wrapper) is put back afterwards.
        saved = [layer.__dict__.get("forward") for layer in lower]
        for layer in lower[:-1]:
            layer.__dict__["forward"] = _passthrough
        lower[-1].__dict__["forward"] = _returning(hidden)
        try:
            yield
        finally:
            for layer, forward in zip(lower, saved, strict=True):
                if forward is None:
                    layer.__dict__.pop("forward", None)
                else:
                    layer.__dict__["forward"] = forward


def prefix_cache(handle, model: nn.Module, anchor: Sequence[nn.Parameter], table: TargetTable,
                 chunk: int, max_mb: float, notes: set[str], who: str,
                 packed: bool = False) -> tuple[PrefixCache | None, str]:
    """The frozen-prefix cache below the first layer holding an ``anchor`` tensor, and a note
    for a step's info; None (train uncached) when nothing lies below that layer, when it
    would exceed ``max_mb``, or when the model's forward is one the pass-throughs cannot
    follow. ``notes``: reasons already logged (once per reason, not once per step)."""
    layers_name = handle.preset.templates["layers"]
    first = first_trained_layer(model, layers_name, anchor)
    cache: PrefixCache | str = first if isinstance(first, str) else PrefixCache.build(
        model, layers_name, first, table, chunk, handle.input_device, max_mb, packed)
    if isinstance(cache, str):
        if cache not in notes:
            notes.add(cache)
            # Nothing to cache is normal; a cache that could not be used costs speed.
            level = logging.INFO if isinstance(first, str) else logging.WARNING
            log.log(level, "%s: training without the prefix cache: %s", who, cache)
        return None, f"off: {cache}"
    return cache, f"layer {cache.first}, {cache.megabytes:.1f} MB on {cache.flat.device.type}"


def _returning(hidden: torch.Tensor) -> Callable[..., torch.Tensor]:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden
    return forward


def _cache_device(device: torch.device, mb: float) -> torch.device:
    """The layer's GPU when the cache takes at most half of its free memory (training needs
    the rest), else the CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if mb * 2**20 <= free / 2 else torch.device("cpu")


def _requests_digest(requests: Sequence[EditRequest]) -> str:
    h = hashlib.sha256()
    for r in requests:
        h.update(r.case_id.encode() + b"\0")
    return h.hexdigest()


@dataclass
class StepData:
    """One edit step's requests as the trainer sees them: tokens, and the prefix cache."""

    table: TargetTable
    device: torch.device
    cache: PrefixCache | None = None
    # The step index of the table's first request: a depth-first batch's table holds its
    # own requests only, while indices keep meaning requests of the step.
    offset: int = 0
    packed: bool = False

    def loss(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        return batch_loss(model, self.table, index - self.offset, self.device, self.cache, self.packed)


class FinetuneEditor(BaseEditor):
    """Fine-tunes the tensors named by ``config.modules``; everything else stays frozen."""

    config_class = FinetuneConfig
    config: FinetuneConfig

    def __init__(self, handle, config: FinetuneConfig) -> None:
        super().__init__(handle, config)
        self.module_names = [handle.resolve_module_name(m) for m in config.modules]
        self.params = self._trainable_parameters()
        self._rng = random.Random(config.seed)
        self.steps_taken = 0
        # A breadth-first step's progress: how to build it while the runner may checkpoint
        # at a boundary, and what was loaded from a checkpoint taken there (to resume from).
        self._progress: Callable[[], dict[str, Any]] | None = None
        self._resume: dict[str, Any] | None = None
        self._cache_notes: set[str] = set()
        # Why packing is off for this model ("" when it is on; None until checked).
        self._packing_verdict: str | None = None

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for name in self.module_names:
            module = self.handle.model.get_submodule(name)
            for pname, p in module.named_parameters():
                params[f"{name}.{pname}"] = p
        if not params:
            raise EditbenchError(f"modules {self.module_names} have no parameters to train")
        return params

    # The LoRA editor overrides these hooks to train adapters instead of weights.
    def training_model(self) -> nn.Module:
        return self.handle.model

    def trainable(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def regularizer(self) -> torch.Tensor | None:
        """An extra term added to the loss that is back-propagated (and compared with the
        thresholds where ``regularizer_in_threshold``)."""
        return None

    # True: a step is taken (and a batch counts as trained) until the target loss plus the
    # regularizer is below loss_threshold; WISE's routing margins are part of what it trains.
    regularizer_in_threshold: bool = False

    def after_step(self, step: int) -> None:
        """Called after each optimizer step, gradients still in place; ``step`` counts from 1."""

    def _encode(self, requests: Sequence[EditRequest]) -> Iterator[PromptTarget]:
        return encode_requests(self.handle, requests, self.config.append_eos)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "sgd": torch.optim.SGD}[self.config.optimizer]
        return cls(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        table = TargetTable.of(self._encode(requests), self.handle.tokenizer.pad_token_id)
        resume = self._take_resume(requests)
        cfg = self.config
        device = self.handle.input_device
        model = self.training_model()
        params = self.trainable()
        # On GPUs, the trained tensors get fp32 master weights and the forward runs under
        # bf16 autocast; they are cast back to the model's dtype afterwards, so the
        # evaluated model is the one a user would deploy.
        on_gpu = device.type == "cuda"
        dtypes = [p.dtype for p in params]
        if on_gpu:
            for p in params:
                p.data = p.data.float()
        if resume is not None:
            # The checkpoint's weights went through the model's dtype; the master copies
            # saved with the progress are the ones training continues from.
            with torch.no_grad():
                for p, master in zip(params, resume["master"], strict=True):
                    if master is not None:
                        p.copy_(master.to(p.device))
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if on_gpu and cfg.bf16_autocast
            else nullcontext()
        )
        for p in params:
            p.requires_grad_(True)
        info: dict[str, Any] = {}
        data = StepData(table, device)
        try:
            with autocast:
                data.packed, packing = self._packing(model, table, on_gpu and cfg.bf16_autocast)
                if cfg.pipeline == "depth_first":
                    info = self._depth_first(model, data, params, requests, dtypes, resume)
                else:
                    if cfg.epochs > 1:
                        data.cache, info["prefix_cache"] = self._prefix_cache(
                            model, params, table, data.packed)
                    else:  # each request is forwarded once: a cache would only add a pass
                        info["prefix_cache"] = "off: one epoch"
                    info.update(self._breadth_first(model, data, params, requests, dtypes, resume))
                info["packing"] = packing
        finally:
            data.cache = None
            for p, dt in zip(params, dtypes, strict=True):
                p.requires_grad_(False)
                p.grad = None
                if p.dtype != dt:
                    p.data = p.data.to(dt)
        return EditStats(num_requests=len(requests), info=info)

    def _packing(self, model: nn.Module, table: TargetTable, autocast: bool) -> tuple[bool, str]:
        """Whether this step's batches are packed, and a note for the step's info. The first
        step of two or more requests checks once that the model's packed losses equal its
        padded ones (:func:`packing_mismatch`); where they do not, batches stay padded."""
        cfg = self.config
        if not cfg.packing:
            return False, "off"
        if cfg.batch_size == 1:
            return False, "off: batch size 1 (nothing is padded)"
        if self._packing_verdict is None:
            if len(table) < 2:
                return False, "off: one request"
            if any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules()):
                # Dropout masks are drawn per position of the batch tensor: packed batches
                # would train on other random draws than padded ones (LoRA's lora_dropout).
                self._packing_verdict = "dropout is active (its random masks follow the batch layout)"
                return False, f"off: {self._packing_verdict}"
            # Four requests show whether packed sequences see each other; a whole batch
            # would cost two full forwards of it (a second on smollm2's CPU runs).
            index = torch.arange(min(len(table), cfg.batch_size, PACKING_CHECK_REQUESTS))
            self._packing_verdict = packing_mismatch(
                model, table, index, self.handle.input_device, autocast) or ""
            if self._packing_verdict:
                log.warning("%s: training with padded batches: %s", self.name, self._packing_verdict)
        return (False, f"off: {self._packing_verdict}") if self._packing_verdict else (True, "on")

    def _prefix_cache(self, model: nn.Module, params: list[nn.Parameter],
                      table: TargetTable, packed: bool = False) -> tuple[PrefixCache | None, str]:
        """The step's frozen-prefix cache and a note for the step's info (see
        :func:`prefix_cache`); ``packed``: the cache holds packed rows."""
        cfg = self.config
        if not cfg.prefix_cache:
            return None, "off"
        return prefix_cache(self.handle, model, self.cache_anchor(params), table, cfg.batch_size,
                            cfg.prefix_cache_max_mb, self._cache_notes, self.name, packed)

    def cache_anchor(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """Tensors whose layer the trained ones act in: the trained ones themselves, or for a
        side structure kept outside the model, the parameters of the module it wraps."""
        return params

    def _step(self, model: nn.Module, data: StepData, index: torch.Tensor,
              params: list[nn.Parameter], opt: torch.optim.Optimizer, where: str) -> float:
        loss = data.loss(model, index)
        extra = self.regularizer() if self.regularizer_in_threshold else None
        value = loss.item() + (0.0 if extra is None else extra.item())
        if not math.isfinite(value):
            raise EditbenchError(
                f"{self.name}: non-finite loss ({value}) at {where}; lower lr (now {self.config.lr})"
            )
        if value >= self.config.loss_threshold:
            opt.zero_grad(set_to_none=True)
            if extra is None:
                extra = self.regularizer()
            (loss if extra is None else loss + extra).backward()
            opt.step()
            self.steps_taken += 1
            self.after_step(self.steps_taken)
        return value

    def _depth_first(self, model, data: StepData, params, requests, dtypes,
                     resume: dict[str, Any] | None) -> dict[str, Any]:
        """Each batch trains to its threshold before the next; its frozen prefix is cached
        for that batch alone (it is forwarded up to ``max_steps`` times, the others not yet),
        so the cache's memory does not grow with the step. Every batch's end is a boundary
        (a fresh optimizer per batch: the position and the loss sum are all there is to
        resume from)."""
        cfg = self.config
        if resume is None:
            first, loss_sum, done, steps_before, note = 0, 0.0, 0, self.steps_taken, None
        else:
            first, loss_sum, done = resume["next"], resume["loss_sum"], resume["batches_done"]
            steps_before, note = resume["steps_before"], resume["prefix_cache"]
        with bar(f"{self.name} depth-first", len(requests), "req") as pbar:
            pbar.update(first)
            for start in range(first, len(requests), cfg.batch_size):
                index = torch.arange(start, min(start + cfg.batch_size, len(requests)))
                batch = StepData(data.table.select(index), data.device, offset=start, packed=data.packed)
                if cfg.max_steps > 1:
                    batch.cache, batch_note = self._prefix_cache(model, params, batch.table, data.packed)
                    note = note or batch_note
                opt = self._optimizer(params)  # a fresh optimizer per request batch, as in FT-M
                where = f"request {requests[start].case_id!r}"
                for _ in range(cfg.max_steps):
                    loss = self._step(model, batch, index, params, opt, where)
                    if loss < cfg.loss_threshold:
                        break
                loss_sum, done = loss_sum + loss, done + 1
                faults.point("train-batch")
                pbar.update(len(index))
                pbar.set_postfix(loss=f"{loss:.3f}")
                position = {"next": start + len(index), "loss_sum": loss_sum, "batches_done": done,
                            "prefix_cache": note}
                self._at_boundary(requests, len(index), position["next"] == len(requests),
                                  params, dtypes, steps_before, lambda position=position: position)
        return {
            "optimizer_steps": self.steps_taken - steps_before,
            "mean_final_loss": loss_sum / done,
            "prefix_cache": (f"{note} (first batch; one per batch)" if note and not note.startswith("off")
                             else note or "off: one step per batch"),
        }

    def _at_boundary(self, requests, passes: int, last: bool, params, dtypes, steps_before: int,
                     position: Callable[[], dict[str, Any]]) -> None:
        """A safe point inside the step; what resuming from it needs is built only if the
        runner saves it (:meth:`state_dict`)."""
        def progress() -> dict[str, Any]:
            return {"requests": _requests_digest(requests), "pipeline": self.config.pipeline,
                    "steps_before": steps_before, **position(),
                    "master": [p.detach().cpu().clone() if p.dtype != dt else None
                               for p, dt in zip(params, dtypes, strict=True)]}

        self._progress = None if last else progress
        try:
            self.boundary(passes, last=last)
        finally:
            self._progress = None

    def _breadth_first(self, model, data: StepData, params, requests, dtypes,
                       resume: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.config
        opt = self._optimizer(params)
        if resume is None:
            order = list(range(len(requests)))
            epoch_losses: list[float] = []
            first_epoch, steps_before = 0, self.steps_taken
        else:
            opt.load_state_dict(resume["optimizer"])
            order, epoch_losses = list(resume["order"]), list(resume["epoch_losses"])
            first_epoch, steps_before = resume["epoch"], resume["steps_before"]
        n_batches = math.ceil(len(requests) / cfg.batch_size)
        with bar(f"{self.name} breadth-first", cfg.epochs * n_batches, "batch") as pbar:
            pbar.update(first_epoch * n_batches)
            for epoch in range(first_epoch, cfg.epochs):
                self._rng.shuffle(order)
                losses = []
                for idx in chunks(order, cfg.batch_size):
                    where = f"epoch {epoch}, batch of requests {[requests[i].case_id for i in idx[:3]]}..."
                    losses.append(self._step(model, data, torch.tensor(idx), params, opt, where))
                    pbar.update(1)
                    faults.point("train-batch")
                epoch_losses.append(sum(losses) / len(losses))
                pbar.set_postfix(epoch=epoch, loss=f"{epoch_losses[-1]:.4f}")
                last = epoch + 1 == cfg.epochs or epoch_losses[-1] < cfg.epoch_stop_threshold

                self._at_boundary(requests, len(requests), last, params, dtypes, steps_before,
                                  lambda epoch=epoch: {"epoch": epoch + 1, "order": list(order),
                                                       "epoch_losses": list(epoch_losses),
                                                       "optimizer": opt.state_dict()})
                if last:
                    break
        return {
            "epochs_run": len(epoch_losses),
            "optimizer_steps": self.steps_taken - steps_before,
            "epoch_losses": [round(x, 5) for x in epoch_losses],
        }

    def _take_resume(self, requests: Sequence[EditRequest]) -> dict[str, Any] | None:
        """The loaded in-step progress, checked to belong to this step (used once)."""
        resume, self._resume = self._resume, None
        if resume is not None and (resume["requests"] != _requests_digest(requests)
                                   or resume.get("pipeline", "breadth_first") != self.config.pipeline):
            raise EditbenchError(
                f"{self.name}: the checkpoint was taken inside another edit step than "
                f"requests {requests[0].case_id!r}-{requests[-1].case_id!r}; delete it to restart the edits"
            )
        return resume

    def edited_parameters(self) -> list[str]:
        return list(self.params)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": self._rng.getstate(), "steps_taken": self.steps_taken}
        if self._progress is not None:
            state["in_step"] = self._progress()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.steps_taken = state["steps_taken"]
        self._resume = state.get("in_step")
