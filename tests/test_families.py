"""Every family in editbench/presets/families.yaml, on a tiny random model of it: the module
templates name real modules, and ``target_logits`` gives the model's own logits.

Trainers, locate-then-edit targets and teacher-forced scoring all take logits from the base
model's hidden states and the output embedding, skipping the head's other work: a family
whose forward does more (Gemma 2's final soft-capping) would be trained and scored on
logits the model never produces.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIGS, make_tiny
from editbench.models import family_templates
from editbench.tokens import collate_targets, encode_prompt_target, target_logits

PAIRS = [
    ("The capital of France is", "Paris"),
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("Which company made the iPhone?", "Microsoft made Windows"),
]
FAMILIES = sorted(family_templates())


def test_every_family_has_a_tiny_model():
    # gemma3 (the multimodal wrapper) is built from its text and vision sub-configs.
    assert set(FAMILIES) == set(TINY_CONFIGS) | {"gemma3"}


@pytest.mark.parametrize("family", FAMILIES)
def test_templates_name_real_modules(family, tiny_tokenizer):
    handle = make_tiny(family, tiny_tokenizer)
    for key, template in handle.preset.templates.items():
        if key == "weight_layout":
            continue
        module = handle.get_module(key, 1 if "{}" in template else None)
        assert isinstance(module, torch.nn.Module), key
    assert handle.num_layers == 4
    assert handle.get_module("embed") is handle.model.get_input_embeddings()
    assert handle.get_module("lm_head") is handle.model.get_output_embeddings()
    # The MLP output matrix maps the intermediate width to the hidden width in the layout
    # the preset states (locate-then-edit solves for it).
    weight = handle.get_module("mlp_down", 1).weight
    hidden = handle.get_module("embed").weight.shape[1]
    out_dim = weight.shape[0] if handle.preset.weight_layout == "out_in" else weight.shape[1]
    assert out_dim == hidden


@pytest.mark.parametrize("family", FAMILIES)
def test_target_logits_equal_the_forward(family, tiny_tokenizer):
    handle = make_tiny(family, tiny_tokenizer)
    model, tok = handle.model, handle.tokenizer
    batch = collate_targets([encode_prompt_target(tok, p, t) for p, t in PAIRS], tok.pad_token_id)
    lengths = batch.attention_mask.sum(1)
    assert int(lengths.min()) < batch.input_ids.shape[1]  # right padding is in the batch
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        got = target_logits(model, batch)
    expected = full[batch.rows, batch.cols]
    assert got.shape == expected.shape == (len(batch.labels), model.get_output_embeddings().out_features)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_softcapping_is_applied_and_matters(tiny_tokenizer):
    """The tiny Gemma 2's cap visibly changes its logits, so the test above would fail
    without it: the raw output embedding alone is off by far more than its tolerance."""
    handle = make_tiny("gemma2", tiny_tokenizer)
    model, tok = handle.model, handle.tokenizer
    cap = model.config.final_logit_softcapping
    assert cap
    batch = collate_targets([encode_prompt_target(tok, p, t) for p, t in PAIRS], tok.pad_token_id)
    with torch.no_grad():
        hidden = model.base_model(input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask).last_hidden_state
        raw = model.get_output_embeddings()(hidden[batch.rows, batch.cols])
        capped = target_logits(model, batch)
    assert float((raw - capped).abs().max()) > 1e-2
    assert float(capped.abs().max()) < cap
