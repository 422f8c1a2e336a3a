"""ROME / MEMIT / AlphaEdit on the real smollm2-135m with the shared data (generation protocol).

Sizes are CI-sized (a few minutes on 2 CPU cores); the issue's full-size runs (20 ROME
edits, 100-request MEMIT / AlphaEdit, the 500-request sequential comparison) are in
``benchmarks/locate_editors.py``. The layer statistics are computed once per machine
(cached under $EDITBENCH_STATS_CACHE or the user cache) by a session fixture, in one pass
for the layers of all three editors.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import shared_file
from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.registry import EDITORS

pytestmark = pytest.mark.integration


def _config(editor: str, corpus: str, **overrides):
    cls = EDITORS.get(editor).config_class
    config, _ = load_hparams(cls, editor, "smollm2-135m", {"stats_corpus": corpus, **overrides})
    return config


@pytest.fixture(scope="session")
def corpus():
    # hparams refuse absolute paths (they describe the method, not the machine).
    return os.path.relpath(shared_file("corpus", "wiki_passages.jsonl"))


@pytest.fixture(scope="session")
def smollm2_stats(smollm2, corpus):
    """One statistics pass for every layer any of the three editors edits (cached)."""
    from editors._locate.stats import resolve_corpus, second_moments

    configs = [_config(e, corpus) for e in ("rome", "memit", "alphaedit")]
    c0 = configs[0]
    layers = sorted({layer for c in configs for layer in c.layers})
    names = [smollm2.module_name("mlp_down", layer) for layer in layers]
    _, info = second_moments(smollm2, names, resolve_corpus(corpus), c0.stats_tokens,
                             c0.stats_seq_len, c0.stats_batch_size, c0.stats_dtype)
    return info


def _restore_after(handle, names):
    params = dict(handle.model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}

    def restore():
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)

    return restore


def test_rome_single_counterfact_edits(smollm2, smollm2_stats, corpus):
    requests = load_dataset("counterfact-3k", data_dir=str(shared_file("counterfact", "counterfact_3k.json").parents[1]), num=3).requests
    evaluator = Evaluator(smollm2, EvalSettings(protocols=("generation",)))
    baseline = evaluator.baseline(requests)
    editor = EDITORS.get("rome")(smollm2, _config("rome", corpus))
    restore = _restore_after(smollm2, editor.edited_parameters())
    scores = []
    try:
        for r in requests:  # each edit on a fresh model
            editor.edit([r])
            scores.append(evaluator.evaluate([r], baseline)["generation"]["reliability"])
            restore()
    finally:
        restore()
    assert sum(scores) / len(scores) >= 2 / 3, scores


def test_alphaedit_batched_zsre_edits(smollm2, smollm2_stats, corpus):
    """AlphaEdit in steps of 5 on 10 zsRE requests.

    The issue's target (>= 0.8 on 100 requests) is not reached yet on smollm2: 0.7 was
    measured on these 10 requests, so this guards that level, not the target. MEMIT's
    smollm2 settings are unmeasured and have no integration test yet (see benchmarks/).
    """
    data_dir = str(shared_file("zsre", "zsre_3k.json").parents[1])
    requests = load_dataset("zsre-3k", data_dir=data_dir, num=10).requests
    evaluator = Evaluator(smollm2, EvalSettings(protocols=("generation",)))
    baseline = evaluator.baseline(requests)
    editor = EDITORS.get("alphaedit")(smollm2, _config("alphaedit", corpus))
    restore = _restore_after(smollm2, editor.edited_parameters())
    try:
        for start in range(0, len(requests), 5):
            editor.edit(requests[start : start + 5])
        results = evaluator.evaluate(requests, baseline)["generation"]
    finally:
        restore()
    assert results["reliability"] >= 0.6, results
    assert results["locality"] >= 0.5, results
