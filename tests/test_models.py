"""Model presets: module templates resolve on every supported architecture."""

from __future__ import annotations

import warnings

import pytest
import torch

from editbench.api import EditbenchError
from editbench.models import (
    family_templates,
    get_preset,
    kv_cache_kwargs,
    preset_names,
    returned_kv_cache,
)

KEYS = ("block", "mlp", "mlp_down", "mlp_up", "attn_o", "embed", "final_norm", "lm_head")


def test_all_presets_load():
    names = preset_names()
    for required in ("smollm2-135m", "qwen2.5-7b", "qwen2.5-7b-instruct", "llama3-8b",
                     "llama3-8b-instruct", "mistral-7b", "qwen2.5-14b", "qwen2.5-32b",
                     "qwen2.5-72b", "gpt2-xl"):
        assert required in names
    for name in names:
        preset = get_preset(name)
        assert ".3." in preset.module_name("mlp_down", 3)
        assert preset.module_name("final_norm") in ("model.norm", "transformer.ln_f")


def test_unknown_model_did_you_mean():
    with pytest.raises(EditbenchError, match="did you mean 'qwen2.5-7b'"):
        get_preset("qwen2.5-7")


def test_templates_need_layer_and_exist():
    preset = get_preset("llama3-8b")
    assert preset.module_name("mlp_down", 22) == "model.layers.22.mlp.down_proj"
    with pytest.raises(EditbenchError, match="needs a layer index"):
        preset.module_name("mlp_down")
    with pytest.raises(EditbenchError, match="no module template 'mlp_dwn'.*did you mean 'mlp_down'"):
        preset.module_name("mlp_dwn", 1)


def test_templates_match_real_modules(tiny_handle):
    for key in KEYS:
        layer = 2 if "{}" in tiny_handle.preset.templates[key] else None
        module = tiny_handle.get_module(key, layer)
        assert module is not None
    weight = tiny_handle.get_module("mlp_down", 1).weight
    hidden = tiny_handle.model.config.hidden_size if hasattr(tiny_handle.model.config, "hidden_size") else 32
    # out_in layout: [hidden, intermediate]; GPT-2's Conv1D stores [intermediate, hidden].
    expected_rows = hidden if tiny_handle.preset.weight_layout == "out_in" else weight.shape[0]
    assert weight.shape[0] == expected_rows
    assert tiny_handle.resolve_module_name("mlp_down@1") == tiny_handle.module_name("mlp_down", 1)
    with pytest.raises(EditbenchError, match="has no module 'nope.x'"):
        tiny_handle.resolve_module_name("nope.x")


def test_moe_preset_points_at_shared_expert():
    assert get_preset("qwen1.5-moe-a2.7b").module_name("mlp_down", 20) == (
        "model.layers.20.mlp.shared_expert.down_proj"
    )
    assert "gpt2" in family_templates()


def test_snapshot_restores_only_the_named_parameters(tiny_llama):
    names = [f"{tiny_llama.module_name('mlp_down', 0)}.weight"]
    other = f"{tiny_llama.module_name('mlp_down', 1)}.weight"
    restore = tiny_llama.snapshot(names)
    before = tiny_llama.model.get_parameter(names[0]).detach().clone()
    with torch.no_grad():
        tiny_llama.model.get_parameter(names[0]).add_(1.0)
        tiny_llama.model.get_parameter(other).add_(1.0)
    edited_other = tiny_llama.model.get_parameter(other).detach().clone()
    restore()
    assert torch.equal(tiny_llama.model.get_parameter(names[0]), before)
    # Not named, not touched: the restore is not a reload.
    assert torch.equal(tiny_llama.model.get_parameter(other), edited_other)
    restore()  # reusable (a fresh model before every single edit)
    assert torch.equal(tiny_llama.model.get_parameter(names[0]), before)


@pytest.mark.parametrize(("name", "params"), [
    # Parameter counts of the released checkpoints (their model cards / safetensors index).
    ("smollm2-135m", 134_515_008), ("qwen2.5-7b", 7_615_616_512), ("llama3-8b", 8_030_261_248)])
def test_preset_architecture_is_the_real_shape(name, params):
    """The architecture numbers build (on the meta device: no memory) the released model's
    exact parameter count, so random-weight benchmarks time the real shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    preset = get_preset(name)
    assert preset.architecture["num_hidden_layers"] == preset.num_layers
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(preset.family, **preset.architecture))
    assert sum(p.numel() for p in model.parameters()) == params


def test_a_bad_architecture_is_one_clear_line(tmp_path, monkeypatch):
    import editbench.models as models

    monkeypatch.setattr(models, "PRESET_DIR", tmp_path)
    (tmp_path / "x.yaml").write_text("hf_id: a/b\nfamily: llama\nnum_layers: 2\narchitecture: [1, 2]\n")
    with pytest.raises(EditbenchError, match=r"x.yaml: architecture: expected a mapping"):
        models.get_preset("x")
    (tmp_path / "x.yaml").write_text("hf_id: a/b\nfamily: llama\nnum_layers: 2\n"
                                     "architecture: {num_hidden_layers: 3}\n")
    with pytest.raises(EditbenchError, match="num_hidden_layers is 3 but num_layers is 2"):
        models.get_preset("x")
    (tmp_path / "x.yaml").write_text("hf_id: a/b\nfamily: llama\narchitecture: {rope_scaling: [1]}\n")
    with pytest.raises(EditbenchError, match=r"architecture.rope_scaling: expected a number"):
        models.get_preset("x")


def test_kv_cache_continues_a_forward_without_deprecation_warnings(tiny_handle):
    """A cached continuation equals the full forward, and passing the cache warns nothing
    (transformers renamed ``past_key_values`` to ``cache``; the old name warns per call)."""
    model = tiny_handle.model
    ids = torch.tensor([[5, 9, 12, 7, 3, 11]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        head = model(input_ids=ids[:, :4], use_cache=True)
        tail = model(input_ids=ids[:, 4:], use_cache=True, **kv_cache_kwargs(model, returned_kv_cache(head)))
    full = model(input_ids=ids).logits
    torch.testing.assert_close(tail.logits, full[:, 4:], atol=1e-5, rtol=0)
