"""AlphaEdit: MEMIT's step with every update projected onto the null space of the
preserved keys.

P = U U^T over the eigenvectors of C with eigenvalue < ``nullspace_threshold`` (cached
on disk like C, keyed by C's bytes and the threshold). Per step and layer:
Delta^T = (P (K K^T + C_prev) + L2 I)^-1 P K R^T, then C_prev += K K^T. P and C_prev are
per editor instance (never module globals), live on the weight's device in float32, and
are saved with the editor's state so a run can be resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from editbench.api import EditbenchError
from editbench.registry import register_editor
from editors._locate.batch import MultiLayerConfig, MultiLayerEditor, key_moment
from editors._locate.solve import alphaedit_delta, nullspace_energy, nullspace_projector
from editors._locate.stats import (
    cache_path,
    load_cached,
    save_cached,
    stats_cache_root,
    tensor_sha256,
)

if TYPE_CHECKING:
    from editbench.models import ModelHandle

log = logging.getLogger(__name__)
# Share of C's trace inside the null space above which the projection is reported as weak.
NULLSPACE_ENERGY_WARN = 0.05


@dataclass
class AlphaEditConfig(MultiLayerConfig):
    edits_per_step: int | None = 100
    layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    clamp_norm_factor: float = 0.75
    nullspace_threshold: float = 2e-2
    L2: float = 10.0  # noqa: N815 (the original configs' name)

    def validate(self) -> None:
        super().validate()
        if not self.nullspace_threshold > 0:
            raise ValueError(f"nullspace_threshold: expected a positive number, got {self.nullspace_threshold}")
        if self.L2 < 0:
            raise ValueError(f"L2: expected a number >= 0, got {self.L2}")


def cached_projector(module: str, C: torch.Tensor, threshold: float,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """The null-space projector of ``C``, from the statistics cache when present, else
    computed on ``device`` (the edited weight's: a 7B model's C is 18944^2, whose float64
    eigendecomposition takes minutes on a CPU)."""
    meta = {"version": 1, "kind": "nullspace", "module": module, "mom2_sha256": tensor_sha256(C),
            "threshold": threshold}
    path = cache_path(stats_cache_root(), meta)
    hit = load_cached(path, meta)
    if hit is not None:
        return hit[0], int(hit[1]["rank"])
    P, rank = nullspace_projector(C.to(device), threshold)
    P = P.float()
    save_cached(path, meta, P, {"rank": rank})
    return P, rank


@register_editor("alphaedit")
class AlphaEditEditor(MultiLayerEditor):
    config_class = AlphaEditConfig
    config: AlphaEditConfig

    def __init__(self, handle: ModelHandle, config: AlphaEditConfig) -> None:
        super().__init__(handle, config)
        self.P: dict[int, torch.Tensor] = {}
        self.C_prev: dict[int, torch.Tensor] = {}
        self.nullspace_dims: dict[int, int] = {}
        energy: dict[str, float] = {}
        for layer, name in self.module_names.items():
            dev = self.weight(layer).device
            P, rank = cached_projector(name, self.stats[layer], config.nullspace_threshold, dev)
            P = P.to(dev)
            share = energy[str(layer)] = round(nullspace_energy(P, self.stats[layer]), 4)
            if share > NULLSPACE_ENERGY_WARN:
                log.warning(
                    "alphaedit: the null space of layer %d (threshold %g, %d of %d dims) holds %.0f%% "
                    "of the statistics' energy; the projection protects little (lower nullspace_threshold)",
                    layer, config.nullspace_threshold, rank, P.shape[0], 100 * share)
            self.P[layer] = P
            self.nullspace_dims[layer] = rank
            self.C_prev[layer] = torch.zeros_like(self.P[layer])
        self.stats_info = {**self.stats_info,
                           "nullspace_dims": {str(k): v for k, v in self.nullspace_dims.items()},
                           "nullspace_energy": energy}

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        C_prev = self.C_prev[layer] if keep is None else self.C_prev[layer].double() + keep
        return alphaedit_delta(K, R, self.P[layer], C_prev, self.config.L2)

    def record_keys(self, layer: int, K: torch.Tensor) -> None:
        self.C_prev[layer] += key_moment(K)

    def state_dict(self) -> dict[str, Any]:
        return {
            "P": {str(k): v.cpu() for k, v in self.P.items()},
            "C_prev": {str(k): v.cpu() for k, v in self.C_prev.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("P", "C_prev"):
            got = {int(k) for k in state.get(key, {})}
            if got != set(self.config.layers):
                raise EditbenchError(f"alphaedit state: {key} has layers {sorted(got)}, expected {self.config.layers}")
        self.P = {int(k): v.to(self.weight(int(k)).device, torch.float32) for k, v in state["P"].items()}
        self.C_prev = {int(k): v.to(self.weight(int(k)).device, torch.float32) for k, v in state["C_prev"].items()}
