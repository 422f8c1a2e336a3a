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
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from editbench.api import BaseEditor, EditbenchError, EditorConfig, EditRequest, EditStats
from editbench.progress import bar
from editbench.tokens import (
    PromptTarget,
    check_fits,
    collate_targets,
    encode_prompt_target,
    per_sample_mean,
    target_logits,
)


@dataclass
class FinetuneConfig(EditorConfig):
    """Hyperparameters of the shared trainer (``modules`` use preset templates: ``mlp_down@6``)."""

    pipeline: Literal["depth_first", "breadth_first"] = "breadth_first"
    modules: list[str] = field(default_factory=lambda: ["mlp_down@6"])
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    batch_size: int = 100
    epochs: int = 25
    max_steps: int = 25
    loss_threshold: float = 1e-2
    epoch_stop_threshold: float = 1e-2
    append_eos: bool = True
    bf16_autocast: bool = True

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

    tune_lr_key = "lr"

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        return {"modules": [f"{template}@{layer}"]}

    def validate_targets(self) -> None:
        """What gets trained; the LoRA editor names its targets with other keys."""
        if not self.modules:
            raise ValueError("modules: expected at least one module (e.g. 'mlp_down@6')")


def target_loss(model: nn.Module, items: Sequence[PromptTarget], pad_id: int, device) -> torch.Tensor:
    """Mean over samples of the mean target-token NLL (prompt and padding masked)."""
    batch = collate_targets(items, pad_id).to(device)
    logits = target_logits(model, batch).float()
    nll = nn.functional.cross_entropy(logits, batch.labels.to(logits.device), reduction="none")
    return per_sample_mean(nll, batch.sample_index, len(items)).mean()


def chunks(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


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
        """An extra term added to the loss that is back-propagated (not to the thresholds)."""
        return None

    def after_step(self, step: int) -> None:
        """Called after each optimizer step, gradients still in place; ``step`` counts from 1."""

    def _encode(self, requests: Sequence[EditRequest]) -> list[PromptTarget]:
        tok = self.handle.tokenizer
        out = []
        for r in requests:
            try:
                item = encode_prompt_target(tok, r.prompt, r.target_new, self.config.append_eos)
                check_fits(self.handle.model, [len(item.ids)])
            except (ValueError, EditbenchError) as exc:
                raise EditbenchError(f"request {r.case_id!r}: {exc}") from None
            out.append(item)
        return out

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.config.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        items = self._encode(requests)
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
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if on_gpu and cfg.bf16_autocast
            else nullcontext()
        )
        for p in params:
            p.requires_grad_(True)
        info: dict[str, Any] = {}
        try:
            with autocast:
                if cfg.pipeline == "depth_first":
                    info = self._depth_first(model, items, params, requests)
                else:
                    info = self._breadth_first(model, items, params, requests)
        finally:
            for p, dt in zip(params, dtypes, strict=True):
                p.requires_grad_(False)
                p.grad = None
                if p.dtype != dt:
                    p.data = p.data.to(dt)
        return EditStats(num_requests=len(requests), info=info)

    def _step(self, model, batch_items, params, opt, where: str) -> float:
        loss = target_loss(model, batch_items, self.handle.tokenizer.pad_token_id, self.handle.input_device)
        value = loss.item()
        if not math.isfinite(value):
            raise EditbenchError(
                f"{self.name}: non-finite loss ({value}) at {where}; lower lr (now {self.config.lr})"
            )
        if value >= self.config.loss_threshold:
            opt.zero_grad(set_to_none=True)
            extra = self.regularizer()
            (loss if extra is None else loss + extra).backward()
            opt.step()
            self.steps_taken += 1
            self.after_step(self.steps_taken)
        return value

    def _depth_first(self, model, items, params, requests) -> dict[str, Any]:
        cfg = self.config
        final_losses = []
        steps_before = self.steps_taken
        with bar(f"{self.name} depth-first", len(items), "req") as pbar:
            for start in range(0, len(items), cfg.batch_size):
                batch = items[start : start + cfg.batch_size]
                opt = self._optimizer(params)  # a fresh optimizer per request batch, as in FT-M
                where = f"request {requests[start].case_id!r}"
                for _ in range(cfg.max_steps):
                    loss = self._step(model, batch, params, opt, where)
                    if loss < cfg.loss_threshold:
                        break
                final_losses.append(loss)
                pbar.update(len(batch))
                pbar.set_postfix(loss=f"{loss:.3f}")
        return {
            "optimizer_steps": self.steps_taken - steps_before,
            "mean_final_loss": sum(final_losses) / len(final_losses),
        }

    def _breadth_first(self, model, items, params, requests) -> dict[str, Any]:
        cfg = self.config
        opt = self._optimizer(params)
        order = list(range(len(items)))
        epoch_losses: list[float] = []
        steps_before = self.steps_taken
        n_batches = math.ceil(len(items) / cfg.batch_size)
        with bar(f"{self.name} breadth-first", cfg.epochs * n_batches, "batch") as pbar:
            for epoch in range(cfg.epochs):
                self._rng.shuffle(order)
                losses = []
                for idx in chunks(order, cfg.batch_size):
                    where = f"epoch {epoch}, batch of requests {[requests[i].case_id for i in idx[:3]]}..."
                    losses.append(self._step(model, [items[i] for i in idx], params, opt, where))
                    pbar.update(1)
                epoch_losses.append(sum(losses) / len(losses))
                pbar.set_postfix(epoch=epoch, loss=f"{epoch_losses[-1]:.4f}")
                if epoch_losses[-1] < cfg.epoch_stop_threshold:
                    break
        return {
            "epochs_run": len(epoch_losses),
            "optimizer_steps": self.steps_taken - steps_before,
            "epoch_losses": [round(x, 5) for x in epoch_losses],
        }

    def edited_parameters(self) -> list[str]:
        return list(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate(), "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(state["rng"])
        self.steps_taken = state["steps_taken"]
