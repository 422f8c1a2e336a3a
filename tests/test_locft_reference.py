"""benchmarks/locft_reference.py: the released LocFT-BF loop and editbench's trainer compute
the same losses (tiny random models; the smollm2 timing is the benchmark's own run)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import FACTS, REPO, make_tiny
from editbench.api import EditRequest
from editors.locft_bf import LocFTBFConfig


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("locft_reference", REPO / "benchmarks" / "locft_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


REQUESTS = [EditRequest(case_id=str(f["case_id"]), prompt=f["prompt"], subject=f["subject"],
                        target_new=f["target_new"]) for f in FACTS]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
@pytest.mark.parametrize("module", ["mlp_down@2", "mlp_down@0"])
def test_the_released_loop_and_the_trainer_train_to_the_same_losses(reference, family, module,
                                                                    tiny_tokenizer):
    """Left padding, every position's full-vocabulary logits and the whole model per step
    against packed batches, target positions only and the prefix cache: the same seeded
    batches, the same skipped steps and epoch means (rotary positions are relative, so
    left padding moves nothing)."""
    config = LocFTBFConfig(modules=[module], lr=1e-2, batch_size=2, epochs=6)
    out = reference.compare(make_tiny(family, tiny_tokenizer), REQUESTS, config)
    assert out["losses_equal"], out
    assert out["max_abs_batch_loss_diff"] < 1e-5
    assert out["requests_tokenized_differently"] == 0
    assert out["optimizer_steps"] == {"editbench": 18, "reference": 18}
    assert out["prefix_cache"] == ("layer 2, 0.0 MB on cpu" if module.endswith("@2")
                                   else "off: the first layer is trained")
    assert out["speed_ratio"] > 0


def test_the_step_skip_and_the_early_stop_agree(reference, tiny_tokenizer):
    # Thresholds near where a tiny random model's loss levels off (~5.4: its untrained output
    # layer caps the logits): some batches are skipped and training stops early, in both.
    config = LocFTBFConfig(modules=["block@3"], lr=3e-2, batch_size=2, epochs=40,
                           loss_threshold=5.6, epoch_stop_threshold=5.6)
    out = reference.compare(make_tiny("llama", tiny_tokenizer), REQUESTS, config)
    assert out["losses_equal"], out
    runs = out["epochs_run"]
    assert runs["editbench"] == runs["reference"] < 40
    assert out["optimizer_steps"]["editbench"] == out["optimizer_steps"]["reference"] < 3 * runs["editbench"]
