"""UltraEdit: lifelong editing by one closed-form ridge solve per turn (Gu et al., TMLR 2026,
"UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in Large Language Models").

A turn is one step of ``edits_per_step`` requests. Its requests are sorted by length
(longest first, as the released loader does) and read ``batch_size`` at a time: one
forward and backward per batch gives, for every edited module and every position that
predicts an answer token, the key k (the module's input) and the value gradient g (the
gradient of the batch's mean target-token NLL with respect to the module's output).
Each batch's features z = [k || g] update a lifelong normaliser (running mean and
variance over every turn so far; one per module shape, shared by the modules of that
shape as in the released code). Then per module, with the updated statistics,

    [k_hat || g_hat] = (z - mu) / (sigma + eps),    v = -lr * |k_hat|^2 * g_hat,

the output change one normalised gradient step would make, and the update solves
min ||Delta K - V||^2 + ridge_lambda ||Delta||^2 over the turn's raw keys K:
Delta = V K^T (K K^T + ridge_lambda I)^-1. Nothing else survives a turn: no key cache, no
covariance, no trained network; the normalisers (count, mean, sum of squared deviations)
are the editor's whole state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from editbench.api import BaseEditor, EditbenchError, EditorConfig, EditRequest, EditStats
from editbench.registry import register_editor
from editbench.tokens import collate_targets
from editors._finetune import chunks, encode_requests
from editors._locate.grads import read_keys_grads
from editors._locate.solve import apply_delta, ridge_delta, weight_out_in

EPS = torch.finfo(torch.float32).eps
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class UltraEditConfig(EditorConfig):
    """Defaults are the released code's (config/editor/ultraedit.yaml, the zsRE loader)."""

    # A turn: the released runs edit 100 requests per turn (dataset.n_edits).
    edits_per_step: int | None = 100
    # Edited linear modules as preset templates (``mlp_down@29``), in the order the
    # normaliser of a shared shape sees their features.
    modules: list[str] = field(default_factory=lambda: ["mlp_down@5"])
    lr: float = 1e-6
    # The released solve adds the identity: lambda 1.
    ridge_lambda: float = 1.0
    # Requests per forward/backward (the released dataset.batch_size); a batch's loss is a
    # mean over its tokens, so this also sets the scale of each gradient.
    batch_size: int = 10
    # answer: the positions that predict the target's tokens (released token: ans);
    # all: every position of prompt + target.
    key_positions: Literal["answer", "all"] = "answer"
    # The released target has no EOS.
    append_eos: bool = False
    # How a batch's variance enters the running sum of squared deviations: released adds
    # n_b * (unbiased variance), i.e. n_b / (n_b - 1) times the batch's own squared
    # deviations; exact adds them as they are (Chan et al.), so the statistics after N
    # batches equal those of one batch of all N.
    variance_update: Literal["released", "exact"] = "released"
    # Precision of the ridge solve (the released code solves in float32).
    solve_dtype: Literal["float32", "float64"] = "float32"

    tune_lr_key = "lr"

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        """A window of consecutive layers ending at ``layer`` with module ``template``, as
        many layers as configured (the released configs edit windows of 2-9 layers)."""
        width = len({m.partition("@")[2] for m in self.modules}) or 1
        return {"modules": [f"{template}@{i}" for i in range(max(0, layer - width + 1), layer + 1)]}

    def validate(self) -> None:
        super().validate()
        if not self.modules:
            raise ValueError("modules: expected at least one module (e.g. 'mlp_down@29')")
        if len(set(self.modules)) != len(self.modules):
            raise ValueError(f"modules: expected distinct modules, got {self.modules}")
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if not 0 < self.ridge_lambda < float("inf"):
            raise ValueError(f"ridge_lambda: expected a positive number, got {self.ridge_lambda}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {self.batch_size}")


class LifelongNormalizer:
    """Running mean and variance of a module shape's features over every turn so far.

    State: ``count`` rows seen, their ``mean`` and ``m2``, the sum of squared deviations
    from the mean (the released code's ``var`` buffer); sigma = sqrt(m2 / (count - 1)).
    Merged batch by batch (Chan et al.'s parallel update).
    """

    def __init__(self, size: int, device: torch.device, exact: bool) -> None:
        self.exact = exact
        self.count = torch.zeros((), dtype=torch.int64)
        self.mean = torch.zeros(size, device=device)
        self.m2 = torch.zeros(size, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of ``x`` [m, size]."""
        x = x.to(self.mean.device, torch.float32)
        m, seen = x.shape[0], int(self.count)
        if m == 0:
            return
        n = seen + m
        batch_mean = x.mean(0)
        if self.exact:
            batch_m2 = (x - batch_mean).pow(2).sum(0)
        elif m > 1:
            batch_m2 = m * x.var(0)
        else:  # one row: no spread (the released unbiased variance of one row is NaN)
            batch_m2 = torch.zeros_like(batch_mean)
        delta = batch_mean - self.mean
        self.mean += delta * (m / n)
        self.m2 += batch_m2 + delta.pow(2) * (seen * m / n)
        self.count = torch.tensor(n, dtype=torch.int64)

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / (int(self.count) - 1 + EPS)).sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device, torch.float32)
        return (x - self.mean) / (self.std + EPS)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count.clone(), "mean": self.mean.cpu().clone(), "m2": self.m2.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        for key in ("count", "mean", "m2"):
            if not isinstance(state.get(key), torch.Tensor):
                raise EditbenchError(f"{where}: expected a tensor {key!r}")
        if state["mean"].shape != self.mean.shape or state["m2"].shape != self.m2.shape:
            raise EditbenchError(f"{where}: statistics of size {tuple(state['mean'].shape)}, "
                                 f"expected {tuple(self.mean.shape)}")
        self.count = state["count"].to(torch.int64).clone()
        self.mean = state["mean"].to(self.mean.device, torch.float32).clone()
        self.m2 = state["m2"].to(self.m2.device, torch.float32).clone()


def shape_key(width_in: int, width_out: int) -> str:
    return f"{width_in}x{width_out}"


@register_editor("ultraedit")
class UltraEditEditor(BaseEditor):
    config_class = UltraEditConfig
    config: UltraEditConfig

    def __init__(self, handle, config: UltraEditConfig) -> None:
        super().__init__(handle, config)
        self.layout = handle.preset.weight_layout
        self.module_names = [handle.resolve_module_name(m) for m in config.modules]
        if len(set(self.module_names)) != len(self.module_names):
            raise EditbenchError(f"ultraedit: modules {config.modules} name the same module twice")
        self.modules = {n: handle.model.get_submodule(n) for n in self.module_names}
        self.shape_of: dict[str, str] = {}
        self.normalizers: dict[str, LifelongNormalizer] = {}
        for name, module in self.modules.items():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                raise EditbenchError(f"ultraedit: module {name!r} has no 2-D weight to edit")
            out, width = weight_out_in(module, self.layout).shape
            key = self.shape_of[name] = shape_key(width, out)
            if key not in self.normalizers:
                self.normalizers[key] = LifelongNormalizer(
                    width + out, weight.device, config.variance_update == "exact")
        self.turns = 0

    def edited_parameters(self) -> list[str]:
        return [f"{n}.weight" for n in self.module_names]

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        cfg = self.config
        if not requests:
            return EditStats(num_requests=0)
        items = list(encode_requests(self.handle, requests, cfg.append_eos))
        order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
        keys: dict[str, list[torch.Tensor]] = {n: [] for n in self.module_names}
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in self.module_names}
        losses = []
        for chunk in chunks(order, cfg.batch_size):
            batch = collate_targets([items[i] for i in chunk], self.handle.tokenizer.pad_token_id)
            if cfg.key_positions == "answer":
                rows, cols = batch.rows, batch.cols
            else:
                rows, cols = batch.attention_mask.nonzero(as_tuple=True)
            got = read_keys_grads(self.handle, batch, self.module_names, rows, cols)
            for name in self.module_names:
                k, g = got.keys[name], got.grads[name]
                self.normalizers[self.shape_of[name]].update(torch.cat([k, g.to(k.device)], -1))
                keys[name].append(k)
                grads[name].append(g)
            losses.append(got.loss * len(chunk))
        per_module = []
        for name in self.module_names:
            K, G = torch.cat(keys[name]), torch.cat(grads[name])
            delta, V = self.solve(name, K, G)
            apply_delta(self.modules[name], delta, self.layout)
            per_module.append({
                "module": name,
                "update_norm": round(float(delta.norm()), 6),
                "value_norm": round(float(V.norm(dim=-1).mean()), 6),
            })
        self.turns += 1
        info = {"turn": self.turns, "keys": int(sum(t.shape[0] for t in keys[self.module_names[0]])),
                "loss_before": round(sum(losses) / len(requests), 5), "modules": per_module}
        return EditStats(num_requests=len(requests), info=info)

    def solve(self, name: str, K: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update [out, in] of module ``name`` for keys K [m, in] and value gradients
        G [m, out], with the normaliser as it is now; also the target values V [m, out]."""
        z = self.normalizers[self.shape_of[name]].normalize(torch.cat([K, G.to(K.device)], -1))
        k_hat, g_hat = z.split([K.shape[1], G.shape[1]], -1)
        V = -self.config.lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
        W = weight_out_in(self.modules[name], self.layout)
        delta = ridge_delta(K.to(W.device).T, V.to(W.device).T, self.config.ridge_lambda,
                            DTYPES[self.config.solve_dtype])
        return delta, V

    def state_dict(self) -> dict[str, Any]:
        return {"turns": self.turns,
                "normalizers": {k: v.state_dict() for k, v in self.normalizers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        found = state.get("normalizers")
        if not isinstance(found, dict) or set(found) != set(self.normalizers):
            got = sorted(found) if isinstance(found, dict) else found
            raise EditbenchError(f"ultraedit state: normalisers for module shapes {got}, expected "
                                 f"{sorted(self.normalizers)} (modules {self.config.modules})")
        for key, norm in self.normalizers.items():
            norm.load_state_dict(found[key], f"ultraedit state: normaliser {key}")
        self.turns = int(state.get("turns", 0))
