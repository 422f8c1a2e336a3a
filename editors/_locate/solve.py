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


def rome_delta(C: torch.Tensor | None, k: torch.Tensor, r: torch.Tensor,
               k_fit: torch.Tensor | None = None) -> torch.Tensor:
    """Rank-one update in the direction C^-1 k that moves the output at ``k_fit`` (default
    ``k``) by exactly ``r``: Delta = r (C^-1 k)^T / ((C^-1 k)^T k_fit); ``C=None`` means C = I
    (ROME without mom2).

    With k_fit = k it is the update of ROME's paper (eq. 2, r = v* - W k*): among all updates
    that map k to W k + r it changes the outputs of corpus keys least (minimal in the norm
    weighted by C). ROME's released code keeps the direction (k the mean key over context
    templates) but fits the key at the bare prompt (k_fit), to which the optimised v* belongs.
    """
    dev = k.device
    k64, r64 = k.to(dev, F64), r.to(dev, F64)
    fit = k64 if k_fit is None else k_fit.to(dev, F64)
    u = k64 if C is None else torch.linalg.solve(C.to(dev, F64), k64)
    return torch.outer(r64, u) / (u @ fit)


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


def emmet_delta(K: torch.Tensor, R: torch.Tensor, C0: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Delta = R (K^T C0^-1 K + ridge I)^-1 K^T C0^-1 (EMMET, Gupta et al. 2024).

    With ridge = 0 the minimiser of tr(Delta C0 Delta^T) subject to Delta K = R: every key
    maps exactly to its residual while the preserved keys (C0) move least; for one key it is
    ROME's rank-one update. ``ridge`` (EMMET's emmet_lambda, added only for a batch of more
    than one key, as released) trades exactness for a better-conditioned K^T C0^-1 K.
    """
    dev = K.device
    K64, R64 = K.to(dev, F64), R.to(dev, F64)
    A = torch.linalg.solve(C0.to(dev, F64), K64)  # [in, n] = C0^-1 K
    D = K64.T @ A  # [n, n]
    if ridge and D.shape[0] > 1:
        D = D + ridge * torch.eye(D.shape[0], dtype=F64, device=dev)
    return R64 @ torch.linalg.solve(D, A.T)


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


def ridge_delta(K: torch.Tensor, R: torch.Tensor, lam: float, dtype: torch.dtype = F64) -> torch.Tensor:
    """Delta = R K^T (K K^T + lam I)^-1 = R (K^T K + lam I)^-1 K^T: the minimiser of
    ||Delta K - R||^2 + lam ||Delta||^2, with no statistics and no earlier keys (UltraEdit).

    Both forms are the same matrix; the one whose system is smaller is solved (n keys
    against the key width), so a turn of a few hundred keys at a 14336-wide module solves
    an n x n system. ``dtype``: the precision of the solve (the module's other solves use
    float64; UltraEdit's released code solves in float32).
    """
    dev = K.device
    K_, R_ = K.to(dev, dtype), R.to(dev, dtype)
    width, n = K_.shape
    if n < width:
        A = K_.T @ K_
        A += lam * torch.eye(n, dtype=dtype, device=dev)
        return torch.linalg.solve(A, R_.T).T @ K_.T  # A symmetric: R A^-1 = (A^-1 R^T)^T
    A = K_ @ K_.T
    A += lam * torch.eye(width, dtype=dtype, device=dev)
    return torch.linalg.solve(A, K_ @ R_.T).T
