"""ROME: one rank-one update of one MLP output matrix per request.

For each request in turn: k* = the key at the subject's last token averaged over the
context templates, k0 = that key at the bare prompt, delta = the optimised change of that
MLP's output at the bare prompt (see ``editors._locate.targets``), v* = W k0 + delta.

``update_key: bare_prompt`` (ROME's released code, the default): W += delta (C^-1 k*)^T /
((C^-1 k*)^T k0), so the bare prompt's key maps exactly to v*. ``update_key: template_mean``
(the paper's eq. 2): W += (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*), so k* maps to v*. Both
update in the direction C^-1 k*; with no context templates (k* = k0) they are one update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from editbench.api import EditRequest, EditStats
from editbench.registry import register_editor
from editors._locate.base import LocateEditor, target_info
from editors._locate.config import LocateConfig
from editors._locate.solve import apply_delta, rome_delta

if TYPE_CHECKING:
    from editbench.models import ModelHandle


@dataclass
class RomeConfig(LocateConfig):
    edits_per_step: int | None = 1
    layers: list[int] = field(default_factory=lambda: [5])
    context_template_lengths: list[int] = field(default_factory=lambda: [5, 10])
    context_templates_per_length: int = 10
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    # False: C = I (the original configs for LLaMA-3 turn the covariance off).
    mom2_adjustment: bool = True
    # The key the update maps exactly to v*: bare_prompt (the released code) or
    # template_mean (the paper's formula); see the module docstring.
    update_key: Literal["bare_prompt", "template_mean"] = "bare_prompt"

    def validate(self) -> None:
        super().validate()
        if len(self.layers) != 1:
            raise ValueError(f"layers: ROME edits exactly one layer, got {self.layers}")


@register_editor("rome")
class RomeEditor(LocateEditor):
    config_class = RomeConfig
    config: RomeConfig

    def __init__(self, handle: ModelHandle, config: RomeConfig) -> None:
        self.needs_stats = config.mom2_adjustment
        super().__init__(handle, config)
        self.layer = config.layers[0]
        self.edits_done = 0

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        name = self.module_names[self.layer]
        infos = []
        for request in requests:
            tg = self.targets([request], name)
            keys = self.template_keys([request], layer=self.layer)[name][0]  # [templates, in]
            W = self.weight(self.layer)
            k, k0 = self.average_keys(keys[None])[0].to(W.device), keys[0].to(W.device)
            C = self.stats.get(self.layer) if self.config.mom2_adjustment else None
            r = tg.delta[0].to(W.device)
            if self.config.update_key == "bare_prompt":
                delta = rome_delta(C, k, r, k_fit=k0)
            else:  # v* - W k* = (W k0 + delta) - W k*
                delta = rome_delta(C, k, r.double() + W.detach().double() @ (k0 - k).double())
            apply_delta(self.modules[self.layer], delta, self.layout)
            self.edits_done += 1
            infos.append({**target_info(tg), "update_norm": round(float(delta.norm()), 5)})
        info = {
            "v_mean_final_loss": round(sum(i["v_mean_final_loss"] for i in infos) / len(infos), 5),
            "subject_not_found": sum(i["subject_not_found"] for i in infos),
            "mean_update_norm": round(sum(i["update_norm"] for i in infos) / len(infos), 5),
        }
        if self.stats_info and self.edits_done == len(requests):
            info["stats"] = self.stats_info
        return self.stats_out(requests, info)

    def state_dict(self) -> dict:
        return {"edits_done": self.edits_done}

    def load_state_dict(self, state: dict) -> None:
        self.edits_done = int(state.get("edits_done", 0))
