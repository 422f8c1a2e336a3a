"""ROME / MEMIT / AlphaEdit on the real smollm2-135m with the shared data (generation protocol).

ROME (10 CounterFact edits, each on a fresh model), MEMIT and AlphaEdit (10 zsRE requests)
run at CI size, guarding the measured level; ROME's 20-edit target and their
full-size targets (100 zsRE requests: MEMIT in one step, AlphaEdit in steps of 20, both
>= 0.8 reliability) and the 500-request sequential comparison are marked ``slow`` (tens of
minutes on 2 CPU cores; EDITBENCH_SLOW=1 runs them). ``benchmarks/locate_editors.py``
reports the same runs with timings. The layer statistics are computed once per machine
(cached under $EDITBENCH_STATS_CACHE or the user cache) by a session fixture, in one pass
for the layers of all three editors.
"""

from __future__ import annotations

import os

import pytest

from conftest import shared_file
from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.registry import EDITORS
from editbench.run import edit_and_evaluate

pytestmark = pytest.mark.integration

# CI-size guards (first 10 zsRE requests of zsre_3k.json): the measured level minus a margin.
MEMIT_CI_RELIABILITY = 0.8  # measured 1.00 / 0.40 / 1.00 (rel / gen / loc; layers 10-13: 1.00 / 0.50 / 0.80)
ALPHAEDIT_CI_RELIABILITY = 0.8  # measured 1.00 / 0.50 / 0.90, steps of 5 (layers 8-11: 1.00 / 0.40 / 1.00)
EMMET_CI_RELIABILITY = 0.8  # measured 1.00 / 0.20 / 0.90 (20 requests, one step; layers 10-13: 1.00 / 0.50 / 0.95)
# The 500-request comparison uses 20 target steps instead of 60 (CPU budget), the same for both.
SEQUENTIAL_OVERRIDES: dict = {"v_num_grad_steps": 20}


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
    """One statistics pass for every layer any of the four editors edits (cached)."""
    from editors._locate.stats import resolve_corpus, second_moments

    configs = [_config(e, corpus) for e in ("rome", "memit", "alphaedit", "emmet")]
    c0 = configs[0]
    layers = sorted({layer for c in configs for layer in c.layers})
    names = [smollm2.module_name("mlp_down", layer) for layer in layers]
    _, info = second_moments(smollm2, names, resolve_corpus(corpus), c0.stats_tokens,
                             c0.stats_seq_len, c0.stats_batch_size, c0.stats_dtype)
    return info


def _zsre(num: int):
    data_dir = str(shared_file("zsre", "zsre_3k.json").parents[1])
    return load_dataset("zsre-3k", data_dir=data_dir, num=num).requests


def _edit_and_score(handle, editor_name: str, corpus: str, requests, step: int,
                    baseline=None, **overrides):
    """Edit ``requests`` in steps of ``step`` on one editor, evaluate once after all edits,
    then restore the weights (``baseline``: pre-edit answers shared between editors)."""
    evaluator = Evaluator(handle, EvalSettings(protocols=("generation",)))
    if baseline is None:
        baseline = evaluator.baseline(requests)
    editor = EDITORS.get(editor_name)(handle, _config(editor_name, corpus, **overrides))
    results = edit_and_evaluate(editor, requests, step, evaluator, baseline)[0]["generation"]
    print(editor_name, len(requests), step, {k: results[k] for k in ("reliability", "generalization", "locality")})
    return results


def test_rome_single_counterfact_edits(smollm2, smollm2_stats, corpus):
    """10 single CounterFact edits, each on a fresh model, >= 0.9 (the 20-edit target is
    ``test_rome_20_single_counterfact_edits``, slow)."""
    _rome_single_edits(smollm2, corpus, 10)


@pytest.mark.slow
def test_rome_20_single_counterfact_edits(smollm2, smollm2_stats, corpus):
    _rome_single_edits(smollm2, corpus, 20)


def _rome_single_edits(smollm2, corpus, num: int) -> None:
    data_dir = str(shared_file("counterfact", "counterfact_3k.json").parents[1])
    requests = load_dataset("counterfact-3k", data_dir=data_dir, num=num).requests
    evaluator = Evaluator(smollm2, EvalSettings(protocols=("generation",)))
    baseline = evaluator.baseline(requests)
    editor = EDITORS.get("rome")(smollm2, _config("rome", corpus))
    scores = [  # each edit on a fresh model
        edit_and_evaluate(editor, [r], 1, evaluator, baseline)[0]["generation"]["reliability"]
        for r in requests
    ]
    print("rome reliability", sum(scores) / len(scores))
    assert sum(scores) / len(scores) >= 0.9, scores


def test_memit_one_step_zsre_ci_size(smollm2, smollm2_stats, corpus):
    results = _edit_and_score(smollm2, "memit", corpus, _zsre(10), 10)
    assert results["reliability"] >= MEMIT_CI_RELIABILITY, results
    assert results["locality"] >= 0.6, results


def test_emmet_one_step_zsre(smollm2, smollm2_stats, corpus):
    """20 zsRE requests in one EMMET step, end to end (targets, equality-constrained solve,
    generation protocol)."""
    results = _edit_and_score(smollm2, "emmet", corpus, _zsre(20), 20)
    assert results["reliability"] >= EMMET_CI_RELIABILITY, results
    assert results["locality"] >= 0.6, results


def test_alphaedit_steps_zsre_ci_size(smollm2, smollm2_stats, corpus):
    results = _edit_and_score(smollm2, "alphaedit", corpus, _zsre(10), 5)
    assert results["reliability"] >= ALPHAEDIT_CI_RELIABILITY, results
    assert results["locality"] >= 0.6, results


@pytest.mark.slow
def test_memit_full_size_zsre(smollm2, smollm2_stats, corpus):
    """The issue's target: the first 100 zsRE requests in one MEMIT step, >= 0.8 reliability.
    Measured 0.89 / 0.26 / 0.85 with the smollm2 hparams (context_key_weight 1); 0.73 / 0.25 /
    0.83 with the original objective (context_key_weight 0)."""
    memit = _edit_and_score(smollm2, "memit", corpus, _zsre(100), 100)
    assert memit["reliability"] >= 0.8, memit


@pytest.mark.slow
def test_alphaedit_full_size_zsre(smollm2, smollm2_stats, corpus):
    """The issue's target: the same 100 requests in AlphaEdit steps of 20, >= 0.8 reliability
    (measured 0.90 / 0.30 / 0.83; 0.83 / 0.26 / 0.85 without context keys)."""
    alpha = _edit_and_score(smollm2, "alphaedit", corpus, _zsre(100), 20)
    assert alpha["reliability"] >= 0.8, alpha


@pytest.mark.slow
@pytest.mark.xfail(reason="the AlphaEdit-above-MEMIT claim is not shown on smollm2: after 500 requests MEMIT (key cache) "
                   "0.472 / 0.108 / 0.802, AlphaEdit 0.40 / 0.074 / 0.708; its null space at the edited "
                   "layers holds the locality prompts' keys as much as the edit keys "
                   "(benchmarks/nullspace_layers.py)", strict=False)
def test_sequential_alphaedit_keeps_more_than_memit(smollm2, smollm2_stats, corpus):
    """500 zsRE requests in steps of 50: AlphaEdit should keep reliability and locality above
    MEMIT's (the null-space projection protects earlier edits and unrelated keys). Measured
    on smollm2 (first 500 of zsre_3k, 20 target steps, both YAMLs with context_key_weight 1),
    reliability / generalization / locality after 100, 250 and 500 requests:
    MEMIT 0.63/0.13/0.88, 0.636/0.136/0.876, 0.472/0.108/0.802 (2263 s of editing);
    AlphaEdit 0.63/0.17/0.82, 0.576/0.14/0.82, 0.40/0.074/0.708 (2239 s).
    (context_key_weight 0: MEMIT 0.404/0.094/0.786, AlphaEdit 0.352/0.06/0.77 after 500.)
    MEMIT here keeps every earlier step's keys in its solve (the issue's sequential mode),
    which protects earlier edits as AlphaEdit's C_prev does, so the two differ only in the
    projection. At layers 3-5 the "null" space (threshold 0.02) holds 61-73% of the edit keys'
    energy and 57-67% of the locality prompts' (benchmarks/nullspace_layers.py): it cannot
    pass one and block the other; threshold 0.005 blocks both (reliability 0.31 after 100).
    The reference reports the same reversal for Qwen2.5-7B (MEMIT 39.6 vs AlphaEdit 2.7
    reliability after 3K zsRE edits); the claim is from LLaMA3-8B."""
    requests = _zsre(500)
    baseline = Evaluator(smollm2, EvalSettings(protocols=("generation",))).baseline(requests)
    memit = _edit_and_score(smollm2, "memit", corpus, requests, 50, baseline, **SEQUENTIAL_OVERRIDES)
    alpha = _edit_and_score(smollm2, "alphaedit", corpus, requests, 50, baseline, **SEQUENTIAL_OVERRIDES)
    assert alpha["reliability"] > memit["reliability"], (alpha, memit)
    assert alpha["locality"] > memit["locality"], (alpha, memit)
