"""MEMIT: many requests at once, spread over several layers' MLP output matrices.

Per layer: Delta = R K^T (lambda C + K K^T)^-1 in float64 (lambda = mom2_update_weight),
as the released MEMIT code solves it. ``accumulate_keys: true`` (off by default, as in the
released MEMIT) also puts the keys of all earlier steps into the solve (a running sum of
K K^T per layer, ``editors/_locate/batch.py``'s ``KeyCache``), so later steps keep earlier
edits' outputs: the "MEMIT_seq" of AlphaEdit's repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editbench.registry import register_editor
from editors._locate.batch import KeyCache, MultiLayerConfig, MultiLayerEditor
from editors._locate.solve import memit_delta


@dataclass
class MemitConfig(MultiLayerConfig):
    layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    clamp_norm_factor: float = 0.75
    mom2_update_weight: float = 15000.0
    # True: AlphaEdit's MEMIT_seq (earlier steps' keys in the solve); False: the released MEMIT.
    accumulate_keys: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.mom2_update_weight > 0:
            raise ValueError(f"mom2_update_weight: expected a positive number, got {self.mom2_update_weight}")


@register_editor("memit")
class MemitEditor(KeyCache, MultiLayerEditor):
    config_class = MemitConfig
    config: MemitConfig

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        return memit_delta(K, R, self.stats[layer], self.config.mom2_update_weight,
                           self.earlier_keys(layer, keep))
