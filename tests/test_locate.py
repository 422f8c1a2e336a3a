"""Locate-then-edit machinery (ROME / MEMIT / AlphaEdit) on tiny random models: the math."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny, sharpen, spd_matrix
from editbench.api import EditRequest
from editors._locate.keys import context_templates, locate, read_at
from editors._locate.solve import (
    alphaedit_delta,
    apply_delta,
    memit_delta,
    nullspace_energy,
    nullspace_projector,
    rome_delta,
    weight_out_in,
)
from editors._locate.stats import (
    compute_second_moments,
    resolve_corpus,
    second_moments,
)

F64 = torch.float64


# --- key positions ---------------------------------------------------------------------


def test_key_token_rules(tiny_tokenizer):
    text = "The capital of France is"
    ids = tiny_tokenizer(text)["input_ids"]
    last = locate(tiny_tokenizer, text, "France", "last")
    assert last.position == len(ids) - 1
    s_last = locate(tiny_tokenizer, text, "France", "subject_last")
    s_first = locate(tiny_tokenizer, text, "France", "subject_first")
    assert s_first.position <= s_last.position < len(ids) - 1
    # The subject's tokens decode to the subject (the leading space belongs to the token).
    decoded = tiny_tokenizer.decode(ids[s_first.position : s_last.position + 1])
    assert decoded.strip() == "France"
    # A subject at the start and a subject missing from the prompt.
    assert locate(tiny_tokenizer, "Paris is a city", "Paris", "subject_first").position == 0
    missing = locate(tiny_tokenizer, "Paris is a city", "Rome", "subject_last")
    assert not missing.subject_found and missing.position == len(missing.ids) - 1


def test_keys_do_not_depend_on_padding(tiny_handle):
    tok = tiny_handle.tokenizer
    name = tiny_handle.module_name("mlp_down", 2)
    block = tiny_handle.module_name("block", 3)
    items = [locate(tok, p, s, "subject_last") for p, s in [
        ("The Eiffel Tower is located in the city of", "Eiffel Tower"),
        ("Paris is", "Paris"),
        ("Which company made the iPhone? The answer about Apple is", "Apple"),
    ]]
    assert len({len(i.ids) for i in items}) == 3
    together = read_at(tiny_handle, items, {name: "input", block: "output"}, batch_size=3)
    for j, it in enumerate(items):
        alone = read_at(tiny_handle, [it], {name: "input", block: "output"}, batch_size=1)
        for key in (name, block):
            torch.testing.assert_close(together[key][j], alone[key][0], rtol=1e-4, atol=1e-5)


def test_context_templates_are_seeded(tiny_llama):
    a = context_templates(tiny_llama, [5], 3, seed=0)
    b = context_templates(tiny_llama, [5], 3, seed=0)
    c = context_templates(tiny_llama, [5], 3, seed=1)
    assert a == b and a != c
    assert a[0] == "{}" and len(a) == 4 and all(t.endswith(". {}") for t in a[1:])


# --- closed-form updates ---------------------------------------------------------------


def test_rome_update_maps_key_to_value():
    d_in, d_out = 24, 16
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_out, d_in, generator=g, dtype=F64)
    k = torch.randn(d_in, generator=g, dtype=F64)
    r = torch.randn(d_out, generator=g, dtype=F64)
    C = spd_matrix(d_in, 1)
    delta = rome_delta(C, k, r)
    v_star = W @ k + r
    torch.testing.assert_close((W + delta) @ k, v_star)
    assert torch.linalg.matrix_rank(delta) == 1
    # Minimal under C: any other update mapping k to v* changes corpus keys more.
    other = delta + torch.outer(torch.randn(d_out, generator=g, dtype=F64),
                                torch.linalg.svd(k[None])[2][1])  # a direction orthogonal to k
    assert torch.trace(delta @ C @ delta.T) < torch.trace(other @ C @ other.T)
    # C = I: keys orthogonal to k are unchanged, k maps to v*.
    delta_i = rome_delta(None, k, r)
    torch.testing.assert_close((W + delta_i) @ k, v_star)
    basis = torch.linalg.svd(k[None])[2][1:]  # orthonormal complement of k
    assert (delta_i @ basis.T).abs().max() < 1e-12


def test_memit_update_solves_its_least_squares_problem():
    d_in, d_out, n, n_prev, lam = 20, 12, 6, 5, 3.0
    g = torch.Generator().manual_seed(0)
    K = torch.randn(d_in, n, generator=g, dtype=F64)
    R = torch.randn(d_out, n, generator=g, dtype=F64)
    K_prev = torch.randn(d_in, n_prev, generator=g, dtype=F64)
    C = spd_matrix(d_in, 2)
    delta = memit_delta(K, R, C, lam, K_prev @ K_prev.T)
    # Direct solve of min ||D K - R||^2 + lam tr(D C D^T) + ||D K_prev||^2 as a stacked
    # least-squares problem: D [K, sqrt(lam) L, K_prev] = [R, 0, 0] with C = L L^T.
    L = torch.linalg.cholesky(C)
    A = torch.cat([K, lam**0.5 * L, K_prev], dim=1)
    B = torch.cat([R, torch.zeros(d_out, d_in + n_prev, dtype=F64)], dim=1)
    direct = torch.linalg.lstsq(A.T, B.T).solution.T
    torch.testing.assert_close(delta, direct, rtol=1e-8, atol=1e-10)
    # Without earlier keys the problem (and the answer) differs.
    assert not torch.allclose(memit_delta(K, R, C, lam), delta)


def test_nullspace_energy_is_the_small_eigenvalues_share():
    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))[0]
    evals = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.03, 0.01], dtype=F64)
    C = Q @ torch.diag(evals) @ Q.T
    P, dims = nullspace_projector(C, 0.05)
    assert dims == 2
    assert nullspace_energy(P, C) == pytest.approx(0.04 / float(evals.sum()), rel=1e-9)
    # A threshold above every eigenvalue makes the "null space" everything.
    assert nullspace_energy(nullspace_projector(C, 10.0)[0], C) == pytest.approx(1.0)


def test_alphaedit_update_leaves_preserved_keys_unchanged():
    d_in, d_out, rank, n = 32, 10, 12, 5
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=F64))[0]
    K0 = basis @ torch.randn(rank, 400, generator=g, dtype=F64)  # preserved keys: a subspace
    C = K0 @ K0.T / K0.shape[1] + 1e-4 * torch.eye(d_in, dtype=F64)  # tiny noise floor
    P, dims = nullspace_projector(C, 1e-2)
    assert dims == d_in - rank
    torch.testing.assert_close(P @ P, P)
    K = torch.randn(d_in, n, generator=g, dtype=F64)
    R = torch.randn(d_out, n, generator=g, dtype=F64)
    C_prev = torch.zeros(d_in, d_in, dtype=F64)
    delta = alphaedit_delta(K, R, P, C_prev, l2=1.0)
    assert delta.norm() > 0.1
    assert (delta @ K0).norm() / (delta.norm() * K0.norm()) < 1e-10
    # MEMIT's update on the same problem does move the preserved keys.
    memit = memit_delta(K, R, C, 1.0)
    assert (memit @ K0).norm() / (memit.norm() * K0.norm()) > 1e-6
    # Earlier steps' keys (C_prev) are also protected: a second step barely moves them.
    delta2 = alphaedit_delta(torch.randn(d_in, n, generator=g, dtype=F64), R, P, K @ K.T * 1e4, 1.0)
    assert (delta2 @ K).norm() / delta2.norm() < (delta @ K).norm() / delta.norm() * 0.1


def test_apply_delta_respects_weight_layout(tiny_handle):
    module = tiny_handle.get_module("mlp_down", 1)
    layout = tiny_handle.preset.weight_layout
    W = weight_out_in(module, layout).detach().clone()
    out_dim, in_dim = W.shape
    delta = torch.randn(out_dim, in_dim, dtype=F64)
    apply_delta(module, delta, layout)
    torch.testing.assert_close(weight_out_in(module, layout), W + delta.float())
    x = torch.randn(3, in_dim)
    bias = module.bias if getattr(module, "bias", None) is not None else 0
    torch.testing.assert_close(module(x), x @ (W + delta.float()).T + bias)


# --- statistics ------------------------------------------------------------------------


def test_one_pass_statistics_equal_per_layer_passes(tiny_handle, corpus_file):
    corpus = resolve_corpus(str(corpus_file))
    names = [tiny_handle.module_name("mlp_down", layer) for layer in (0, 2, 3)]
    together, n = compute_second_moments(tiny_handle, names, corpus, 400, seq_len=32, batch_size=4)
    assert n == 400
    for name in names:
        alone, m = compute_second_moments(tiny_handle, [name], corpus, 400, seq_len=32, batch_size=4)
        assert m == n
        torch.testing.assert_close(together[name], alone[name], rtol=1e-5, atol=1e-6)
    # The reference: E[k k^T] from keys gathered one sequence at a time, no padding.
    name = names[1]
    keys = []
    from editors._locate.keys import capture, forward

    texts = list(corpus.texts(tiny_handle, 400, 32))
    left = 400
    for t in texts:
        ids = tiny_handle.tokenizer(t)["input_ids"][:32][:left]
        if len(ids) < 2:
            continue
        with capture(tiny_handle.model, {name: "input"}) as store:
            forward(tiny_handle.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        keys.append(store[name][0])
        left -= len(ids)
        if left <= 0:
            break
    k = torch.cat(keys).double()
    torch.testing.assert_close(together[name].double(), k.T @ k / k.shape[0], rtol=1e-4, atol=1e-6)


def test_statistics_cache_hits_and_invalidation(tiny_tokenizer, corpus_file, stats_cache):
    handle = make_tiny("llama", tiny_tokenizer, seed=0)
    names = [handle.module_name("mlp_down", 1)]
    corpus = resolve_corpus(str(corpus_file))
    first, info = second_moments(handle, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == names
    again, info = second_moments(handle, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["cached"] == names and info["computed"] == []
    torch.testing.assert_close(first[names[0]], again[names[0]])
    # Token budget and dtype are part of the key.
    _, info = second_moments(handle, names, corpus, 200, seq_len=32, batch_size=4)
    assert info["computed"] == names
    # A changed corpus file: recomputed.
    corpus_file.write_text(corpus_file.read_text() + json.dumps({"text": "A new passage."}) + "\n")
    _, info = second_moments(handle, names, resolve_corpus(str(corpus_file)), 300, 32, 4)
    assert info["computed"] == names
    # Another model behind the same identity string (different weights): recomputed.
    other = make_tiny("llama", tiny_tokenizer, seed=1)
    other.identity = handle.identity
    _, info = second_moments(other, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == names
    # The same model, edited: recomputed too.
    with torch.no_grad():
        handle.get_module("mlp_down", 0).weight.mul_(1.5)
    _, info = second_moments(handle, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == names


def test_corrupt_cache_is_recomputed(tiny_llama, corpus_file, stats_cache):
    names = [tiny_llama.module_name("mlp_down", 1)]
    corpus = resolve_corpus(str(corpus_file))
    first, _ = second_moments(tiny_llama, names, corpus, 300, seq_len=32, batch_size=4)
    (path,) = stats_cache.glob("mom2-*.pt")
    payload = torch.load(path, weights_only=True)
    payload["tensor"][0, 0] += 1.0  # bytes no longer match the stored hash
    torch.save(payload, path)
    again, info = second_moments(tiny_llama, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == names
    torch.testing.assert_close(first[names[0]], again[names[0]])
    path.write_bytes(b"truncated")
    _, info = second_moments(tiny_llama, names, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == names


def test_self_generated_corpus_is_sampled_once(tiny_llama, stats_cache, caplog):
    """A second set of modules reads the cached samples: the same statistics as sampling
    afresh; a corrupt text file is sampled again, never used."""
    first, second = (tiny_llama.module_name("mlp_down", i) for i in (0, 1))
    corpus = resolve_corpus("self", seed=2)
    _, info = second_moments(tiny_llama, [first], corpus, 200, seq_len=16, batch_size=4)
    assert info["self_text"] == "sampled"
    (text_file,) = stats_cache.glob("selftext-*.json")
    cached, info = second_moments(tiny_llama, [second], corpus, 200, seq_len=16, batch_size=4)
    assert info["self_text"] == "cached" and info["computed"] == [second]
    fresh, _ = compute_second_moments(tiny_llama, [second], corpus, 200, seq_len=16, batch_size=4)
    torch.testing.assert_close(cached[second], fresh[second])
    payload = json.loads(text_file.read_text())
    payload["texts"][0] += " tampered"
    text_file.write_text(json.dumps(payload))
    third = tiny_llama.module_name("mlp_down", 2)
    with caplog.at_level("WARNING"):
        again, info = second_moments(tiny_llama, [third], corpus, 200, seq_len=16, batch_size=4)
    assert info["self_text"] == "sampled" and "does not match" in caplog.text
    fresh, _ = compute_second_moments(tiny_llama, [third], corpus, 200, seq_len=16, batch_size=4)
    torch.testing.assert_close(again[third], fresh[third])


def test_self_generated_corpus_is_seeded(tiny_llama):
    a = resolve_corpus("self", seed=3)
    assert a.identity == resolve_corpus("self", seed=3).identity != resolve_corpus("self", 4).identity
    texts = []
    for t in a.texts(tiny_llama, 50, 16):
        texts.append(t)
        if len(texts) == 3:
            break
    again = []
    for t in a.texts(tiny_llama, 50, 16):
        again.append(t)
        if len(again) == 3:
            break
    assert texts == again


# --- editors end to end on tiny models ---------------------------------------------------

REQUESTS = [
    EditRequest("0", "The capital of France is", "France", "Rome"),
    EditRequest("1", "The chemical symbol for gold is", "gold", "Jupiter"),
    EditRequest("2", "Which company made the iPhone? It was", "iPhone", "Microsoft"),
]


def _target_nll(handle, requests) -> float:
    from editbench.tokens import encode_prompt_target
    from editors._finetune import target_loss

    items = [encode_prompt_target(handle.tokenizer, r.prompt, r.target_new, True) for r in requests]
    with torch.no_grad():
        return float(target_loss(handle.model, items, handle.tokenizer.pad_token_id, "cpu"))


def _config(name: str, corpus_file, **extra):
    from editbench.registry import EDITORS

    cls = EDITORS.get(name).config_class
    base = dict(layers=[1, 2] if name != "rome" else [1], context_template_lengths=[4],
                context_templates_per_length=2, v_num_grad_steps=15, v_lr=0.5,
                stats_corpus=str(corpus_file), stats_tokens=300, stats_seq_len=32,
                stats_batch_size=4, clamp_norm_factor=1e4, v_weight_decay=0.0,
                fact_token="last")
    if name == "memit":
        base["mom2_update_weight"] = 1.0
    return cls(**{**base, **extra})


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_editors_lower_target_loss_and_touch_only_their_weights(
    name, tiny_handle, corpus_file, stats_cache
):
    from editbench.registry import EDITORS

    if name == "alphaedit" and tiny_handle.preset.family != "llama":
        pytest.skip("one family is enough for the end-to-end AlphaEdit check")
    cfg = _config(name, corpus_file, **({"nullspace_threshold": 1e-2, "L2": 0.1} if name == "alphaedit" else {}))
    cfg.validate()
    sharpen(tiny_handle)
    editor = EDITORS.get(name)(tiny_handle, cfg)
    before = {k: v.clone() for k, v in tiny_handle.model.state_dict().items()}
    nll0 = _target_nll(tiny_handle, REQUESTS)
    stats = editor.edit(REQUESTS)
    assert stats.num_requests == len(REQUESTS)
    nll1 = _target_nll(tiny_handle, REQUESTS)
    assert nll1 < nll0 - 0.5, (nll0, nll1, stats.info)
    edited = set(editor.edited_parameters())
    after = tiny_handle.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= edited
    json.dumps(stats.info)  # the runner writes it into metrics.json


def test_rome_steps_do_not_change_its_edits(tiny_llama, corpus_file, stats_cache):
    """ROME edits request by request, so splitting a step changes nothing: the run's
    steps-of-10 cell for ROME is its one-step cell (weights equal bit for bit)."""
    from editors.rome import RomeEditor

    initial = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    sharpen(tiny_llama)
    sharpened = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    RomeEditor(tiny_llama, _config("rome", corpus_file)).edit(REQUESTS)
    one_step = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    tiny_llama.model.load_state_dict(sharpened)
    editor = RomeEditor(tiny_llama, _config("rome", corpus_file))
    editor.edit(REQUESTS[:1])
    editor.edit(REQUESTS[1:])
    after = tiny_llama.model.state_dict()
    assert any(not torch.equal(one_step[k], sharpened[k]) for k in one_step)
    assert all(torch.equal(one_step[k], after[k]) for k in one_step)
    tiny_llama.model.load_state_dict(initial)


def test_sequential_state_roundtrip(tiny_llama, corpus_file, stats_cache):
    from editors.alphaedit import AlphaEditEditor
    from editors.memit import MemitEditor

    for cls, name in ((MemitEditor, "memit"), (AlphaEditEditor, "alphaedit")):
        extra = {"accumulate_keys": True} if name == "memit" else {}
        editor = cls(tiny_llama, _config(name, corpus_file, **extra))
        editor.edit(REQUESTS[:2])
        state = editor.state_dict()
        fresh = cls(tiny_llama, _config(name, corpus_file, **extra))
        fresh.load_state_dict(state)
        for key, value in state.items():
            for layer, t in value.items():
                torch.testing.assert_close(getattr(fresh, key if key != "kkt" else "kkt")[int(layer)], t)
        assert any(t.abs().sum() > 0 for t in state["kkt" if name == "memit" else "C_prev"].values())


def test_memit_step_fits_its_targets(tiny_llama, corpus_file, stats_cache):
    """After a MEMIT step the last edited layer's output moved to z for every request."""
    from editors.memit import MemitEditor

    # Bare prompt only: the solve fits the keys it is given, and with context templates
    # those are averages over templates, not the bare prompt's key measured below.
    cfg = _config("memit", corpus_file, mom2_update_weight=1e-3, v_num_grad_steps=5,
                  context_templates_per_length=0)
    editor = MemitEditor(tiny_llama, cfg)
    block = tiny_llama.module_name("block", cfg.layers[-1])
    tg = editor.targets(REQUESTS, block)
    z = tg.h_bare + tg.delta
    # Re-run the step's solve path with those same targets.
    editor.targets = lambda requests, module: tg  # type: ignore[method-assign]
    editor.edit(REQUESTS)
    now = editor.mean_keys(REQUESTS, extra={block: "output"})[block]
    # With a tiny lambda the residual is fitted almost exactly (3 keys, 64-dim keys).
    assert (now - z).norm() / tg.delta.norm() < 0.01


@pytest.mark.parametrize("name", ["memit", "alphaedit"])
def test_context_keys_keep_their_outputs(name, tiny_llama, corpus_file, stats_cache):
    """With ``context_key_weight`` the update leaves the MLP output at the edit texts' other
    positions (prompt and target tokens) in place; without it, it moves them."""
    from editbench.registry import EDITORS

    # AlphaEdit: a threshold above every eigenvalue (P = I), since the tiny model's null
    # space at 1e-2 has 2 of 64 dimensions, too few to leave room for the edit and the keys.
    extra = {"nullspace_threshold": 1e9, "L2": 0.1} if name == "alphaedit" else {}
    sharpen(tiny_llama)
    layer = _config(name, corpus_file).layers[0]
    cls = EDITORS.get(name)
    ratios = {}
    for weight in (0.0, 1e4):
        editor = cls(tiny_llama, _config(name, corpus_file, context_key_weight=weight, **extra))
        restore = tiny_llama.snapshot(editor.edited_parameters())
        Kc = editor.context_keys(editor.context_positions(REQUESTS), layer).double()  # the first edited layer: keys fixed
        assert Kc.shape[0] > 3 * len(REQUESTS)
        W0 = editor.weight(layer).detach().double().clone()
        editor.edit(REQUESTS)
        dW = editor.weight(layer).detach().double() - W0
        ratios[weight] = float((dW @ Kc.T).norm() / (dW.norm() * Kc.norm()))
        restore()
    assert ratios[1e4] < 1e-3 < ratios[0.0], ratios
