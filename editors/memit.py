"""MEMIT: many requests at once, spread over several layers' MLP output matrices.

Per layer: Delta = R K^T (lambda C + K K^T)^-1 in float64 (lambda = mom2_update_weight),
as the released MEMIT code solves it. ``accumulate_keys: true`` (off by default, as in the
released MEMIT) also puts the keys of all earlier steps into the solve (a running sum of
K K^T per layer, kept on the weight's device and saved with the editor's state), so later
steps keep earlier edits' outputs: the "MEMIT_seq" of AlphaEdit's repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from editbench.api import EditbenchError
from editbench.registry import register_editor
from editors._locate.batch import MultiLayerConfig, MultiLayerEditor
from editors._locate.solve import memit_delta

if TYPE_CHECKING:
    from editbench.models import ModelHandle


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
class MemitEditor(MultiLayerEditor):
    config_class = MemitConfig
    config: MemitConfig

    def __init__(self, handle: ModelHandle, config: MemitConfig) -> None:
        super().__init__(handle, config)
        self.kkt: dict[int, torch.Tensor] = {}

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        prev = self.kkt.get(layer) if self.config.accumulate_keys else None
        if keep is not None:
            prev = keep if prev is None else prev.double() + keep
        return memit_delta(K, R, self.stats[layer], self.config.mom2_update_weight, prev)

    def record_keys(self, layer: int, K: torch.Tensor) -> None:
        if not self.config.accumulate_keys:
            return
        kk = (K.double() @ K.double().T).float()
        self.kkt[layer] = kk if layer not in self.kkt else self.kkt[layer] + kk

    def state_dict(self) -> dict[str, Any]:
        return {"kkt": {str(k): v.cpu() for k, v in self.kkt.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kkt = state.get("kkt", {})
        unknown = {int(k) for k in kkt} - set(self.config.layers)
        if unknown:
            raise EditbenchError(f"memit state: key caches for layers {sorted(unknown)} not in layers {self.config.layers}")
        self.kkt = {int(k): v.to(self.weight(int(k)).device, torch.float32) for k, v in kkt.items()}
