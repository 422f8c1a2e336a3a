"""Known-fact locality on the real smollm2-135m: it sees an edit that destroys facts the
model knew, where locality on raw zsRE questions (mostly "an empty answer stayed empty")
does not."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA, shared_file
from editbench.config import build_config
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.registry import EDITORS
from editbench.run import edit_sequentially

pytestmark = pytest.mark.integration

# The LocFT-BF point smollm2 shipped before known-fact locality (mlp_down@20, chosen on zsRE
# locality): it edited every embedded fact and overwrote the facts the model knew.
TOO_HARD = {"modules": ["mlp_down@20"], "lr": 5e-3, "batch_size": 20, "epochs": 25,
            "loss_threshold": 0.01, "epoch_stop_threshold": 0.01}


def test_known_fact_locality_sees_facts_an_edit_destroyed(smollm2):
    shared_file("zsre", "zsre_3k.json")
    facts = load_dataset("embedded", num=20).requests
    zsre = load_dataset("zsre-3k", data_dir=str(SHARED_DATA), num=50).requests
    evaluator = Evaluator(smollm2, EvalSettings(max_new_tokens=16))
    pre_facts, pre_zsre = evaluator.baseline(facts), evaluator.baseline(zsre)
    cls = EDITORS.get("locft_bf")
    editor = cls(smollm2, build_config(cls.config_class, TOO_HARD, "the too-hard point"))
    restore = smollm2.snapshot(editor.edited_parameters())
    try:
        edit_sequentially(editor, facts, len(facts))
        facts_gen = evaluator.evaluate(facts, pre_facts)["generation"]
        on_zsre = evaluator.evaluate(zsre, pre_zsre)["generation"]
    finally:
        restore()
    # Every embedded locality prompt is a fact the model knows; smollm2 answers (almost) no
    # raw zsRE question with its gold answer.
    assert facts_gen["known_pre"] > 0.9 and on_zsre.get("known_pre", 0.0) < 0.1
    assert facts_gen["reliability"] >= 0.9
    # The edit destroyed most known facts (measured: 0.21 kept) while zsRE's locality still
    # reads 0.72, every point of it an empty answer that stayed empty (its 28% non-empty
    # answers all changed): the old signal cannot see the damage, the new one does.
    assert facts_gen["locality_known"] < 0.4
    assert on_zsre["locality"] > 0.6 and on_zsre["locality_nonempty"] < 0.2
    assert on_zsre["locality"] - facts_gen["locality_known"] > 0.35
