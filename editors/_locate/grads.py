"""Keys and value gradients: one forward and backward over a prompt+target batch.

Gradient-step editors (UltraEdit) read, for each named module, its input (the key) and the
gradient of the batch's target loss with respect to its output (the value gradient) at
chosen positions. The model stays frozen: the module outputs themselves are made
differentiable (the lowest one becomes the graph's leaf), so the backward computes no
weight gradient and runs only from the loss down to the lowest module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editbench.api import EditbenchError
from editbench.tokens import TargetBatch, target_logits
from editors._locate.keys import _first_tensor


@dataclass
class KeysGrads:
    """``keys[name]`` [m, in] and ``grads[name]`` [m, out] (float32, on the module's device)
    at the m chosen positions, and the batch's loss before any edit."""

    keys: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    loss: float


def read_keys_grads(
    handle,
    batch: TargetBatch,
    names: Sequence[str],
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> KeysGrads:
    """Each module's input and d(loss)/d(output) at ``(rows, cols)`` of ``batch``; the loss is
    the mean NLL over all target tokens of the batch (every token weighs the same, as in
    UltraEdit's released code, so a batch's token count scales its gradients)."""
    model = handle.model
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def store(grad: torch.Tensor) -> None:
            grads[name] = grad

        def forward_hook(module, args, kwargs, output):
            inputs[name] = (args[0] if args else next(iter(kwargs.values()))).detach()
            out = _first_tensor(output)
            if not out.requires_grad:
                # Nothing below requires grad: this output starts the graph. A clone of the
                # leaf, so that in-place use of the output further on stays legal.
                out = out.detach().requires_grad_(True).clone()
            out.register_hook(store)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return forward_hook

    handles = [model.get_submodule(name).register_forward_hook(hook(name), with_kwargs=True)
               for name in names]
    device = handle.input_device
    try:
        with torch.enable_grad():
            logits = target_logits(model, batch.to(device)).float()
            loss = nn.functional.cross_entropy(logits, batch.labels.to(logits.device))
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in names if name not in grads]
    if missing:
        raise EditbenchError(f"modules {missing} do not reach the target loss (no gradient at their output)")
    keys, out_grads = {}, {}
    for name in names:
        k, g = inputs[name], grads[name]
        keys[name] = k[rows.to(k.device), cols.to(k.device)].float()
        out_grads[name] = g[rows.to(g.device), cols.to(g.device)].float()
    return KeysGrads(keys, out_grads, float(loss.detach()))
