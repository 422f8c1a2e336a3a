"""Seconds per LocFT-BF epoch with and without the frozen-prefix cache; prints JSON.

300 zsRE requests (``zsre-3k``), smollm2-135m, ``mlp_down@20`` (layer 20 of 30), batch 20,
no skipped steps: each setting trains the same weights from the same start, once with
``prefix_cache: false`` and once with ``prefix_cache: true``. Reported: training seconds
per epoch (the cache's one-off build apart, and amortised over the epochs run), the
speed-up, every batch loss of both runs and their largest difference, the largest
difference of the trained weights, the cache's size, and peak memory (RSS on a CPU,
allocated memory on a GPU).

``--tiny`` swaps smollm2 for a random 30-layer LLaMA (hidden 64) with a tokenizer trained
on the requests: a smoke test of this script in seconds, not a measurement.
``--extras`` also times the default smollm2 LocFT-BF edit of the first 100 requests and the
evaluation throughput of each protocol.

Usage: python benchmarks/finetune_speed.py [--data-dir ../shared/data] [--device cpu]
       [--epochs 2] [--requests 300] [--tiny] [--extras]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.registry import EDITORS

SETTING = {"modules": ["mlp_down@20"], "batch_size": 20, "loss_threshold": 0.0,
           "epoch_stop_threshold": 0.0}


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_llama(requests, device: str):
    """A random 30-layer LLaMA and a BPE tokenizer trained on the requests' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from editbench.models import ModelPreset, family_templates, prepare

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([f"{r.prompt} {r.target_new}" for r in requests], trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=30, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, eos_token_id=eos, bos_token_id=eos,
                                  pad_token_id=eos)
    model = AutoModelForCausalLM.from_config(config).to(device)
    preset = ModelPreset(name="tiny-llama-30", hf_id="tiny-llama-30", family="llama",
                         templates=family_templates()["llama"], num_layers=30, dtype="float32",
                         device_map=None)
    return prepare(model, tok, preset, identity="tiny-llama-30@seed0")


def train(handle, config, requests) -> dict[str, Any]:
    """One edit step from the current weights; its batch losses, timings and weights."""
    cls = EDITORS.get("locft_bf")
    editor = cls(handle, config)
    losses: list[float] = []
    step, build = editor._step, editor._prefix_cache
    built: list[float] = []

    def timed_build(*args):
        t0 = time.perf_counter()
        out = build(*args)
        built.append(time.perf_counter() - t0)
        return out

    editor._step = lambda *args: losses.append(step(*args)) or losses[-1]
    editor._prefix_cache = timed_build
    if handle.input_device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    info = editor.edit(requests).info
    if handle.input_device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "build_s": sum(built), "losses": losses, "info": info,
            "weights": {k: p.detach().float().cpu().clone() for k, p in editor.params.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tiny", action="store_true", help="a random 30-layer LLaMA (smoke test)")
    parser.add_argument("--extras", action="store_true",
                        help="also the default 100-request edit and evaluation throughput")
    args = parser.parse_args(argv)

    requests = load_dataset("zsre-3k", data_dir=args.data_dir, num=args.requests).requests
    if args.tiny:
        handle = tiny_llama(requests, args.device)
    else:
        from editbench.models import load_model

        handle = load_model("smollm2-135m", device=args.device)
    cls = EDITORS.get("locft_bf")
    model_key = "smollm2-135m"
    trained = handle.resolve_module_name(SETTING["modules"][0])
    restore = handle.snapshot([n for n, _ in handle.model.named_parameters() if n.startswith(trained + ".")])
    out: dict[str, Any] = {
        "model": handle.preset.name, "device": args.device, "torch_threads": torch.get_num_threads(),
        "requests": len(requests), "epochs": args.epochs, **SETTING,
    }

    def config(**keys):
        return load_hparams(cls.config_class, "locft_bf", model_key, {**SETTING, **keys})[0]

    # Warm-up (allocator, kernels) so that neither measured run pays it.
    train(handle, config(epochs=1, prefix_cache=False), requests[: SETTING["batch_size"]])
    restore()
    runs = {}
    for cache in (False, True):
        runs[cache] = train(handle, config(epochs=args.epochs, prefix_cache=cache), requests)
        restore()
    plain, cached = runs[False], runs[True]
    for name, run in (("uncached", plain), ("cached", cached)):
        out[name] = {
            "seconds_per_epoch": round((run["seconds"] - run["build_s"]) / args.epochs, 3),
            "seconds_per_epoch_with_build": round(run["seconds"] / args.epochs, 3),
            "cache_build_s": round(run["build_s"], 3),
            "prefix_cache": run["info"]["prefix_cache"],
            "epoch_losses": run["info"]["epoch_losses"],
        }
    out["speedup_per_epoch"] = round(out["uncached"]["seconds_per_epoch"] / out["cached"]["seconds_per_epoch"], 2)
    out["speedup_with_build"] = round(plain["seconds"] / cached["seconds"], 2)
    out["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(plain["losses"], cached["losses"], strict=True))
    out["max_abs_weight_diff"] = max(float((plain["weights"][k] - cached["weights"][k]).abs().max())
                                     for k in plain["weights"])
    out["batch_losses"] = {"uncached": plain["losses"], "cached": cached["losses"]}

    if args.extras and not args.tiny:
        extras(handle, requests, out)
    out["peak_memory_mb"] = round(peak_memory_mb(args.device), 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def extras(handle, requests, out: dict[str, Any]) -> None:
    """The default smollm2 LocFT-BF edit of 100 requests, and evaluation throughput."""
    from editbench.evaluate import EvalSettings, Evaluator

    cls = EDITORS.get("locft_bf")
    config, resolved = load_hparams(cls.config_class, "locft_bf", "smollm2-135m")
    editor = cls(handle, config)
    back = handle.snapshot(editor.edited_parameters())
    t0 = time.perf_counter()
    stats = editor.edit(requests[:100])
    out["locft_bf_default_edit_s_100req"] = round(time.perf_counter() - t0, 1)
    out["locft_bf_default_hparams"] = {k: resolved[k] for k in ("modules", "lr", "batch_size", "epochs")}
    out["locft_bf_default_epochs_run"] = stats.info["epochs_run"]
    back()
    for protocol in ("generation", "teacher_forced"):
        ev = Evaluator(handle, EvalSettings(protocols=(protocol,), batch_size=64))
        n_prompts = sum(1 + len(r.rephrase_prompts) + len(r.locality) for r in requests)
        baseline = ev.baseline(requests)
        t0 = time.perf_counter()
        ev.evaluate(requests, baseline)
        out[f"eval_{protocol}_prompts_per_s"] = round(n_prompts / (time.perf_counter() - t0), 1)


if __name__ == "__main__":
    sys.exit(main())
