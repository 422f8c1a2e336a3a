"""GRACE: a discrete key-value codebook at one module; the base weights never change.

Hartvigsen et al., "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value
Adaptors" (NeurIPS 2023). The codebook sits at ``module`` (default: one layer's MLP output
matrix, the module EasyEdit and the released code wrap). Each entry holds a key (the
module's input at the last prompt token of an edit), a value (a vector that replaces the
module's output), a deferral radius and a label (the edit's target text).

Lookup: at every position of every forward the module's input is a query. When the nearest
key lies within that key's radius (Euclidean), the module's output at that position is the
key's value; otherwise the output is left exactly as the model computed it (the hook returns
nothing, so an input outside every radius gives bitwise the unedited model's output).

Codebook update, one request at a time (the paper's Algorithm 1), with ``eps`` the initial
radius and ``d`` the distance from the new key to the nearest existing key ``j``:

- ``d > eps + radius_j``: a new entry with radius ``eps``;
- within reach, same label: no new entry; ``radius_j`` grows to ``d`` (``coverage``), or key
  ``j`` moves halfway towards the new key and ``radius_j = d`` (``moving_average``); entry
  ``j``'s value is trained further;
- within reach, another label: a new entry, and both radii become ``d / 2`` (conflicting
  keys never overlap).

Then the chosen entry's value alone is optimised (Adam, ``lr``, at most ``n_iter`` steps,
stopping once the loss is below ``loss_threshold``) on the target-only loss of
``editors/_finetune.py``, through the same lookup the evaluation uses.

Queries during generation: every position is its own query, and a position's input depends
on its prefix only, so teacher-forced scoring and greedy decoding with a KV cache make the
same decisions. In cached decoding each step's query is the new token's input, as in the
released code (whose decoding steps query their single token); the released code queries
only the prompt's last token in the prefill, this lookup all prompt tokens (an earlier prompt
token within a radius is replaced here, and left alone there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from editbench.api import BaseEditor, EditbenchError, EditorConfig, EditRequest, EditStats
from editbench.registry import register_editor
from editbench.tokens import PromptTarget, TargetTable
from editors._finetune import batch_loss, encode_requests, prefix_cache
from editors._locate.keys import read_positions

Expand = Literal["coverage", "moving_average"]


@dataclass
class GraceConfig(EditorConfig):
    """``module``: a preset template at a layer (``mlp_down@20``) whose forward takes the
    hidden states and returns one tensor."""

    edits_per_step: int | None = 1
    module: str = "mlp_down@20"
    eps: float = 1.0
    eps_expand: Expand = "coverage"
    val_init: Literal["cold", "warm"] = "cold"
    lr: float = 1.0
    n_iter: int = 100
    loss_threshold: float = 1e-2
    append_eos: bool = True
    prefix_cache: bool = True
    prefix_cache_max_mb: float = 8192.0

    tune_lr_key = "lr"
    # How `editbench list editors` describes it (not a setting: GRACE has one way to edit).
    pipeline = "codebook"

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        return {"module": f"{template}@{layer}"}

    def validate(self) -> None:
        super().validate()
        if "@" not in self.module:
            raise ValueError(f"module: expected a template at a layer such as 'mlp_down@20', got {self.module!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps: expected a positive radius, got {self.eps}")
        if not 0 < self.lr <= 1e6:
            raise ValueError(f"lr: expected a positive number of at most 1e6, got {self.lr}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter: expected a positive integer, got {self.n_iter}")
        if self.loss_threshold < 0:
            raise ValueError(f"loss_threshold: expected >= 0, got {self.loss_threshold}")
        if not 0 < self.prefix_cache_max_mb < math.inf:
            raise ValueError(f"prefix_cache_max_mb: expected a positive number, got {self.prefix_cache_max_mb}")


class Codebook:
    """Keys ``[n, d_in]``, values ``[n, d_out]``, radii ``[n]`` (float32) and labels.

    Stored in buffers that grow geometrically, so ``n`` edits copy O(n) floats, not O(n^2).
    """

    def __init__(self, d_in: int, d_out: int, device: torch.device) -> None:
        self._keys = torch.empty(0, d_in, device=device)
        self._values = torch.empty(0, d_out, device=device)
        self._radii = torch.empty(0, device=device)
        self.labels: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[: len(self)]

    @property
    def values(self) -> torch.Tensor:
        return self._values[: len(self)]

    @property
    def radii(self) -> torch.Tensor:
        return self._radii[: len(self)]

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance to the nearest key, its index) per query row: ``[m]`` each."""
        return torch.cdist(queries.float(), self.keys).min(dim=1)

    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(within the nearest key's radius, that key's index) per query row."""
        dist, index = self.nearest(queries)
        return dist <= self.radii[index], index

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: str) -> int:
        n = len(self)
        if n == len(self._radii):  # full: double the buffers
            grow = max(16, n)
            self._keys = torch.cat([self._keys, self._keys.new_zeros(grow, self._keys.shape[1])])
            self._values = torch.cat([self._values, self._values.new_zeros(grow, self._values.shape[1])])
            self._radii = torch.cat([self._radii, self._radii.new_zeros(grow)])
        self._keys[n], self._values[n], self._radii[n] = key.float(), value.float(), radius
        self.labels.append(label)
        return n

    def update(self, key: torch.Tensor, value: torch.Tensor, label: str, eps: float,
               expand: Expand) -> tuple[int, str]:
        """Apply GRACE's rules for an edit with ``key`` and ``label``; returns the index of the
        entry whose value the edit trains and what happened (``new``, ``expand``, ``within``,
        ``split``). ``value`` initialises a new entry."""
        if not len(self):
            return self.add(key, value, eps, label), "new"
        dist_t, index_t = self.nearest(key[None])
        dist, j = float(dist_t[0]), int(index_t[0])
        if dist > eps + float(self.radii[j]):
            return self.add(key, value, eps, label), "new"
        if self.labels[j] != label:
            new = self.add(key, value, dist / 2, label)
            self.radii[j] = dist / 2
            return new, "split"
        if dist <= float(self.radii[j]):
            return j, "within"
        if expand == "moving_average":
            self.keys[j] = (self.keys[j] + key.float()) / 2
        self.radii[j] = dist
        return j, "expand"

    def state_dict(self) -> dict[str, Any]:
        """Views of the live tensors (a checkpoint writes them at once; copying a 10K-entry
        codebook after every step would cost more than the edits)."""
        return {"keys": self.keys.detach(), "values": self.values.detach(),
                "radii": self.radii.detach(), "labels": list(self.labels)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys, values, radii = state["keys"], state["values"], state["radii"]
        if keys.shape[1:] != self._keys.shape[1:] or values.shape[1:] != self._values.shape[1:]:
            raise EditbenchError(
                f"grace: saved codebook has keys {tuple(keys.shape)} / values {tuple(values.shape)}, "
                f"this module takes {self._keys.shape[1]} / {self._values.shape[1]} (another module?)"
            )
        device = self._keys.device
        self._keys, self._values = keys.float().to(device).clone(), values.float().to(device).clone()
        self._radii = radii.float().to(device).clone()
        self.labels = list(state["labels"])


class _Lookup:
    """The forward hook: replace the module's output wherever the lookup hits.

    While an edit trains, entry ``train_index`` reads its value from ``train_value`` (the
    parameter being optimised) so the loss sees exactly the evaluation's lookup.
    """

    def __init__(self, book: Codebook) -> None:
        self.book = book
        self.train_index: int | None = None
        self.train_value: nn.Parameter | None = None
        self.hits = 0  # positions replaced since the counter was last reset (diagnostics)

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not len(self.book):
            return None
        x = args[0]
        hit, index = self.book.lookup(x.reshape(-1, x.shape[-1]).to(self.book.keys.device))
        if not bool(hit.any()):
            return None
        self.hits += int(hit.sum())
        values = self.book.values[index]
        if self.train_index is not None:
            values = torch.where((index == self.train_index)[:, None], self.train_value, values)
        flat = output.reshape(-1, output.shape[-1])
        replaced = torch.where(hit[:, None].to(flat.device), values.to(flat.device, flat.dtype), flat)
        return replaced.reshape(output.shape)


def module_at(handle, spec: str) -> tuple[str, int]:
    """(module name, layer index) of a ``template@layer`` spec, checked against the model."""
    name = handle.resolve_module_name(spec)
    return name, int(spec.partition("@")[2])


@register_editor("grace")
class GraceEditor(BaseEditor):
    """A GRACE codebook at ``config.module`` (forward hook); no model tensor changes."""

    config_class = GraceConfig
    config: GraceConfig

    def __init__(self, handle, config: GraceConfig) -> None:
        super().__init__(handle, config)
        self.module_name, self.layer = module_at(handle, config.module)
        self.module = handle.model.get_submodule(self.module_name)
        d_in, d_out = self._shapes()
        device = next(self.module.parameters()).device
        self.book = Codebook(d_in, d_out, device)
        self.lookup = _Lookup(self.book)
        self.edits_done = 0
        self._cache_notes: set[str] = set()
        self._hook = self.module.register_forward_hook(self.lookup)

    def _shapes(self) -> tuple[int, int]:
        """(input width, output width) of the module, from one probe forward."""
        seen: dict[str, int] = {}

        def probe(module, args, output):
            seen["in"], seen["out"] = args[0].shape[-1], output.shape[-1]

        ids = torch.tensor([[self.handle.tokenizer.eos_token_id]], device=self.handle.input_device)
        handle = self.module.register_forward_hook(probe)
        try:
            with torch.no_grad():
                self.handle.model.base_model(input_ids=ids, use_cache=False)
        finally:
            handle.remove()
        if not seen or not isinstance(seen.get("out"), int):
            raise EditbenchError(f"grace: module {self.module_name!r} did not return one tensor")
        return seen["in"], seen["out"]

    def detach(self) -> None:
        """Take the codebook off the model (which is then the unedited one again)."""
        self._hook.remove()

    # -- editing --------------------------------------------------------------------------

    def key(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """The module's input at the prompt's last token: ``[d_in]`` float32."""
        got = read_positions(self.handle, [list(prompt_ids)], [[len(prompt_ids) - 1]],
                             {self.module_name: "input"})
        return got[self.module_name][0].to(self.book.keys.device)

    def _initial_value(self, key: torch.Tensor) -> torch.Tensor:
        if self.config.val_init == "warm":  # the module's own output at the key
            with torch.no_grad():
                weight = next(self.module.parameters())
                return self.module.forward(key[None].to(weight.dtype))[0].float()
        # Cold: uniform in [0, 1) as the originals, seeded per edit so a resumed run draws alike.
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.edits_done)
        return torch.rand(self.book.values.shape[1], generator=gen).to(self.book.values.device)

    def edit(self, requests: Sequence[EditRequest]) -> EditStats:
        actions: dict[str, int] = {}
        losses, steps = [], 0
        for r in requests:
            (item,) = encode_requests(self.handle, [r], self.config.append_eos)
            key = self.key(item.prompt_ids)
            index, action = self.book.update(key, self._initial_value(key), r.target_new.strip(),
                                             self.config.eps, self.config.eps_expand)
            actions[action] = actions.get(action, 0) + 1
            loss, taken, reached = self._train(index, item, r.case_id)
            if not reached:
                actions["unreached"] = actions.get("unreached", 0) + 1
            losses.append(loss)
            steps += taken
            self.edits_done += 1
        return EditStats(num_requests=len(requests), info={
            "codebook_entries": len(self.book), "actions": actions, "optimizer_steps": steps,
            "mean_final_loss": sum(losses) / len(losses),
        })

    def _train(self, index: int, item: PromptTarget, case_id: str) -> tuple[float, int, bool]:
        """Optimise entry ``index``'s value on the request's target; (last loss, steps, whether
        the request's forward reached the entry). It does not when its query lies outside the
        entry's radius (a radius expanded to exactly the new key's distance, or split to half
        a tiny one, leaves the key on the boundary, where rounding decides). The entry then
        keeps its value and the edit shows as a miss, not as a crash of a long run."""
        cfg, handle = self.config, self.handle
        table = TargetTable.of([item], handle.tokenizer.pad_token_id)
        cache = None
        if cfg.prefix_cache:
            cache, _ = prefix_cache(handle, handle.model, list(self.module.parameters()), table, 1,
                                    cfg.prefix_cache_max_mb, self._cache_notes, self.name)
        value = nn.Parameter(self.book.values[index].clone())
        opt = torch.optim.Adam([value], lr=cfg.lr)
        self.lookup.train_index, self.lookup.train_value = index, value
        loss_value, taken = math.inf, 0
        try:
            for _ in range(cfg.n_iter):
                loss = batch_loss(handle.model, table, torch.arange(1), handle.input_device, cache)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise EditbenchError(f"{self.name}: non-finite loss at request {case_id!r}; lower lr (now {cfg.lr})")
                if loss_value < cfg.loss_threshold:
                    break
                if not loss.requires_grad:
                    return loss_value, taken, False
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                taken += 1
        finally:
            self.lookup.train_index = self.lookup.train_value = None
            with torch.no_grad():
                self.book.values[index] = value.detach()
        return loss_value, taken, True

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"codebook": self.book.state_dict(), "edits_done": self.edits_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.book.load_state_dict(state["codebook"])
        self.edits_done = state["edits_done"]
