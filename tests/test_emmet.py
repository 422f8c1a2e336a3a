"""EMMET: MEMIT's step with the batch's equality constraints (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny, sharpen, spd_matrix
from editbench.api import EditbenchError, EditRequest
from editbench.registry import EDITORS
from editors._locate.solve import emmet_delta, memit_delta, rome_delta

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("stats_cache")
REQUESTS = [
    EditRequest("0", "The capital of France is", "France", "Rome"),
    EditRequest("1", "The chemical symbol for gold is", "gold", "Jupiter"),
    EditRequest("2", "Which company made the iPhone? It was", "iPhone", "Microsoft"),
]


def test_solve_meets_the_equality_constraints_at_least_cost():
    d_in, d_out, n = 24, 10, 6
    g = torch.Generator().manual_seed(0)
    K = torch.randn(d_in, n, generator=g, dtype=F64)
    R = torch.randn(d_out, n, generator=g, dtype=F64)
    C0 = spd_matrix(d_in, 1)
    delta = emmet_delta(K, R, C0)
    torch.testing.assert_close(delta @ K, R, rtol=1e-9, atol=1e-10)
    # Any other update meeting the constraints (delta + N with N K = 0) costs more under C0.
    basis = torch.linalg.svd(K.T)[2][n:]  # rows orthogonal to every key
    other = delta + torch.randn(d_out, d_in - n, generator=g, dtype=F64) @ basis
    torch.testing.assert_close(other @ K, R, rtol=1e-9, atol=1e-9)
    assert torch.trace(delta @ C0 @ delta.T) < torch.trace(other @ C0 @ other.T)
    # One key: ROME's rank-one update; the ridge is not applied to a single key (as released).
    torch.testing.assert_close(emmet_delta(K[:, :1], R[:, :1], C0, ridge=0.1),
                               rome_delta(C0, K[:, 0], R[:, 0]))
    # The ridge regularises K^T C0^-1 K: the constraints then hold only approximately.
    ridged = emmet_delta(K, R, C0, ridge=0.1)
    A = torch.linalg.solve(C0, K)
    torch.testing.assert_close(ridged, R @ torch.linalg.inv(K.T @ A + 0.1 * torch.eye(n, dtype=F64)) @ A.T)
    assert 1e-6 < float((ridged @ K - R).norm() / R.norm()) < 0.5
    # MEMIT's least-squares solve on the same problem does not meet them.
    memit = memit_delta(K, R, C0, 1.0)
    assert float((memit @ K - R).norm() / R.norm()) > 1e-3


def test_memit_without_its_key_cache_is_emmet_with_ridge_one():
    """Woodbury: R K^T (lam C + K K^T)^-1 = R (K^T (lam C)^-1 K + I)^-1 K^T (lam C)^-1. So
    released MEMIT, solved step by step, is EMMET with emmet_lambda = 1: neither keeps an
    earlier step's keys, and the shipped MEMIT files' ``accumulate_keys`` (AlphaEdit's
    MEMIT_seq) is what protects earlier steps, not the least-squares form."""
    d_in, d_out, n, lam = 24, 10, 6, 3.0
    g = torch.Generator().manual_seed(1)
    K = torch.randn(d_in, n, generator=g, dtype=F64)
    R = torch.randn(d_out, n, generator=g, dtype=F64)
    C = spd_matrix(d_in, 2)
    torch.testing.assert_close(memit_delta(K, R, C, lam), emmet_delta(K, R, lam * C, ridge=1.0))
    earlier = torch.randn(d_in, 4, generator=g, dtype=F64)
    cached = memit_delta(K, R, C, lam, KKt_prev=earlier @ earlier.T)
    assert float((cached @ earlier).norm()) < 0.5 * float((emmet_delta(K, R, lam * C, 1.0) @ earlier).norm())


def _emmet(handle, corpus_file, **settings):
    cls = EDITORS.get("emmet")
    base = dict(context_templates_per_length=0, v_num_grad_steps=8, clamp_norm_factor=1e4,
                v_weight_decay=0.0, stats_corpus=str(corpus_file), stats_tokens=300,
                stats_seq_len=32, stats_batch_size=4, emmet_lambda=0.0)
    cfg = cls.config_class(**{**base, **settings})
    cfg.validate()
    return cls(handle, cfg)


@pytest.mark.parametrize("layers", [[2], [1, 2]])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_edit_key_maps_to_its_target(family, layers, tiny_tokenizer, corpus_file):
    """The defining property: after one EMMET step (no ridge) each request's output at its
    key token of the last edited layer is its optimised target z*, exactly."""
    handle = make_tiny(family, tiny_tokenizer)
    sharpen(handle)
    editor = _emmet(handle, corpus_file, layers=layers)
    block = handle.module_name("block", layers[-1])
    tg = editor.targets(REQUESTS, block)
    z = tg.h_bare + tg.delta
    editor.targets = lambda requests, module: tg  # type: ignore[method-assign]
    before = editor.mean_keys(REQUESTS, extra={block: "output"})[block]
    assert (before - z).norm() > 0.1 * z.norm()
    stats = editor.edit(REQUESTS)
    now = editor.mean_keys(REQUESTS, extra={block: "output"})[block]
    torch.testing.assert_close(now, z, rtol=1e-4, atol=1e-4 * float(z.abs().max()))
    assert all(layer["fit"] < 1e-4 for layer in stats.info["layers"])
    assert editor.state_dict() == {"kkt": {}}


def test_config_and_registration(tiny_llama, corpus_file):
    cls = EDITORS.get("emmet").config_class
    for key, value in (("emmet_lambda", -1.0), ("mom2_update_weight", 0.0),
                       ("update_norm_lambda", -0.5)):
        with pytest.raises(ValueError, match=key):
            cls(**{key: value}).validate()
    defaults = cls()
    assert (defaults.key_average, defaults.emmet_lambda, defaults.context_key_weight) == ("grouped", 0.1, 0.0)
    editor = _emmet(tiny_llama, corpus_file, layers=[1])
    editor.load_state_dict({})
    for bad in ({"kkt": {"7": torch.zeros(2, 2)}}, {"C_prev": {}}):
        with pytest.raises(EditbenchError, match="emmet state"):
            editor.load_state_dict(bad)


def test_accumulated_keys_keep_earlier_steps(tiny_llama, corpus_file):
    """As released, a later step moves an earlier step's keys freely; with
    ``accumulate_keys`` (a departure) their running k k^T sum joins C0 and they move far less.
    The sum is the editor's state: a resumed editor carries it on."""
    sharpen(tiny_llama)
    initial = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    moved = {}
    for accumulate in (False, True):
        tiny_llama.model.load_state_dict(initial)
        editor = _emmet(tiny_llama, corpus_file, layers=[2], accumulate_keys=accumulate)
        editor.edit(REQUESTS[:2])
        keys = editor.mean_keys(REQUESTS[:2], layer=2)[editor.module_names[2]].double()  # [n, in]
        W1 = editor.weight(2).detach().double().clone()
        editor.edit(REQUESTS[2:])
        delta = editor.weight(2).detach().double() - W1
        moved[accumulate] = float((delta @ keys.T).norm())  # weight(): [out, in]
        state = editor.state_dict()
        assert bool(state["kkt"]) == accumulate
        if accumulate:
            fresh = _emmet(tiny_llama, corpus_file, layers=[2], accumulate_keys=True)
            fresh.load_state_dict(state)
            torch.testing.assert_close(fresh.kkt[2], editor.kkt[2])
    tiny_llama.model.load_state_dict(initial)
    assert moved[True] < 0.5 * moved[False], moved
