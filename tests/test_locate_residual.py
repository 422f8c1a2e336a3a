"""MEMIT / AlphaEdit spread a residual-stream target over several MLP output matrices: each
layer is asked to move the last edited block's output by its share of (z - h). That is
exact only where a block adds the mlp_down output to the residual stream as is. Gemma 2/3
normalise it first (``mlp_post_norm`` in families.yaml), so the same solve reaches only part
of z. Measured on tiny random models (below) and on gemma3-270m (see the README).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CORPUS, make_tiny
from editbench.api import EditRequest
from editbench.registry import EDITORS

REQUESTS = [
    EditRequest(case_id="a", prompt="The capital of France is", subject="France", target_new="Rome"),
    EditRequest(case_id="b", prompt="The chemical symbol for gold is", subject="gold",
                target_new="Jupiter"),
]


@pytest.mark.parametrize("family", [
    "llama",
    pytest.param("gemma3_text", marks=pytest.mark.xfail(
        strict=True, reason="the block adds post_feedforward_layernorm(mlp_down output): MEMIT's "
        "residual targets are not down_proj targets (realized 0.36-0.52 of z - h here)")),
])
def test_memit_realizes_its_residual_target(family, tiny_tokenizer, tmp_path, monkeypatch):
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
              fact_token="last", mom2_update_weight=1.0)
    editor = EDITORS.get("memit")(handle, cfg)
    z_module = handle.module_name("block", cfg.layers[-1])
    wanted = editor.targets(REQUESTS, z_module)  # the same (seeded) targets edit() computes
    editor.edit(REQUESTS)
    after = editor.mean_keys(REQUESTS, extra={z_module: "output"})[z_module]
    delta = wanted.delta.to(after.dtype)
    realized = ((after - wanted.h_bare) * delta).sum(-1) / (delta * delta).sum(-1)
    assert float(realized.min()) > 0.95, realized
