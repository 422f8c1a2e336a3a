"""LoRA and AdaLoRA editors: the shared fine-tuning trainer on PEFT adapters.

The adapter is injected by PEFT (``LoraModel`` / ``AdaLoraModel``) into the targeted modules
of ``handle.model`` in place, so the trainer's loss, pipelines (``depth_first`` |
``breadth_first``) and mini-batching run unchanged; only the adapter's tensors are given to
the optimizer. LoRA-DF, LoRA-BF and AdaLoRA-BF are configurations of this one class.

- Targets: preset template keys (``attn_q``, ``attn_v``, ``mlp_down``...) at ``layers``
  (``null``: every layer), resolved to exact module names for PEFT.
- Sequential steps keep training the same adapter (a fresh optimizer per step, as the
  trainer does for full weights).
- ``merge: true`` folds the adapter into the base weights in :meth:`finalize` (plain
  model, faster evaluation); ``merge: false`` evaluates through the adapter. Either way the
  evaluated model is the one a user would deploy.
- Dropout: the model stays in eval mode, but the adapters' dropout modules are switched to
  train mode while an edit step trains (``dropout`` is the LoRA recipe's regulariser, as in
  EasyEdit/PEFT training) and back to eval mode afterwards, so evaluation is deterministic.
- AdaLoRA: PEFT's rank allocator runs after every optimizer step
  (``update_and_allocate``) and the orthogonality regulariser of the AdaLoRA paper is added
  to the back-propagated loss. When ``total_step`` / ``tinit`` / ``tfinal`` are not given they
  are planned from the first edit step's schedule (BF: epochs x batches; DF: batches x
  max_steps; tinit 10 %, tfinal 20 % of it); later steps train at the final rank budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from editbench.api import EditbenchError, EditRequest, EditStats
from editbench.registry import register_editor
from editors._finetune import FinetuneConfig, FinetuneEditor

ADAPTER_NAME = "default"


@dataclass
class LoraEditorConfig(FinetuneConfig):
    """Trainer settings plus the adapter's (``modules`` is unused: see ``target_modules``)."""

    pipeline: Literal["depth_first", "breadth_first"] = "breadth_first"
    modules: list[str] = field(default_factory=list)
    adapter: Literal["lora", "adalora"] = "lora"
    target_modules: list[str] = field(default_factory=lambda: ["attn_q", "attn_v"])
    layers: list[int] | None = None
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    merge: bool = False
    lr: float = 5e-3
    # AdaLoRA only (None: derived, see the module docstring).
    init_r: int | None = None
    target_r: int | None = None
    tinit: int | None = None
    tfinal: int | None = None
    total_step: int | None = None
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        """Adapters on a window of layers ending at ``layer``, as wide as configured (4 when
        every layer is adapted); the target modules stay as configured."""
        width = len(self.layers) if self.layers else 4
        return {"layers": list(range(max(0, layer - width + 1), layer + 1))}

    def validate_targets(self) -> None:
        if self.modules:
            raise ValueError(
                "modules: not used by LoRA editors; name the adapted modules with "
                "target_modules (template keys such as attn_q) and layers"
            )
        if not self.target_modules:
            raise ValueError("target_modules: expected at least one template key (e.g. attn_q)")
        for key in self.target_modules:
            if "@" in key or "." in key:
                raise ValueError(
                    f"target_modules: expected template keys such as 'attn_q', got {key!r}; "
                    "choose layers with the 'layers' key"
                )
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"layers: expected null or a non-empty list of layer indices, got {self.layers}")
        if self.r < 1:
            raise ValueError(f"r: expected a positive integer, got {self.r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha: expected a positive number, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.adapter == "adalora":
            init_r, target_r = self.adalora_ranks()
            if not 1 <= target_r <= init_r:
                raise ValueError(f"target_r: expected 1 <= target_r <= init_r ({init_r}), got {target_r}")
            for key in ("tinit", "tfinal"):
                value = getattr(self, key)
                if value is not None and value < 0:
                    raise ValueError(f"{key}: expected a non-negative integer, got {value}")
            if self.total_step is not None and self.total_step < 1:
                raise ValueError(f"total_step: expected a positive integer, got {self.total_step}")
            if self.delta_t < 1:
                raise ValueError(f"delta_t: expected a positive integer, got {self.delta_t}")
            for key in ("beta1", "beta2"):
                if not 0 < getattr(self, key) < 1:
                    raise ValueError(f"{key}: expected a number in (0, 1), got {getattr(self, key)}")
            if self.orth_reg_weight < 0:
                raise ValueError(f"orth_reg_weight: expected >= 0, got {self.orth_reg_weight}")

    def adalora_ranks(self) -> tuple[int, int]:
        """(init_r, target_r): by default the final budget is ``r``, starting 1.5x higher (PEFT's 12 -> 8)."""
        target_r = self.target_r if self.target_r is not None else self.r
        init_r = self.init_r if self.init_r is not None else max(target_r, (3 * target_r) // 2)
        return init_r, target_r


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise EditbenchError(
            "the lora/adalora editors need the PEFT library (a dependency of editbench): pip install 'peft>=0.12'"
        ) from exc
    return peft


@register_editor("lora")
class LoraEditor(FinetuneEditor):
    """The shared trainer on a PEFT LoRA (or AdaLoRA) adapter over preset-named modules."""

    config_class = LoraEditorConfig
    config: LoraEditorConfig

    def __init__(self, handle, config: LoraEditorConfig) -> None:
        self.merged = False
        self.schedule: dict[str, int] | None = None
        super().__init__(handle, config)

    # -- adapter construction -------------------------------------------------------------
    def target_names(self) -> list[str]:
        """Exact module names: every target template at every chosen layer."""
        cfg = self.config
        layers = cfg.layers if cfg.layers is not None else range(self.handle.num_layers)
        for layer in layers:
            if layer >= self.handle.num_layers:
                raise EditbenchError(
                    f"{self.name}: layers: {layer} is out of range; model "
                    f"{self.handle.preset.name!r} has {self.handle.num_layers} layers"
                )
        return [self.handle.module_name(key, layer) for layer in layers for key in cfg.target_modules]

    def _peft_config(self, names: list[str]):
        peft = _peft()
        cfg = self.config
        common = dict(
            target_modules=names,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            bias="none",
            # GPT-2's Conv1D stores [in, out]; PEFT must know to transpose the update.
            fan_in_fan_out=self.handle.preset.weight_layout == "in_out",
        )
        if cfg.adapter == "lora":
            return peft.LoraConfig(r=cfg.r, **common)
        init_r, target_r = cfg.adalora_ranks()
        # A placeholder schedule satisfying PEFT's checks; the real one is planned before
        # the first optimizer step (see _plan_adalora).
        return peft.AdaLoraConfig(
            init_r=init_r, target_r=target_r, tinit=0, tfinal=0,
            total_step=cfg.total_step or 1, deltaT=cfg.delta_t, beta1=cfg.beta1,
            beta2=cfg.beta2, orth_reg_weight=cfg.orth_reg_weight, **common,
        )

    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Inject the adapter (once, in place) and return its trainable tensors."""
        peft = _peft()
        names = self.target_names()
        if len(set(names)) != len(names):
            raise EditbenchError(f"{self.name}: target_modules/layers name a module twice: {names}")
        for name in names:
            self._check_module(name)
        tuner_cls = (
            peft.tuners.lora.LoraModel if self.config.adapter == "lora" else peft.tuners.adalora.AdaLoraModel
        )
        try:
            self.tuner = tuner_cls(self.handle.model, self._peft_config(names), ADAPTER_NAME)
        except ValueError as exc:
            raise EditbenchError(f"{self.name}: PEFT could not adapt {names}: {exc}") from exc
        if sorted(self.tuner.targeted_module_names) != sorted(names):
            raise EditbenchError(
                f"{self.name}: PEFT adapted {sorted(self.tuner.targeted_module_names)}, "
                f"expected exactly {sorted(names)}"
            )
        self.adapted = {name: self.handle.model.get_submodule(name) for name in names}
        # PEFT marks exactly the adapter's trainable tensors (not AdaLoRA's rank counters).
        params = {
            f"{name}.{pname}": p
            for name, module in self.adapted.items()
            for pname, p in module.named_parameters()
            if p.requires_grad
        }
        # New modules start in train mode (active dropout): restore the evaluation state.
        self.handle.model.eval()
        self.handle.model.requires_grad_(False)
        return params

    def _check_module(self, name: str) -> None:
        try:
            self.handle.model.get_submodule(name)
        except AttributeError as exc:
            raise EditbenchError(
                f"{self.name}: model {self.handle.preset.name!r} has no module {name!r}"
            ) from exc

    # -- training hooks -------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        if self.merged:
            raise EditbenchError(
                f"{self.name}: the adapter was merged into the weights by finalize(); "
                "no further edit steps are possible"
            )
        if self.config.adapter == "adalora" and self.schedule is None:
            self._plan_adalora(len(requests))
        dropouts = [module.lora_dropout for module in self.adapted.values()]
        for d in dropouts:
            d.train()
        try:
            return super().edit(requests)
        finally:
            for d in dropouts:
                d.eval()

    def planned_steps(self, num_requests: int) -> int:
        """The most optimizer steps one edit step of ``num_requests`` can take."""
        cfg = self.config
        batches = math.ceil(num_requests / cfg.batch_size)
        return batches * (cfg.epochs if cfg.pipeline == "breadth_first" else cfg.max_steps)

    def _plan_adalora(self, num_requests: int) -> None:
        cfg = self.config
        total = cfg.total_step or self.planned_steps(num_requests)
        tinit = cfg.tinit if cfg.tinit is not None else total // 10
        tfinal = cfg.tfinal if cfg.tfinal is not None else total // 5
        if tinit >= total - tfinal:
            raise EditbenchError(
                f"{self.name}: AdaLoRA schedule needs tinit < total_step - tfinal, got "
                f"tinit={tinit}, tfinal={tfinal}, total_step={total}"
            )
        self._apply_schedule({"total_step": total, "tinit": tinit, "tfinal": tfinal})

    def _apply_schedule(self, schedule: dict[str, int]) -> None:
        peft_config = self.tuner.peft_config[ADAPTER_NAME]
        for key, value in schedule.items():
            setattr(peft_config, key, value)
        self.schedule = dict(schedule)

    def regularizer(self) -> torch.Tensor | None:
        """AdaLoRA's orthogonality penalty on P (lora_B) and Q (lora_A): mean ||.^T. - I||_F."""
        if self.config.adapter != "adalora" or self.config.orth_reg_weight == 0:
            return None
        terms = []
        for module in self.adapted.values():
            a = module.lora_A[ADAPTER_NAME]  # Q: [r, in]
            b = module.lora_B[ADAPTER_NAME]  # P: [out, r]
            for cov in (a @ a.T, b.T @ b):
                eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                terms.append(torch.linalg.matrix_norm(cov - eye).to(self.handle.input_device))
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def after_step(self, step: int) -> None:
        if self.config.adapter == "adalora":
            self.tuner.update_and_allocate(step)

    # -- end of run, state ------------------------------------------------------------------
    def finalize(self) -> None:
        if self.config.merge and not self.merged:
            self.tuner.merge_and_unload()
            self.merged = True
            self.params = {}
            self.adapted = {}

    def edited_parameters(self) -> list[str]:
        """The changed base weights as named in the model now: the targets once merged, else none.

        Before the merge the base weights are untouched (and PEFT has renamed them
        ``<module>.base_layer.weight``); the adapter travels in :meth:`state_dict`, so a
        checkpoint taken mid-run stores no base tensor.
        """
        if not self.merged:
            return []
        return [f"{name}.weight" for name in self.target_names()]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["merged"] = self.merged
        state["adapter"] = {k: p.detach().cpu().clone() for k, p in self.params.items()}
        if self.config.adapter == "adalora":
            alloc = self.tuner.rankallocator
            state["adalora"] = {
                "schedule": self.schedule,
                "rank_pattern": self.tuner.peft_config[ADAPTER_NAME].rank_pattern,
                **{
                    key: {k: v.detach().cpu().clone() for k, v in getattr(alloc, key).items()}
                    for key in ("ipt", "exp_avg_ipt", "exp_avg_unc")
                },
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved adapter into this editor's freshly injected one."""
        super().load_state_dict(state)
        if state["merged"]:
            # The merged weights come back through edited_parameters(); drop the adapter.
            self.tuner.unload()
            self.merged, self.params, self.adapted = True, {}, {}
            return
        saved = state["adapter"]
        if sorted(saved) != sorted(self.params):
            raise EditbenchError(
                f"{self.name}: saved adapter tensors {sorted(saved)[:3]}... do not match this "
                f"editor's {sorted(self.params)[:3]}... (different target_modules/layers/r?)"
            )
        with torch.no_grad():
            for key, p in self.params.items():
                p.copy_(saved[key].to(device=p.device, dtype=p.dtype))
        if self.config.adapter == "adalora" and state.get("adalora"):
            ada = state["adalora"]
            if ada["schedule"] is not None:
                self._apply_schedule(ada["schedule"])
            self.tuner.peft_config[ADAPTER_NAME].rank_pattern = ada["rank_pattern"]
            alloc = self.tuner.rankallocator
            for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                devices = {n: p.device for n, p in self.handle.model.named_parameters()}
                setattr(alloc, key, {k: v.to(devices[k]) for k, v in ada[key].items()})


@dataclass
class AdaLoraEditorConfig(LoraEditorConfig):
    adapter: Literal["lora", "adalora"] = "adalora"

    def validate_targets(self) -> None:
        if self.adapter != "adalora":
            raise ValueError("adapter: the adalora editor trains adapter 'adalora'; use editor lora")
        super().validate_targets()


@register_editor("adalora")
class AdaLoraEditor(LoraEditor):
    """AdaLoRA: LoRA in SVD form whose rank budget PEFT reallocates by importance."""

    config_class = AdaLoraEditorConfig
