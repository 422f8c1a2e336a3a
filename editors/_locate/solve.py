"""Closed-form weight updates, all computed in float64.

Convention: ``W`` is the MLP output matrix as [out, in] (``weight_layout == "out_in"``;
GPT-2's Conv1D stores [in, out] and is transposed on the way in and out), keys are
columns ``K`` [in, n], residuals ``R`` [out, n], and an update ``Delta`` is [out, in].
"""

from __future__ import annotations

import torch
from torch import nn

F64 = torch.float64


def weight_out_in(module: nn.Module, layout: str) -> torch.Tensor:
    """The module's weight viewed as [out, in] (a view, not a copy)."""
    w = module.weight
    return w if layout == "out_in" else w.T


def apply_delta(module: nn.Module, delta: torch.Tensor, layout: str) -> None:
    """``W += Delta`` in the weight's own dtype and device."""
    w = module.weight
    d = delta if layout == "out_in" else delta.T
    with torch.no_grad():
        w.add_(d.to(device=w.device, dtype=w.dtype))


def rome_delta(C: torch.Tensor | None, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rank-one update with (W + Delta) k = W k + r, i.e. W k + r = v* (the optimised value):

    Delta = r (C^-1 k)^T / ((C^-1 k)^T k); ``C=None`` means C = I (ROME without mom2).
    Among all updates that map k to v*, this one changes the outputs of corpus keys least
    (it is minimal in the norm weighted by C).
    """
    dev = k.device
    k64, r64 = k.to(dev, F64), r.to(dev, F64)
    u = k64 if C is None else torch.linalg.solve(C.to(dev, F64), k64)
    return torch.outer(r64, u) / (u @ k64)


def memit_delta(
    K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float, KKt_prev: torch.Tensor | None = None
) -> torch.Tensor:
    """Delta = R K^T (lam C + K_prev K_prev^T + K K^T)^-1.

    The minimiser of ||Delta K - R||^2 + lam tr(Delta C Delta^T) + ||Delta K_prev||^2,
    i.e. new keys map to their residuals while the corpus keys (C) and, in sequential use,
    the keys of all earlier steps (``KKt_prev``) keep their outputs.
    """
    dev = K.device
    K64, R64 = K.to(dev, F64), R.to(dev, F64)
    A = lam * C.to(dev, F64) + K64 @ K64.T
    if KKt_prev is not None:
        A += KKt_prev.to(dev, F64)
    adj = torch.linalg.solve(A, K64)  # [in, n] = A^-1 K (A symmetric)
    return R64 @ adj.T


def nullspace_projector(C: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P = U U^T over the eigenvectors of C with eigenvalue < ``threshold`` (float64)."""
    C64 = C.to(F64)
    C64 = (C64 + C64.T) / 2
    evals, evecs = torch.linalg.eigh(C64)
    U = evecs[:, evals < threshold]
    return U @ U.T, int(U.shape[1])


def nullspace_energy(P: torch.Tensor, C: torch.Tensor) -> float:
    """tr(P C) / tr(C): the share of the preserved keys' second moment inside P's range.

    Why: an absolute eigenvalue threshold that makes a true null space for a 7B model's C
    can, for a smaller model with a flatter spectrum, leave a third of the corpus keys'
    energy in the "null" space, and then the projection protects little.
    """
    C64 = C.to(P.device, F64)  # on P's device: the edited weight's, a GPU on a server
    return float((P.to(F64) * C64).sum() / C64.trace().clamp_min(1e-30))


def alphaedit_delta(
    K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, C_prev: torch.Tensor, l2: float
) -> torch.Tensor:
    """Delta^T = (P (K K^T + C_prev) + l2 I)^-1 P K R^T: the update lies in P's range, so the
    preserved keys (C's large-eigenvalue directions) keep their outputs."""
    dev = K.device
    K64, R64, P64 = K.to(dev, F64), R.to(dev, F64), P.to(dev, F64)
    A = P64 @ (K64 @ K64.T + C_prev.to(dev, F64))
    A += l2 * torch.eye(A.shape[0], dtype=F64, device=dev)
    return torch.linalg.solve(A, P64 @ K64 @ R64.T).T
