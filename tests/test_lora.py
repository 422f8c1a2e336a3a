"""LoRA / AdaLoRA editors: adapters through PEFT on the shared trainer."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny, shared_file
from editbench.api import EditbenchError, EditRequest
from editbench.config import ConfigError, build_config, load_hparams
from editbench.registry import EDITORS
from editbench.tokens import collate_targets, encode_prompt_target, target_logits
from editors.lora import AdaLoraEditorConfig, LoraEditorConfig

REQUESTS = [
    EditRequest("a", "The capital of France is", "France", "Rome"),
    EditRequest("b", "The largest planet is", "planet", "Paris"),
    EditRequest("c", "The chemical symbol for gold is", "gold", "Jupiter"),
    EditRequest("d", "Which company made the iPhone?", "iPhone", "Microsoft"),
]
# Targets per family (GPT-2 has a fused Conv1D attention projection).
TARGETS = {"llama": ["attn_q", "attn_v"], "qwen2": ["attn_q", "attn_v"], "gpt2": ["attn_qkv", "mlp_down"]}


def lora(handle, **kw):
    defaults = dict(
        target_modules=TARGETS[handle.preset.family], r=4, alpha=8.0, dropout=0.0, lr=5e-2,
        batch_size=2, epochs=5, loss_threshold=0.0, epoch_stop_threshold=0.0,
    )
    defaults.update(kw)
    adapter = defaults.get("adapter", "lora")
    cls = EDITORS.get(adapter)
    return cls(handle, build_config(cls.config_class, defaults, "test"))


def snapshot(model) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor]]:
    return {n: (p, p.detach().clone()) for n, p in model.named_parameters()}


def target_loss_of(handle, requests) -> torch.Tensor:
    items = [encode_prompt_target(handle.tokenizer, r.prompt, r.target_new, True) for r in requests]
    batch = collate_targets(items, handle.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = target_logits(handle.model, batch)
    return torch.nn.functional.cross_entropy(logits, batch.labels)


def logits_of(handle, requests) -> torch.Tensor:
    items = [encode_prompt_target(handle.tokenizer, r.prompt, r.target_new, True) for r in requests]
    batch = collate_targets(items, handle.tokenizer.pad_token_id)
    with torch.no_grad():
        return handle.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_only_adapter_parameters_change(tiny_handle):
    before = snapshot(tiny_handle.model)
    loss0 = target_loss_of(tiny_handle, REQUESTS)
    editor = lora(tiny_handle, dropout=0.1, epochs=10)
    stats = editor.edit(REQUESTS)
    assert stats.info["optimizer_steps"] == 20  # 10 epochs x 2 batches, nothing skipped
    for name, (param, value) in before.items():
        assert torch.equal(param, value), f"{name} changed"
    adapter = editor.trainable()
    assert adapter and not any(p is q for p in adapter for q, _ in before.values())
    assert any(p.abs().sum() > 0 for name, p in editor.params.items() if "lora_B" in name)
    # (A tiny random model's near-uniform head keeps its loss near log(400) ~ 6.)
    assert target_loss_of(tiny_handle, REQUESTS) < loss0 - 0.1
    # The model is back in eval mode (adapter dropout included) and nothing keeps a grad.
    assert not any(m.training for m in tiny_handle.model.modules())
    assert not any(p.requires_grad for p in tiny_handle.model.parameters())


def test_targets_are_resolved_through_preset_templates(tiny_llama):
    editor = lora(tiny_llama, target_modules=["attn_v", "mlp_down"], layers=[1, 3])
    assert sorted(editor.tuner.targeted_module_names) == sorted(
        tiny_llama.module_name(k, layer) for k in ("attn_v", "mlp_down") for layer in (1, 3)
    )
    assert all(".layers.1." in n or ".layers.3." in n for n in editor.params)


def test_merged_and_unmerged_outputs_agree(tiny_handle):
    before = {n: p.detach().clone() for n, p in tiny_handle.model.named_parameters()}
    editor = lora(tiny_handle, merge=True)
    editor.edit(REQUESTS)
    # Mid-run (a checkpoint) the base weights are untouched: nothing to save but the adapter.
    assert editor.edited_parameters() == []
    through_adapter = logits_of(tiny_handle, REQUESTS)
    editor.finalize()
    merged = logits_of(tiny_handle, REQUESTS)
    torch.testing.assert_close(merged, through_adapter, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged, logits_of(make_tiny(tiny_handle.preset.family, tiny_handle.tokenizer), REQUESTS))
    # A plain model again: no adapter modules, the listed base weights (and only they) changed.
    after = dict(tiny_handle.model.named_parameters())
    assert not hasattr(tiny_handle.model, "peft_config")
    changed = {n for n, p in after.items() if n in before and not torch.equal(p, before[n])}
    assert set(after) == set(before)
    assert changed == set(editor.edited_parameters())
    with pytest.raises(EditbenchError, match="merged"):
        editor.edit(REQUESTS)


def test_unmerged_edited_parameters_and_finalize_keep_adapter(tiny_llama):
    editor = lora(tiny_llama, merge=False)
    editor.edit(REQUESTS[:2])
    out = logits_of(tiny_llama, REQUESTS)
    editor.finalize()
    assert editor.edited_parameters() == []
    assert torch.equal(logits_of(tiny_llama, REQUESTS), out)
    assert any("lora_A" in n for n, _ in tiny_llama.model.named_parameters())


def test_depth_first_and_breadth_first_schedules(tiny_tokenizer):
    df = lora(make_tiny("llama", tiny_tokenizer), pipeline="depth_first", batch_size=1, max_steps=3)
    info = df.edit(REQUESTS).info
    assert info["optimizer_steps"] == 12 and "mean_final_loss" in info  # 4 requests x 3 steps
    bf = lora(make_tiny("llama", tiny_tokenizer), pipeline="breadth_first", batch_size=4, epochs=3)
    info = bf.edit(REQUESTS).info
    assert info["optimizer_steps"] == 3 and info["epochs_run"] == 3
    # The thresholds act through the adapter too: stop after one epoch / skip every step.
    early = lora(make_tiny("llama", tiny_tokenizer), epochs=50, epoch_stop_threshold=100.0)
    info = early.edit(REQUESTS).info
    assert info["epochs_run"] == 1 and info["optimizer_steps"] == 2
    skip = lora(make_tiny("llama", tiny_tokenizer), loss_threshold=100.0)
    untouched = {k: p.detach().clone() for k, p in skip.params.items()}
    assert skip.edit(REQUESTS).info["optimizer_steps"] == 0
    assert all(torch.equal(p, untouched[k]) for k, p in skip.params.items())


def test_sequential_steps_keep_training_the_same_adapter(tiny_llama):
    editor = lora(tiny_llama)
    editor.edit(REQUESTS[:2])
    params = dict(editor.params)
    first = {k: p.detach().clone() for k, p in params.items()}
    editor.edit(REQUESTS[2:])
    assert editor.params.keys() == params.keys()
    assert all(editor.params[k] is p for k, p in params.items())
    assert any(not torch.equal(p, first[k]) for k, p in params.items())
    assert editor.steps_taken == 10  # 2 x (5 epochs x 1 batch)


def test_state_dict_restores_the_adapter(tiny_tokenizer):
    a_handle = make_tiny("llama", tiny_tokenizer)
    a = lora(a_handle)
    a.edit(REQUESTS)
    state = a.state_dict()
    b_handle = make_tiny("llama", tiny_tokenizer)
    b = lora(b_handle)
    assert not torch.allclose(logits_of(b_handle, REQUESTS), logits_of(a_handle, REQUESTS))
    b.load_state_dict(state)
    torch.testing.assert_close(logits_of(b_handle, REQUESTS), logits_of(a_handle, REQUESTS))
    assert b.steps_taken == a.steps_taken
    other = lora(make_tiny("llama", tiny_tokenizer), layers=[0])
    with pytest.raises(EditbenchError, match="do not match"):
        other.load_state_dict(state)


def test_adalora_allocates_the_rank_budget(tiny_llama):
    editor = lora(tiny_llama, adapter="adalora", init_r=6, target_r=2, epochs=10, lr=2e-2)
    assert isinstance(editor.config, AdaLoraEditorConfig)
    reg = editor.regularizer()
    assert reg is not None and reg.item() > 0
    loss0 = target_loss_of(tiny_llama, REQUESTS)
    editor.edit(REQUESTS)
    assert editor.schedule == {"total_step": 20, "tinit": 2, "tfinal": 4}
    assert target_loss_of(tiny_llama, REQUESTS) < loss0
    # After the final allocation, exactly target_r singular values per module survive.
    kept = [int((m.lora_E["default"] != 0).sum()) for m in editor.adapted.values()]
    assert sum(kept) == 2 * len(editor.adapted) and max(kept) <= 6
    pattern = editor.tuner.peft_config["default"].rank_pattern
    assert pattern and sum(sum(v) for v in pattern.values()) == sum(kept)
    state = editor.state_dict()
    assert state["adalora"]["schedule"] == editor.schedule and state["adalora"]["rank_pattern"]


def test_adalora_merges(tiny_handle):
    editor = lora(tiny_handle, adapter="adalora", init_r=4, target_r=2, merge=True)
    editor.edit(REQUESTS)
    out = logits_of(tiny_handle, REQUESTS)
    editor.finalize()
    torch.testing.assert_close(logits_of(tiny_handle, REQUESTS), out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"modules": ["mlp_down@3"]}, "modules: not used by LoRA"),
        ({"target_modules": ["attn_q@3"]}, "choose layers with the 'layers' key"),
        ({"target_modules": []}, "target_modules: expected at least one"),
        ({"layers": []}, "layers: expected null or a non-empty list"),
        ({"dropout": 1.0}, "dropout: expected a probability"),
        ({"adapter": "adalora", "init_r": 2, "target_r": 4}, "target_r: expected 1 <= target_r <= init_r"),
        ({"r": 0}, "r: expected a positive integer"),
    ],
)
def test_bad_lora_config(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(LoraEditorConfig, raw, "h.yaml")


def test_bad_targets_name_the_template(tiny_handle):
    if tiny_handle.preset.family == "gpt2":
        with pytest.raises(EditbenchError, match="no module template 'attn_q'"):
            lora(tiny_handle, target_modules=["attn_q"])
    with pytest.raises(EditbenchError, match="layers: 9 is out of range"):
        lora(tiny_handle, layers=[9])


def test_adalora_editor_refuses_plain_lora():
    with pytest.raises(ConfigError, match="adapter: the adalora editor"):
        build_config(AdaLoraEditorConfig, {"adapter": "lora"}, "h.yaml")


@pytest.mark.parametrize("model", ["qwen2.5-7b", "llama3-8b", "mistral-7b", "smollm2-135m"])
@pytest.mark.parametrize("editor", ["lora", "adalora"])
def test_bundled_hparams(editor, model):
    config, _ = load_hparams(EDITORS.get(editor).config_class, editor, model)
    assert config.adapter == editor and config.target_modules


@pytest.mark.integration
def test_lora_bf_smollm2_zsre(smollm2):
    """LoRA-BF (bundled smollm2 hparams) on the first 50 zsRE-3k requests: reliability >= 0.2.

    Measured 0.32 with the hparams re-chosen on the known-fact tuning slice (adapters on layers
    0-7 at lr 1.5e-3, chosen on 100 requests in one step); the earlier layers 15-29, chosen on
    zsRE locality, reached >= 0.8 here."""
    from editbench.data import load_dataset
    from editbench.evaluate import EvalSettings, Evaluator

    path = shared_file("zsre", "zsre_3k.json")
    requests = load_dataset(str(path), num=50).requests
    config, _ = load_hparams(LoraEditorConfig, "lora", "smollm2-135m")
    assert config.pipeline == "breadth_first"
    layers = config.layers if config.layers is not None else range(smollm2.num_layers)
    names = [f"{smollm2.module_name(k, i)}.weight" for i in layers for k in config.target_modules]
    # The session-scoped model is shared with other tests: put its weights back afterwards.
    restore = smollm2.snapshot(names)
    # The adapters' initialisation and dropout draw from torch's global RNG (the runner
    # seeds it; this test calls the editor directly): without a seed the result varies.
    torch.manual_seed(0)
    editor = EDITORS.get("lora")(smollm2, config)
    try:
        editor.edit(requests)
        editor.finalize()
        ev = Evaluator(smollm2, EvalSettings(protocols=("generation",)))
        # Reliability only (no rephrase/locality prompts), so the test stays short.
        bare = [EditRequest(r.case_id, r.prompt, r.subject, r.target_new) for r in requests]
        result = ev.evaluate(bare, ev.baseline(bare))["generation"]
    finally:
        if not editor.merged:
            editor.tuner.unload()
        restore()
    print("lora_bf smollm2 zsre_3k[:50]", result)
    assert result["reliability"] >= 0.2, result
