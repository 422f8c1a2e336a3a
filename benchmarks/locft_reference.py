"""LocFT-BF: editbench's trainer against the released algorithm's loop; prints one JSON object.

Both train the same tensor of the same model on the same zsRE requests with the same
settings (the shipped ``hparams/locft_bf/<model>.yaml``: 25 epochs at most), in one
process on one thread, from the same weights and the same seeded shuffle, so their losses
must agree: the JSON holds both runs' per-epoch mean losses, their largest difference and
the tolerance it is held to, then the seconds of each and the speed ratio
of the whole edit and of an epoch after the first (the trainer builds its prefix cache and
checks packing in the first).

The reference is the loop of the released LocFT code as the paper and
``../shared/docs/editing-reference.md`` (section 3) describe it, written here: every batch
tokenized on the fly and left-padded, the whole model forwarded every step with the
full-vocabulary logits at every position, cross-entropy on the target tokens only (target
with a leading space and an appended EOS, per-sample mean then batch mean), Adam on the one
tensor, a step skipped when its batch loss is below the threshold, and training stopped
when an epoch's mean loss is. Two details differ from the released script, neither of
which changes the math: padding reuses EOS (the script adds a [PAD] token, which would add
a vocabulary row and so change the softmax) and the target mask is read from the attention
masks (counting pad ids would count the appended EOS too once pad == EOS).

Run it alone on a quiet machine: a ratio measured under contention is not a result.

    /work/heavy python benchmarks/locft_reference.py --data-dir ../shared/data --requests 100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from editbench.api import EditRequest
from editbench.config import load_hparams
from editbench.registry import EDITORS
from editbench.tokens import encode_prompt_target

# Per-epoch mean losses of the two runs may differ by float rounding only (the same math in
# another order: left vs right padding, all positions vs target positions); measured on
# smollm2 fp32, 100 zsRE requests, 3 epochs: a few 1e-6.
LOSS_TOLERANCE = 1e-4


def _chunks(seq: Sequence, size: int):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def reference_edit(handle, requests: Sequence[EditRequest], *, modules: Sequence[str], lr: float,
                   batch_size: int, epochs: int, loss_threshold: float,
                   epoch_stop_threshold: float, seed: int, weight_decay: float = 0.0) -> dict[str, Any]:
    """The released LocFT-BF loop (see the module docstring) on ``handle``'s model, in place.

    Returns the batch losses, the per-epoch means (weighted by batch size, as the released
    loop averages them), the optimizer steps taken and how many requests tokenized to other
    ids than editbench's in-context tokenization (0 means both trained on the same tokens).
    """
    model, tok = handle.model, handle.tokenizer
    device = handle.input_device
    names = [handle.resolve_module_name(m) for m in modules]
    params = [p for n in names for p in handle.model.get_submodule(n).parameters()]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    for p in params:
        p.requires_grad_(True)
    rng = random.Random(seed)
    order = list(requests)
    batch_losses: list[float] = []
    epoch_losses: list[float] = []
    steps = 0
    mismatched: set[str] = set()
    stamps = [time.perf_counter()]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for _ in range(epochs):
            rng.shuffle(order)
            total, count = 0.0, 0
            for batch in _chunks(order, batch_size):
                prompts = [r.prompt.rstrip(" \t") for r in batch]
                full = [f"{p} {r.target_new.strip()}{tok.eos_token}" for p, r in zip(prompts, batch, strict=True)]
                enc_prompt = tok(prompts, return_tensors="pt", padding=True)
                enc = tok(full, return_tensors="pt", padding=True)
                ids, mask = enc["input_ids"], enc["attention_mask"]
                prompt_len = enc_prompt["attention_mask"].sum(1)
                pads = ids.shape[1] - mask.sum(1)
                labelled = torch.arange(ids.shape[1])[None, :] >= (pads + prompt_len)[:, None]
                for r, row, pad, n in zip(batch, ids, pads, prompt_len, strict=True):
                    ours = encode_prompt_target(tok, r.prompt, r.target_new, append_eos=True)
                    if row[int(pad):].tolist() != ours.ids or len(ours.prompt_ids) != int(n):
                        mismatched.add(r.case_id)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                nll = nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    ids[:, 1:].reshape(-1).to(device), reduction="none").view(len(batch), -1)
                keep = labelled[:, 1:].to(device)
                loss = ((nll * keep).sum(1) / keep.sum(1)).mean()
                value = loss.item()
                batch_losses.append(value)
                total, count = total + value * len(batch), count + len(batch)
                if value >= loss_threshold:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
            epoch_losses.append(total / count)
            stamps.append(time.perf_counter())
            if epoch_losses[-1] < epoch_stop_threshold:
                break
    finally:
        tok.padding_side = side
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return {"batch_losses": batch_losses, "epoch_losses": epoch_losses, "optimizer_steps": steps,
            "requests_tokenized_differently": len(mismatched),
            "epoch_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)]}


def editbench_edit(handle, requests: Sequence[EditRequest], config) -> dict[str, Any]:
    """editbench's LocFT-BF editor on the same requests; its batch losses recorded as they come."""
    editor = EDITORS.get("locft_bf")(handle, config)
    losses: list[float] = []
    step = editor._step
    editor._step = lambda *args: losses.append(step(*args)) or losses[-1]
    stamps = [time.perf_counter()]
    editor.set_boundary_hook(lambda passes, last: stamps.append(time.perf_counter()))
    info = editor.edit(requests).info
    # The trainer averages an epoch's batch losses unweighted; with equal batches (the
    # request count a multiple of the batch size) that is the released weighted mean.
    per_epoch, n_batches = [], -(-len(requests) // config.batch_size)
    for e in range(info["epochs_run"]):
        chunk = losses[e * n_batches : (e + 1) * n_batches]
        per_epoch.append(sum(chunk) / len(chunk))
    return {"batch_losses": losses, "epoch_losses": per_epoch, "optimizer_steps": info["optimizer_steps"],
            "prefix_cache": info.get("prefix_cache"), "packing": info.get("packing"),
            "epoch_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)]}


def timed(fn, *args, **kwargs) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def compare(handle, requests: Sequence[EditRequest], config, repeats: int = 1) -> dict[str, Any]:
    """Both runs from the same weights (restored after each), ``repeats`` times alternating;
    the fastest time of each side makes the ratio."""
    trained = [handle.resolve_module_name(m) for m in config.modules]
    restore = handle.snapshot([n for n, _ in handle.model.named_parameters()
                               if any(n.startswith(t + ".") for t in trained)])
    settings = dict(modules=config.modules, lr=config.lr, batch_size=config.batch_size,
                    epochs=config.epochs, loss_threshold=config.loss_threshold,
                    epoch_stop_threshold=config.epoch_stop_threshold, seed=config.seed,
                    weight_decay=config.weight_decay)
    # Warm-up (allocator, kernels, tokenizer caches), paid by neither measured run.
    warm = requests[: config.batch_size]
    reference_edit(handle, warm, **{**settings, "epochs": 1})
    restore()
    editbench_edit(handle, warm, _with(config, epochs=1))
    restore()
    times: dict[str, list[float]] = {"editbench": [], "reference": []}
    runs: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        runs["editbench"], seconds = timed(editbench_edit, handle, requests, config)
        times["editbench"].append(seconds)
        restore()
        runs["reference"], seconds = timed(reference_edit, handle, requests, **settings)
        times["reference"].append(seconds)
        restore()
    ours, ref = runs["editbench"], runs["reference"]
    n = min(len(ours["epoch_losses"]), len(ref["epoch_losses"]))
    epoch_diff = max(abs(a - b) for a, b in zip(ours["epoch_losses"][:n], ref["epoch_losses"][:n], strict=True))
    batch_diff = max(abs(a - b) for a, b in zip(ours["batch_losses"], ref["batch_losses"], strict=False))
    best = {k: min(v) for k, v in times.items()}
    # After the first epoch (the trainer builds its prefix cache and checks packing there).
    steady = {k: statistics.median(runs[k]["epoch_seconds"][1:] or runs[k]["epoch_seconds"]) for k in runs}
    return {
        "epochs_run": {"editbench": len(ours["epoch_losses"]), "reference": len(ref["epoch_losses"])},
        "optimizer_steps": {"editbench": ours["optimizer_steps"], "reference": ref["optimizer_steps"]},
        "epoch_losses": {"editbench": ours["epoch_losses"], "reference": ref["epoch_losses"]},
        "max_abs_epoch_loss_diff": epoch_diff,
        "max_abs_batch_loss_diff": batch_diff,
        "loss_tolerance": LOSS_TOLERANCE,
        "losses_equal": (epoch_diff <= LOSS_TOLERANCE and len(ours["epoch_losses"]) == len(ref["epoch_losses"])
                         and ours["optimizer_steps"] == ref["optimizer_steps"]),
        "requests_tokenized_differently": ref["requests_tokenized_differently"],
        "prefix_cache": ours["prefix_cache"], "packing": ours["packing"],
        "seconds": {k: [round(s, 2) for s in v] for k, v in times.items()},
        "epoch_seconds": {k: [round(s, 3) for s in runs[k]["epoch_seconds"]] for k in runs},
        "seconds_per_epoch": {k: round(best[k] / len(runs[k]["epoch_losses"]), 3) for k in best},
        "speed_ratio": round(best["reference"] / best["editbench"], 2),
        "steady_epoch_seconds": {k: round(v, 3) for k, v in steady.items()},
        "steady_epoch_speed_ratio": round(steady["reference"] / steady["editbench"], 2),
    }


def _with(config, **changes):
    import dataclasses

    out = dataclasses.replace(config, **changes)
    out.validate()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=100,
                        help="zsRE requests (a multiple of the batch size keeps the epoch means comparable)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="at most this many epochs (default: the shipped hparams', 25, with their early stop)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating timed runs of each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a shipped LocFT-BF hparam (YAML value), e.g. modules=[mlp_down@6]")
    args = parser.parse_args(argv)

    import yaml

    from editbench.data import load_dataset
    from editbench.models import load_model

    torch.set_num_threads(args.threads)
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config, resolved = load_hparams(EDITORS.get("locft_bf").config_class, "locft_bf", args.model, overrides)
    requests = load_dataset("zsre-3k", data_dir=args.data_dir, num=args.requests).requests
    handle = load_model(args.model, device="cpu")
    load_before = os.getloadavg()
    out = {
        "model": args.model, "dtype": str(next(handle.model.parameters()).dtype).removeprefix("torch."),
        "requests": len(requests), "torch_threads": torch.get_num_threads(),
        "hparams": {k: resolved[k] for k in ("modules", "lr", "batch_size", "epochs", "loss_threshold",
                                             "epoch_stop_threshold", "seed")},
        **compare(handle, requests, config, args.repeats),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
