"""MEMIT / AlphaEdit ask each edited layer for part of an optimised target. In the papers'
``residual`` space that is a share of z - h at the last edited block, which a layer can
deliver only where its block adds the mlp_down output to the residual stream as is. Gemma
2/3 normalise it first (``mlp_post_norm`` in families.yaml): there the same solve reaches
only part of z, and ``mlp_output`` (what ``auto`` picks for them) asks each layer for its
own mlp_down output instead. Measured on tiny random models (below) and on gemma3-270m
(tests/test_gemma3_270m.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CORPUS, make_tiny
from editbench.api import EditRequest
from editbench.registry import EDITORS
from editbench.tokens import encode_prompt_target, output_logits, pad_batch

REQUESTS = [
    EditRequest(case_id="a", prompt="The capital of France is", subject="France", target_new="Rome"),
    EditRequest(case_id="b", prompt="The chemical symbol for gold is", subject="gold",
                target_new="Jupiter"),
]


def _memit(family, space, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("EDITBENCH_STATS_CACHE", str(tmp_path / "stats"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 20))
    handle = make_tiny(family, tiny_tokenizer)
    with torch.no_grad():  # random tiny models have near-uniform logits: make targets learnable
        for p in handle.model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    cls = EDITORS.get("memit").config_class
    cfg = cls(layers=[1, 2], context_template_lengths=[4], context_templates_per_length=0,
              v_num_grad_steps=15, v_lr=0.5, stats_corpus=str(corpus), stats_tokens=300,
              stats_seq_len=32, stats_batch_size=4, clamp_norm_factor=1e4, v_weight_decay=0.0,
              fact_token="last", mom2_update_weight=1.0, target_space=space)
    return handle, EDITORS.get("memit")(handle, cfg)


def _realized(editor, goals, start):
    """Per goal and request: the share of (wanted - start) the edited model reaches."""
    out = []
    for goal, before in zip(goals, start, strict=True):
        after = editor.mean_keys(REQUESTS, extra={goal.read: goal.where})[goal.read]
        gap = (goal.wanted - before).to(after.dtype)
        out.append(((after - before) * gap).sum(-1) / (gap * gap).sum(-1))
    return torch.stack(out)


def _target_nll(handle) -> float:
    tok = handle.tokenizer
    items = [encode_prompt_target(tok, r.prompt, r.target_new) for r in REQUESTS]
    ids, mask = pad_batch([it.prompt_ids + it.target_ids for it in items], tok.pad_token_id)
    with torch.no_grad():
        hidden = handle.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        total = 0.0
        for row, it in enumerate(items):
            start = len(it.prompt_ids) - 1
            logits = output_logits(handle.model, hidden[row, start : start + len(it.target_ids)])
            total += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor(it.target_ids)))
    return total / len(items)


@pytest.mark.parametrize(("family", "space"), [
    ("llama", "residual"),
    ("gemma3_text", "mlp_output"),
    pytest.param("gemma3_text", "residual", marks=pytest.mark.xfail(
        strict=True, reason="the block adds post_feedforward_layernorm(mlp_down output): a "
        "residual share is no down_proj target (realized 0.36-0.52 of z - h here)")),
])
def test_memit_realizes_its_targets(family, space, tiny_tokenizer, tmp_path, monkeypatch):
    handle, editor = _memit(family, space, tiny_tokenizer, tmp_path, monkeypatch)
    assert editor.target_space == space
    _, goals = editor.goals(REQUESTS)  # the same (seeded) targets edit() computes
    start = [editor.mean_keys(REQUESTS, extra={g.read: g.where})[g.read] for g in goals]
    nll_before = _target_nll(handle)
    stats = editor.edit(REQUESTS)
    assert stats.info["target_space"] == space
    realized = _realized(editor, goals, start)
    # residual: only z at the last block is a target (earlier goals are shares of it)
    checked = realized[-1:] if space == "residual" else realized
    assert float(checked.min()) > 0.95, realized
    assert _target_nll(handle) < nll_before - 1.0


def test_auto_target_space_follows_the_family(tiny_tokenizer, tmp_path, monkeypatch):
    for family, space in (("llama", "residual"), ("gemma3_text", "mlp_output")):
        _, editor = _memit(family, "auto", tiny_tokenizer, tmp_path, monkeypatch)
        assert editor.target_space == space, family
