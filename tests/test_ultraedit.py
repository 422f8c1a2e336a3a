"""UltraEdit on tiny random models: the ridge solve, the lifelong statistics, the state.

The defining properties: the update is the closed-form ridge solution of the turn's keys and
normalised gradient values (checked against keys and gradients this test reads itself); the
running statistics after N steps equal those of one batch of all N; a checkpointed editor
resumes bit-identically.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import editors.ultraedit as ultraedit_module
from conftest import FACTS, Interrupted, interrupt_edit, make_tiny
from editbench.api import EditbenchError, EditRequest
from editbench.config import build_config
from editbench.registry import EDITORS
from editbench.tokens import encode_prompt_target, pad_batch
from editors._finetune import target_loss
from editors._locate.solve import ridge_delta, weight_out_in
from editors.ultraedit import LifelongNormalizer, UltraEditConfig, UltraEditEditor

REQUESTS = [EditRequest(str(f["case_id"]), f["prompt"], f["subject"], f["target_new"]) for f in FACTS]


def _editor(handle, **overrides) -> UltraEditEditor:
    raw = {"modules": ["mlp_down@1", "mlp_down@2"], "lr": 1e-2, "batch_size": 2, **overrides}
    return UltraEditEditor(handle, build_config(UltraEditConfig, raw, "test"))


# -- the ridge solve ------------------------------------------------------------------------


def test_ridge_solve_on_orthonormal_keys_is_the_shrunk_values():
    """Hand-made: keys e0 and e2 of R^3, lambda 1: Delta e_i = v_i / 2, Delta e1 = 0."""
    K = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # [in 3, n 2]
    R = torch.tensor([[2.0, -4.0], [6.0, 8.0]], dtype=torch.float64)  # [out 2, n 2]
    delta = ridge_delta(K, R, 1.0)
    expected = torch.tensor([[1.0, 0.0, -2.0], [3.0, 0.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(delta, expected, atol=1e-12)


@pytest.mark.parametrize("n", [3, 40])  # fewer keys than the width (n x n system) and more
def test_ridge_solve_equals_the_closed_form(n):
    gen = torch.Generator().manual_seed(n)
    width, out, lam = 16, 5, 0.7
    K = torch.randn(width, n, generator=gen, dtype=torch.float64) * 3
    R = torch.randn(out, n, generator=gen, dtype=torch.float64)
    # The released form, keys as rows: Delta^T = (K^T K + lam I)^-1 K^T V.
    rows, values = K.T.numpy(), R.T.numpy()
    expected = np.linalg.solve(rows.T @ rows + lam * np.eye(width), rows.T @ values).T
    delta = ridge_delta(K, R, lam)
    np.testing.assert_allclose(delta.numpy(), expected, rtol=1e-9, atol=1e-11)
    # The minimiser: the gradient of ||Delta K - R||^2 + lam ||Delta||^2 vanishes there.
    assert float(((delta @ K - R) @ K.T + lam * delta).abs().max()) < 1e-9
    single = ridge_delta(K.float(), R.float(), lam, torch.float32)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.double().numpy(), expected, rtol=1e-3, atol=1e-4)


# -- the lifelong statistics ----------------------------------------------------------------


def _batches(sizes, width=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Each batch with its own offset, so the between-batch term of the merge matters.
    return [torch.randn(m, width, generator=gen) * (1 + i) + 3 * i for i, m in enumerate(sizes)]


def test_running_statistics_after_n_batches_equal_those_of_one_batch():
    batches = _batches([1, 3, 7, 2, 10])
    everything = torch.cat(batches)
    running = LifelongNormalizer(6, torch.device("cpu"), exact=True)
    for b in batches:
        running.update(b)
    assert int(running.count) == len(everything)
    torch.testing.assert_close(running.mean, everything.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(running.std, everything.std(0), rtol=1e-5, atol=1e-5)
    once = LifelongNormalizer(6, torch.device("cpu"), exact=True)
    once.update(everything)
    torch.testing.assert_close(running.m2, once.m2, rtol=1e-5, atol=1e-4)
    x = torch.randn(4, 6)
    torch.testing.assert_close(running.normalize(x), (x - everything.mean(0)) / everything.std(0),
                               rtol=1e-4, atol=1e-4)


def test_released_variance_update_adds_each_batch_variance_once_more():
    """The released merge adds n_b * Var_unbiased(batch) = M2_b + Var_unbiased(batch): the
    paper's recurrence, which exceeds the exact sum of squares by the batches' variances."""
    batches = _batches([4, 3, 9])
    exact = LifelongNormalizer(6, torch.device("cpu"), exact=True)
    released = LifelongNormalizer(6, torch.device("cpu"), exact=False)
    for b in batches:
        exact.update(b)
        released.update(b)
    torch.testing.assert_close(released.mean, exact.mean)
    extra = sum(b.var(0) for b in batches)
    torch.testing.assert_close(released.m2 - exact.m2, extra, rtol=1e-4, atol=1e-4)


def _spy_features(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every feature row [k || g] the editor reads, per module, in reading order."""
    seen: list[dict[str, torch.Tensor]] = []
    real = ultraedit_module.read_keys_grads

    def spy(*args, **kwargs):
        got = real(*args, **kwargs)
        seen.append({n: torch.cat([got.keys[n], got.grads[n]], -1) for n in got.keys})
        return got

    monkeypatch.setattr(ultraedit_module, "read_keys_grads", spy)
    return seen


def test_editor_statistics_after_n_turns_equal_those_of_all_features(tiny_llama, monkeypatch):
    seen = _spy_features(monkeypatch)
    editor = _editor(tiny_llama, variance_update="exact", edits_per_step=2)
    for start in range(0, 6, 2):
        editor.edit(REQUESTS[start : start + 2])
    assert editor.turns == 3 and len(editor.normalizers) == 1  # both down_projs: one shape
    rows = torch.cat([batch[n] for batch in seen for n in batch])
    (norm,) = editor.normalizers.values()
    assert int(norm.count) == len(rows)
    torch.testing.assert_close(norm.mean, rows.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.std, rows.std(0), rtol=1e-3, atol=1e-6)


# -- the update ------------------------------------------------------------------------------


def _independent_features(handle, requests, names, batch_size):
    """Keys (forward hooks) and output gradients (autograd w.r.t. a zero tensor added to each
    output) at the positions predicting the targets, batches as the released loader cuts
    them; the full model's logits, not the editor's reading code."""
    tok, model = handle.tokenizer, handle.model
    items = [encode_prompt_target(tok, r.prompt, r.target_new) for r in requests]
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    feats: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in names}
    for start in range(0, len(order), batch_size):
        chunk = [items[i] for i in order[start : start + batch_size]]
        ids, mask = pad_batch([it.ids for it in chunk], tok.pad_token_id)
        pos = [(b, len(it.prompt_ids) - 1 + j) for b, it in enumerate(chunk) for j in range(len(it.target_ids))]
        rows, cols = torch.tensor([p[0] for p in pos]), torch.tensor([p[1] for p in pos])
        labels = ids[rows, cols + 1]
        zeros = {n: torch.zeros(*ids.shape, weight_out_in(model.get_submodule(n), handle.preset.weight_layout).shape[0],
                                requires_grad=True) for n in names}
        inputs = {}

        def hook(name, inputs=inputs, zeros=zeros):
            def fn(module, args, output):
                inputs[name] = args[0].detach()
                return output + zeros[name]
            return fn

        hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
        try:
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(logits[rows, cols], labels)
                grads = torch.autograd.grad(loss, [zeros[n] for n in names])
        finally:
            for h in hooks:
                h.remove()
        for n, g in zip(names, grads, strict=True):
            feats[n].append((inputs[n][rows, cols], g[rows, cols]))
    return {n: (torch.cat([k for k, _ in f]), torch.cat([g for _, g in f])) for n, f in feats.items()}


def test_update_is_the_ridge_solution_of_the_normalised_gradient_values(tiny_handle):
    """One turn on a fresh editor: Delta = closed form over raw keys K and values
    V = -lr |k_hat|^2 g_hat, normalised with the statistics of this turn's features."""
    names_spec = ["mlp_down@1", "mlp_down@2"]
    editor = _editor(tiny_handle, modules=names_spec, lr=0.05, variance_update="exact",
                     solve_dtype="float64")
    names = editor.module_names
    layout = tiny_handle.preset.weight_layout
    before = {n: weight_out_in(editor.modules[n], layout).detach().clone() for n in names}
    feats = _independent_features(tiny_handle, REQUESTS[:5], names, batch_size=2)
    editor.edit(REQUESTS[:5])
    everything = torch.cat([torch.cat(feats[n], -1) for n in names]).double()
    mean, std = everything.mean(0), everything.std(0)
    for n in names:
        K, G = (t.double() for t in feats[n])
        z = (torch.cat([K, G], -1) - mean) / std
        k_hat, g_hat = z[:, : K.shape[1]], z[:, K.shape[1] :]
        V = (-0.05 * (k_hat**2).sum(-1, keepdim=True) * g_hat).numpy()
        Kn = K.numpy()
        expected = np.linalg.solve(Kn.T @ Kn + np.eye(Kn.shape[1]), Kn.T @ V).T
        got = (weight_out_in(editor.modules[n], layout).detach() - before[n]).double().numpy()
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(got, expected, atol=2e-4 * scale, rtol=0)


def test_an_edit_lowers_the_target_loss(tiny_llama):
    items = [encode_prompt_target(tiny_llama.tokenizer, r.prompt, r.target_new) for r in REQUESTS]
    pad = tiny_llama.tokenizer.pad_token_id
    before = float(target_loss(tiny_llama.model, items, pad, "cpu"))
    _editor(tiny_llama, modules=["mlp_down@1", "mlp_down@2", "mlp_down@3"], lr=0.1).edit(REQUESTS)
    after = float(target_loss(tiny_llama.model, items, pad, "cpu"))
    assert after < before - 0.2, (before, after)


def test_key_positions_all_reads_every_position(tiny_llama):
    answer = _editor(tiny_llama).edit(REQUESTS[:3]).info["keys"]
    every = _editor(make_tiny("llama", tiny_llama.tokenizer), key_positions="all").edit(REQUESTS[:3]).info["keys"]
    lengths = [len(encode_prompt_target(tiny_llama.tokenizer, r.prompt, r.target_new).ids) for r in REQUESTS[:3]]
    assert every == sum(lengths) and answer < every


# -- state, config, registry ----------------------------------------------------------------


def test_state_round_trip_resumes_bit_identically(tiny_tokenizer, tmp_path):
    first = make_tiny("llama", tiny_tokenizer)
    editor = _editor(first, modules=["mlp_gate@1", "mlp_up@2", "mlp_down@3"])
    assert len(editor.normalizers) == 2  # gate and up share a shape, down has its own
    editor.edit(REQUESTS[:2])
    editor.edit(REQUESTS[2:4])
    path = tmp_path / "checkpoint.pt"
    params = dict(first.model.named_parameters())
    torch.save({"state": editor.state_dict(),
                "weights": {n: params[n].detach().clone() for n in editor.edited_parameters()}}, path)
    editor.edit(REQUESTS[4:])

    second = make_tiny("llama", tiny_tokenizer)
    resumed = _editor(second, modules=["mlp_gate@1", "mlp_up@2", "mlp_down@3"])
    checkpoint = torch.load(path, weights_only=True)
    resumed.load_state_dict(checkpoint["state"])
    with torch.no_grad():
        for name, value in checkpoint["weights"].items():
            second.model.get_parameter(name).copy_(value)
    resumed.edit(REQUESTS[4:])
    for name in editor.edited_parameters():
        assert torch.equal(first.model.get_parameter(name), second.model.get_parameter(name)), name
    a, b = editor.state_dict(), resumed.state_dict()
    assert a["turns"] == b["turns"] == 3
    for key, stats in a["normalizers"].items():
        for part, value in stats.items():
            assert torch.equal(value, b["normalizers"][key][part]), (key, part)


def test_state_of_other_modules_is_refused(tiny_llama):
    state = _editor(tiny_llama).state_dict()
    other = _editor(tiny_llama, modules=["mlp_gate@1"])
    with pytest.raises(EditbenchError, match="normalisers for module shapes"):
        other.load_state_dict(state)


@pytest.mark.parametrize("key,value,needle", [
    ("lr", 0.0, "lr"), ("ridge_lambda", -1.0, "ridge_lambda"), ("modules", [], "modules"),
    ("modules", ["mlp_down@1", "mlp_down@1"], "modules"), ("batch_size", 0, "batch_size"),
])
def test_bad_config_names_the_key(key, value, needle):
    with pytest.raises(EditbenchError, match=needle):
        build_config(UltraEditConfig, {key: value}, "test")


def test_unknown_module_template_fails_in_one_line(tiny_llama):
    with pytest.raises(EditbenchError, match="mlp_nowhere"):
        _editor(tiny_llama, modules=["mlp_nowhere@1"])


def test_registered_with_its_tuning_location():
    assert EDITORS.get("ultraedit") is UltraEditEditor
    cfg = UltraEditConfig(modules=["mlp_gate@11", "mlp_gate@12", "mlp_up@12"])
    assert cfg.tuning_location(20, "mlp_up") == {"modules": ["mlp_up@19", "mlp_up@20"]}
    assert cfg.tuning_location(0, "mlp_down") == {"modules": ["mlp_down@0"]}
    assert UltraEditConfig.tune_lr_key == "lr"


def test_interrupted_run_resumes_to_the_same_weights_and_results(tiny_run, monkeypatch):
    """Through the runner: killed in its third turn (a checkpoint after each), resumed, the
    final results equal an uninterrupted run's; config.json records every option."""
    from editbench.run import RunSpec, run

    tmp, model_dir, data, _ = tiny_run
    hparams = tmp / "ultraedit.yaml"
    hparams.write_text("modules: [mlp_down@1, mlp_down@2]\nlr: 0.05\nbatch_size: 1\n")
    common = dict(editor="ultraedit", model=str(model_dir), hparams_file=str(hparams), dataset=str(data),
                  device="cpu", edits_per_step=2, max_new_tokens=4, protocols=("teacher_forced",))
    config, reference = run(RunSpec(**common, output=str(tmp / "ref"))).load()
    assert {"variance_update": "released", "solve_dtype": "float32", "ridge_lambda": 1.0,
            "key_positions": "answer", "append_eos": False}.items() <= config["hparams"].items()

    interrupt_edit(monkeypatch, UltraEditEditor, 3)
    out = tmp / "resumed"
    with pytest.raises(Interrupted):
        run(RunSpec(**common, output=str(out), checkpoint_every=2))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["editor_state"]["turns"] == 2
    monkeypatch.undo()
    resumed = run(RunSpec(**common, output=str(out), resume=True)).load()[1]
    assert resumed["resumed"] and resumed["results"] == reference["results"]
