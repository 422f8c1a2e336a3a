"""Differential tests: editbench's ROME, MEMIT and AlphaEdit against EasyEdit's port of the
authors' released code, on a tiny GPT-2 with the same C, request(s), hyperparameters and
context templates on both sides; v* / z*, the keys K and the weight updates must agree to
1e-5 (relative norm of the difference) with the bare prompt alone and with four templates.

The port is PyPI ``easyeditor==0.0.1.dev0`` (its ``rome`` and ``memit`` modules follow
kmeng01/rome and kmeng01/memit line by line). Its metadata pins torch 2.0.1 and
transformers 4.30.1, so it is installed with ``pip install --no-deps easyeditor==0.0.1.dev0``
(see the ``parity`` extra in pyproject.toml); without it these tests skip. Only the
``rome``/``memit`` modules are loaded (the package's ``__init__`` imports the whole toolkit
and its pinned dependencies), with two shims that change no arithmetic: a torch function
mode maps the port's hard-coded ``cuda:<n>`` devices to the CPU, and the GPT-2 blocks
present their output to the port's hooks as the 1-tuple transformers 4.30 returned (>= 5
returns the tensor, which the port would index as a batch).

AlphaEdit is not in that release: its reference here is the released AlphaEdit step
(jianghoucheng/AlphaEdit, ``AlphaEdit_main.py``) written from its description on top of the
port's ``compute_z`` / ``compute_ks``, which AlphaEdit's repository carries unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from conftest import make_tiny, sharpen
from editbench.api import EditRequest
from editbench.registry import EDITORS

EASYEDIT = importlib.util.find_spec("easyeditor")
pytestmark = [
    pytest.mark.skipif(
        EASYEDIT is None,
        reason="easyeditor is not installed (pip install --no-deps easyeditor==0.0.1.dev0)",
    ),
    pytest.mark.usefixtures("stats_cache"),
]
TOL = 1e-5
F64 = torch.float64

# Requests as the released code takes them (the subject in the prompt's "{}").
RELEASED = [
    {"case_id": 0, "prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"},
    {"case_id": 1, "prompt": "The chemical symbol for {} is", "subject": "gold",
     "target_new": "Jupiter"},
]
# Sampled templates are replaced by fixed ones (the released code's are unseeded); two of
# them mention a subject, which the released code never reads a key from.
GROUPS = {1: [["{}"]],
          4: [["{}"], ["France is nice. {}", "The golden gate. {}", "Because I said so. {}"]]}
GPT2_MODULES = dict(rewrite_module_tmp="transformer.h.{}.mlp.c_proj",
                    layer_module_tmp="transformer.h.{}", mlp_module_tmp="transformer.h.{}.mlp",
                    attn_module_tmp="transformer.h.{}.attn", ln_f_module="transformer.ln_f",
                    lm_head_module="transformer.wte")
TARGETS = dict(fact_token="subject_last", v_num_grad_steps=20, v_lr=0.5, v_weight_decay=0.5,
               kl_factor=0.0625)


def _request(r: dict) -> EditRequest:
    return EditRequest(str(r["case_id"]), r["prompt"].format(r["subject"]), r["subject"],
                       r["target_new"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def _load_port() -> types.SimpleNamespace:
    """The port's rome/memit modules without running ``easyeditor/__init__.py``."""
    root = Path(EASYEDIT.submodule_search_locations[0])
    for name, sub in (("easyeditor", ""), ("easyeditor.util", "util"),
                      ("easyeditor.models", "models")):
        if name not in sys.modules or not hasattr(sys.modules[name], "__path__"):
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    mod = importlib.import_module
    return types.SimpleNamespace(
        rome_main=mod("easyeditor.models.rome.rome_main"),
        compute_u=mod("easyeditor.models.rome.compute_u"),
        compute_v=mod("easyeditor.models.rome.compute_v"),
        rome_hparams=mod("easyeditor.models.rome.rome_hparams"),
        memit_main=mod("easyeditor.models.memit.memit_main"),
        compute_z=mod("easyeditor.models.memit.compute_z"),
        memit_hparams=mod("easyeditor.models.memit.memit_hparams"),
    )


def _cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class CudaOnCpu(TorchFunctionMode):
    """The port writes ``.to(f"cuda:{hparams.device}")`` and ``device=f"cuda:..."``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return func(*(_cpu(a) for a in args), **kwargs)


def _tuple_view(block: nn.Module) -> None:
    """Hooks registered on ``block`` see (and return) its output as a 1-tuple."""

    def register(hook, **kwargs):
        def wrapped(module, inputs, output):
            if not torch.is_tensor(output):
                return hook(module, inputs, output)
            got = hook(module, inputs, (output,))
            return got[0] if isinstance(got, tuple) else got

        return nn.Module.register_forward_hook(block, wrapped, **kwargs)

    block.register_forward_hook = register  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def port():
    return _load_port()


def _gpt2(tokenizer):
    """A tiny GPT-2 whose weights are scaled up: at the random init's scale the MLP outputs
    are so small that weight decay swamps the target loss and nothing is learned."""
    handle = make_tiny("gpt2", tokenizer)
    sharpen(handle)
    return handle


def _editor(name: str, handle, corpus_file, groups, **settings):
    cls = EDITORS.get(name)
    cfg = cls.config_class(**TARGETS, target_suffix="none", context_templates_per_length=0,
                           stats_corpus=str(corpus_file), stats_tokens=400, stats_seq_len=32,
                           stats_batch_size=4, **settings)
    editor = cls(handle, cfg)
    editor.template_groups = [list(g) for g in groups]
    return editor


def _record(obj, attr: str, into: list, monkeypatch, pick=lambda got: got) -> None:
    """Wrap ``obj.attr`` so every call's result (through ``pick``) is appended to ``into``."""
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        got = original(*args, **kwargs)
        into.append(pick(got))
        return got

    monkeypatch.setattr(obj, attr, wrapper)


def _hparams(port, kind: str, layers: list[int], **extra):
    common = dict(layers=layers, v_loss_layer=3, mom2_adjustment=True, mom2_dataset="injected",
                  mom2_n_samples=1, mom2_dtype="float32", alg_name=kind, device=0,
                  model_name="tiny-gpt2", stats_dir="unused", **TARGETS, **GPT2_MODULES)
    if kind == "ROME":
        return port.rome_hparams.ROMEHyperParams(**common, **extra)
    return port.memit_hparams.MEMITHyperParams(**common, layer_selection="all", **extra)


@pytest.mark.parametrize("templates", [1, 4])
def test_rome_equals_the_released_rome(templates, port, tiny_tokenizer, corpus_file, monkeypatch):
    layer, groups = 1, GROUPS[templates]
    request = RELEASED[0]
    ours = _gpt2(tiny_tokenizer)
    editor = _editor("rome", ours, corpus_file, groups, layers=[layer], clamp_norm_factor=4.0)
    name = ours.module_name("mlp_down", layer)
    C = editor.stats[layer]
    # editbench: the targets, the keys per template and the update.
    targets, keys = [], []
    _record(editor, "targets", targets, monkeypatch)
    _record(editor, "template_keys", keys, monkeypatch, lambda got: got[name][0])
    W0 = editor.weight(layer).detach().double().clone()
    editor.edit([_request(request)])
    update = editor.weight(layer).detach().double() - W0
    v_star = targets[0].h_bare[0] + targets[0].delta[0]

    # The released ROME, on its own copy of the model, with C^-1 and the templates injected.
    theirs = _gpt2(tiny_tokenizer)
    monkeypatch.setattr(port.rome_main, "CONTEXT_TEMPLATES_CACHE", [t for g in groups for t in g])
    cov_key = (theirs.model.config._name_or_path.replace("/", "_"), name)
    monkeypatch.setitem(port.compute_u.inv_mom2_cache, cov_key, torch.linalg.inv(C.double()).float())
    their_keys, bare = [], []
    _record(port.compute_u.repr_tools, "get_reprs_at_word_tokens", their_keys, monkeypatch)
    _record(port.compute_v, "get_module_input_output_at_word", bare, monkeypatch)
    hp = _hparams(port, "ROME", [layer], clamp_norm_factor=4.0,
                  context_template_length_params=[[5, 10]])
    with CudaOnCpu():
        (u, v), = port.rome_main.execute_rome(theirs.model, tiny_tokenizer, dict(request), hp).values()
    k0, h0 = bare[0]
    their_v_star = v * torch.dot(k0, u) + h0  # right vector = (v* - h0) / (k0 . u)

    assert _rel(keys[0], their_keys[0]) < TOL
    assert _rel(v_star, their_v_star) < TOL
    assert _rel(update, torch.outer(u, v).T) < TOL


def _released_memit_quantities(port, handle, tokenizer, groups, C: dict[int, torch.Tensor],
                               hp, monkeypatch) -> tuple[list, list, dict[int, torch.Tensor]]:
    """The released MEMIT's z*, K per layer and update per layer ([out, in])."""
    for block in handle.model.transformer.h:
        _tuple_view(block)
    monkeypatch.setattr(port.memit_main, "CONTEXT_TEMPLATES_CACHE", [list(g) for g in groups])
    for layer, c in C.items():
        key = (handle.model.config._name_or_path.replace("/", "_"),
               hp.rewrite_module_tmp.format(layer))
        monkeypatch.setitem(port.memit_main.COV_CACHE, key, c.float().cpu())
    zs, ks = [], []
    _record(port.memit_main, "compute_z", zs, monkeypatch)
    _record(port.memit_main, "compute_ks", ks, monkeypatch)
    with CudaOnCpu():
        deltas = port.memit_main.execute_memit(handle.model, tokenizer,
                                               [dict(r) for r in RELEASED], hp)
    updates = {layer: (adj @ resid.T).T
               for layer, (adj, resid) in zip(hp.layers, deltas.values(), strict=True)}
    return zs, ks, updates


@pytest.mark.parametrize("templates", [1, 4])
def test_memit_equals_the_released_memit(templates, port, tiny_tokenizer, corpus_file,
                                          monkeypatch):
    layers, groups = [1, 2], GROUPS[templates]
    ours = _gpt2(tiny_tokenizer)
    editor = _editor("memit", ours, corpus_file, groups, layers=layers, clamp_norm_factor=0.75,
                     mom2_update_weight=5.0)
    targets, keys = [], []
    _record(editor, "targets", targets, monkeypatch)
    _record(editor, "mean_keys", keys, monkeypatch,
            lambda got: next(v for k, v in got.items() if k.endswith("c_proj")))
    W0 = {layer: editor.weight(layer).detach().double().clone() for layer in layers}
    editor.edit([_request(r) for r in RELEASED])
    z = targets[0].h_bare + targets[0].delta

    theirs = _gpt2(tiny_tokenizer)
    hp = _hparams(port, "MEMIT", layers, clamp_norm_factor=0.75, mom2_update_weight=5.0)
    zs, ks, updates = _released_memit_quantities(port, theirs, tiny_tokenizer, groups,
                                                 editor.stats, hp, monkeypatch)
    assert _rel(z, torch.stack(zs)) < TOL
    for i, layer in enumerate(layers):
        assert _rel(keys[i], ks[i]) < TOL, layer
        ours_update = editor.weight(layer).detach().double() - W0[layer]
        assert _rel(ours_update, updates[layer]) < TOL, layer


def _released_alphaedit_step(port, handle, tokenizer, hp, P, cache_c, L2: float) -> None:
    """One step of the released ``apply_AlphaEdit_to_model``: z* at the last layer; per layer
    in order, K (the port's compute_ks), R = (z* - h) / (layers left) and
    W += ((P (K K^T + cache) + L2 I)^-1 P K R^T)^T; then every layer's K again, added to its
    cache. (In float64 here: the release solves in float32.)"""
    m, cz = port.memit_main, port.compute_z
    requests = [dict(r, target_new=" " + r["target_new"]) for r in RELEASED]
    templates = m.get_context_templates(handle.model, tokenizer)
    zs = torch.stack([m.compute_z(handle.model, tokenizer, r, hp, hp.layers[-1], templates)
                      for r in requests], 1)
    for i, layer in enumerate(hp.layers):
        K = m.compute_ks(handle.model, tokenizer, requests, hp, layer, templates).T.double()
        h = cz.get_module_input_output_at_words(
            handle.model, tokenizer, hp.layers[-1], [r["prompt"] for r in requests],
            [r["subject"] for r in requests], hp.layer_module_tmp, hp.fact_token, track="out").T
        resid = (zs - h).double() / (len(hp.layers) - i)
        A = P[i] @ (K @ K.T + cache_c[i]) + L2 * torch.eye(K.shape[0], dtype=F64)
        upd = torch.linalg.solve(A, P[i] @ K @ resid.T)  # [in, out]: Conv1D's layout
        weight = handle.model.get_submodule(hp.rewrite_module_tmp.format(layer)).weight
        with torch.no_grad():
            weight += upd.float()
    for i, layer in enumerate(hp.layers):
        K = m.compute_ks(handle.model, tokenizer, requests, hp, layer, templates).T.double()
        cache_c[i] += K @ K.T


@pytest.mark.parametrize("templates", [1, 4])
def test_alphaedit_equals_the_released_alphaedit(templates, port, tiny_tokenizer, corpus_file,
                                                 monkeypatch):
    """Two sequential steps (the second one's solve holds the first one's keys)."""
    layers, groups, L2 = [1, 2], GROUPS[templates], 0.1
    ours = _gpt2(tiny_tokenizer)
    probe = _editor("memit", ours, corpus_file, groups, layers=layers)
    # A threshold that leaves about half of each layer's dimensions in the null space, halfway
    # between two eigenvalues (so float error cannot move one across it).
    evals = torch.linalg.eigvalsh(probe.stats[layers[0]].double())
    half = len(evals) // 2
    threshold = float(evals[half - 1] + evals[half]) / 2
    editor = _editor("alphaedit", ours, corpus_file, groups, layers=layers,
                     clamp_norm_factor=0.75, nullspace_threshold=threshold, L2=L2)
    theirs = _gpt2(tiny_tokenizer)
    for block in theirs.model.transformer.h:
        _tuple_view(block)
    monkeypatch.setattr(port.memit_main, "CONTEXT_TEMPLATES_CACHE", [list(g) for g in groups])
    P, cache_c = [], []
    for layer in layers:  # the release's get_project: U U^T over singular values < threshold
        U, sv, _ = torch.linalg.svd(editor.stats[layer].double())
        small = U[:, sv < threshold]
        P.append(small @ small.T)
        cache_c.append(torch.zeros_like(P[-1]))
    hp = _hparams(port, "MEMIT", layers, clamp_norm_factor=0.75, mom2_update_weight=1.0)
    for step in range(2):
        W0 = {la: editor.weight(la).detach().double().clone() for la in layers}
        their_W0 = {la: theirs.model.get_submodule(hp.rewrite_module_tmp.format(la)).weight
                    .detach().double().T.clone() for la in layers}
        editor.edit([_request(r) for r in RELEASED])
        with CudaOnCpu():
            _released_alphaedit_step(port, theirs, tiny_tokenizer, hp, P, cache_c, L2)
        for la in layers:
            mine = editor.weight(la).detach().double() - W0[la]
            released = theirs.model.get_submodule(hp.rewrite_module_tmp.format(la)).weight \
                .detach().double().T - their_W0[la]
            assert mine.norm() > 0
            # The second step starts from float32 weights each side rounded on its own: its
            # agreement compounds that rounding (1.09e-5 seen on a 2-thread run).
            assert _rel(mine, released) < (TOL if step == 0 else 3 * TOL), (step, la)
