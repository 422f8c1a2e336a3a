"""The MEMIT-style step shared by MEMIT and AlphaEdit.

For a step of n requests: optimise z_i = h_L(i) + delta_i at the last edited layer L
(block output, subject's last token, bare prompt); then for each edited layer l in
ascending order: K = the layer's keys (mean over context templates), R = (z - h_L) /
(layers left), an update from the subclass's closed-form solve, applied before the next
layer's keys and h_L are read (so later layers see the earlier layers' edits).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from editbench.api import EditRequest, EditStats
from editors._locate.base import LocateEditor, target_info
from editors._locate.solve import apply_delta


class MultiLayerEditor(LocateEditor):
    @abstractmethod
    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Delta [out, in] (float64) for keys K [in, n] and residuals R [out, n]."""

    @abstractmethod
    def record_keys(self, layer: int, K: torch.Tensor) -> None:
        """Remember this step's final keys at ``layer`` for later steps."""

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        cfg = self.config
        layers = list(cfg.layers)
        z_module = self.handle.module_name("block", layers[-1])
        tg = self.targets(requests, z_module)
        zs = tg.h_bare + tg.delta
        per_layer: list[dict[str, Any]] = []
        for i, layer in enumerate(layers):
            got = self.mean_keys(requests, extra={z_module: "output"}, layer=layer)
            W = self.weight(layer)
            K = got[self.module_names[layer]].to(W.device).T  # [in, n]
            cur = got[z_module].to(zs.device)
            R = ((zs - cur) / (len(layers) - i)).to(W.device).T  # [out, n]
            delta = self.solve(layer, K, R)
            apply_delta(self.modules[layer], delta, self.layout)
            self.record_keys(layer, K)
            per_layer.append({
                "layer": layer,
                "residual_norm": round(float(R.norm(dim=0).mean()), 5),
                "update_norm": round(float(delta.norm()), 5),
                "fit": round(float((delta @ K.double() - R.double()).norm() / R.double().norm().clamp_min(1e-12)), 5),
            })
        info = {**target_info(tg), "layers": per_layer}
        if self.stats_info:
            info["stats"] = self.stats_info
            self.stats_info = {}
        return EditStats(num_requests=len(requests), info=info)
