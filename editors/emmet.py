"""EMMET (Gupta, Sajnani & Anumanchipalli 2024, "A Unified Framework for Model Editing"):
MEMIT's step with ROME's equality constraint, for a batch.

The targets z*, the keys K and the spreading of the residual R over the edited layers are
MEMIT's (``editors/_locate/batch.py``); per layer the solve is
Delta = R (K^T C0^-1 K + emmet_lambda I)^-1 K^T C0^-1 with C0 = mom2_update_weight * C +
update_norm_lambda * I, in float64: with emmet_lambda = 0 every edit's key maps exactly to
its residual (the equality constraints) while the corpus keys move least; emmet_lambda > 0
(0.1 in the released configs) regularises an ill-conditioned K^T C0^-1 K for large batches.
The released code solves each batch on its own (no state between steps): a later step
moves earlier edits' keys as freely as any key outside C0. ``accumulate_keys: true`` (a
departure, off by default) adds the earlier steps' keys to C0 (their running sum of k k^T,
as MEMIT's option does), so later steps keep earlier edits' outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editbench.registry import register_editor
from editors._locate.batch import KeyCache, MultiLayerConfig, MultiLayerEditor
from editors._locate.solve import emmet_delta


@dataclass
class EmmetConfig(MultiLayerConfig):
    layers: list[int] = field(default_factory=lambda: [5])
    clamp_norm_factor: float = 0.75
    mom2_update_weight: float = 1.0
    emmet_lambda: float = 0.1
    update_norm_lambda: float = 0.0
    # Not in the released EMMET: earlier steps' keys join C0 (MEMIT's accumulate_keys).
    accumulate_keys: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.mom2_update_weight > 0:
            raise ValueError(f"mom2_update_weight: expected a positive number, got {self.mom2_update_weight}")
        for key in ("emmet_lambda", "update_norm_lambda"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: expected a number >= 0, got {getattr(self, key)}")


@register_editor("emmet")
class EmmetEditor(KeyCache, MultiLayerEditor):
    config_class = EmmetConfig
    config: EmmetConfig

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        C0 = cfg.mom2_update_weight * self.stats[layer].to(K.device, torch.float64)
        if cfg.update_norm_lambda:
            C0 += cfg.update_norm_lambda * torch.eye(C0.shape[0], dtype=C0.dtype, device=C0.device)
        kept = self.earlier_keys(layer, keep)
        if kept is not None:  # earlier steps' and context keys: preserved like the corpus keys
            C0 += kept.to(C0.device, C0.dtype)
        return emmet_delta(K, R, C0, cfg.emmet_lambda)
