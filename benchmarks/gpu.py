"""Speed and CPU parity where users run editbench: random-weight models of real shapes on one
device, one JSON file and one table; prepared to run unattended on one H100 in <= 8 minutes.

Speed does not depend on the weights' values, so every model here is built directly on the
device (inside ``torch.device``, never first on the CPU) from the architecture numbers of
its preset (``editbench/presets/<model>.yaml``: the public config.json of SmolLM2-135M,
Qwen2.5-7B and Llama-3-8B), randomly initialised, in bfloat16 on a GPU. Requests are
editbench's seeded synthetic ones, tokenized by a byte-level BPE trained here on their text
(~11 tokens per prompt + target, where SmolLM2's tokenizer gives 10.4). Nothing is
downloaded and no weights are read: the script needs torch and transformers only.

Sections, in order of value (each checks the time left and records itself as skipped, with
the reason, rather than overrun the budget; a section that fails is recorded and the rest
still run; the JSON is rewritten after every section, so a killed run keeps what finished):

- ``parity``: tiny models of the real families (LLaMA from SmolLM2's config, Qwen2 from
  Qwen2.5-7B's) get the same LocFT-BF and MEMIT edits on the CPU (float32, the reference)
  and on the device, with float32 and with bfloat16 master weights; discrete results
  (epochs, steps, every evaluation metric) must be equal, losses within the stated
  tolerance. On a CPU-only machine the device is the CPU too, and the section says so.
- per model (``--models``, default qwen2.5-7b, llama3-8b, smollm2-135m), after building it:
  ``locft``: LocFT-BF through the registry's ``locft_bf`` editor at T requests in one step
  (the paper's setting: batch 100; no step skipped, so every epoch costs what the first
  does), with and without the frozen-prefix cache: seconds per epoch, per edit-epoch, and
  projected seconds per edit for 25 epochs (the cache build and checks once, then 25
  steady epochs); ``eval``: :class:`editbench.evaluate.Evaluator` throughput in prompts/s
  for generation and teacher-forced scoring (random weights never stop early: generation
  always runs its 32 new tokens, the worst case); ``memit`` / ``alphaedit``: the registry's
  editors on one step of a few requests with the shipped hparams, their statistics from a
  few thousand tokens of random text, timed apart from the edit (``setup_s``).
- peak GPU memory (``torch.cuda.max_memory_allocated``) of every section.

Usage:
    python benchmarks/gpu.py --output "$OUT/gpu.json"                # one H100, <= 8 minutes
    python benchmarks/gpu.py --device cpu --quick --output gpu.json  # CI: tiny shapes, < 1 minute
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The budget counts from here: the heavy imports below are part of the 8 minutes.
START = time.monotonic()

# Run from a checkout that is not installed (the GPU machine receives the working tree only).
if importlib.util.find_spec("editbench") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("EDITBENCH_PROGRESS", "0")

import torch  # noqa: E402

import editors.alphaedit  # noqa: E402,F401  (self-registering: no entry points needed)
import editors.locft_bf  # noqa: E402,F401
import editors.memit  # noqa: E402,F401
from editbench.api import EditRequest  # noqa: E402
from editbench.config import load_hparams  # noqa: E402
from editbench.data.synthetic import generate  # noqa: E402
from editbench.evaluate import EvalSettings, Evaluator  # noqa: E402
from editbench.models import DTYPES, ModelHandle, get_preset, prepare  # noqa: E402
from editbench.registry import EDITORS  # noqa: E402

PAPER_EPOCHS = 25
PAPER_BATCH = 100
# Tiny shapes: the real family and numbers (rope theta, norms, tying, biases) at width 64
# and the trained tokenizer's vocabulary (vocab_size 0: the tokenizer's size).
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 0}
# Parity tolerances. Losses: relative to max(1, |loss|). float32 runs the same math in
# another kernel order (~1e-6 apart), so every count and metric must be equal. bfloat16
# rounds every matrix product to 8 bits of mantissa: an argmax that was a near-tie may flip,
# so a metric may move by one request's worth (1 / PARITY_REQUESTS) and a count of epochs
# or steps by 10%; a device bug (a lost cache, an unapplied update) moves them by far more.
PARITY_REQUESTS = 8
PARITY_TOLERANCE = {"float32": {"loss_rtol": 1e-3, "metric_atol": 0.0, "count_rtol": 0.0},
                    "bfloat16": {"loss_rtol": 5e-2, "metric_atol": 1 / PARITY_REQUESTS, "count_rtol": 0.1}}


class Skip(Exception):
    """A section that would not finish within the time left."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = START + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def require(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skip(f"{what} needs about {seconds:.0f} s, {max(0.0, self.left()):.0f} s left")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now(device: str) -> float:
    sync(device)
    return time.perf_counter()


def peak_memory_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def matmul_tflops(device: str, dtype: torch.dtype, n: int) -> float:
    """Measured throughput of one square matrix product (sizes the sections' estimates)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    t0 = now(device)
    reps = 3
    for _ in range(reps):
        a @ b
    seconds = now(device) - t0
    return 2 * n**3 * reps / seconds / 1e12


def eigh_seconds(device: str, n: int) -> float:
    """Seconds of one float64 symmetric eigendecomposition of size ``n`` (AlphaEdit's
    projector costs one per edited layer, at the MLP's width: extrapolated as n^3)."""
    a = torch.randn(n, n, device=device, dtype=torch.float64)
    a = a @ a.T
    torch.linalg.eigh(a)
    t0 = now(device)
    torch.linalg.eigh(a)
    return now(device) - t0


def disk_gb_per_s(folder: Path) -> float:
    """Hashing and writing a float32 matrix the way the statistics cache does (GB/s)."""
    from editors._locate.stats import save_cached

    t = torch.randn(2048, 8192)  # 64 MiB
    t0 = time.perf_counter()
    save_cached(folder / "probe.pt", {"probe": 1}, t, {})
    seconds = time.perf_counter() - t0
    (folder / "probe.pt").unlink()
    return t.numel() * 4 / 1e9 / seconds


# -- tokenizer, requests, random text ----------------------------------------------------------


def train_tokenizer(requests: Sequence[EditRequest], vocab: int = 1500):
    """A byte-level BPE trained on the requests' text; EOS ``<eos>`` (also the padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [f"{r.prompt} {r.target_new}" for r in requests]
    texts += [p for r in requests for p in r.rephrase_prompts]
    texts += [f"{loc.prompt} {loc.answer}" for r in requests for loc in r.locality]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    tok.pad_token = tok.eos_token
    return tok


def random_text(path: Path, requests: Sequence[EditRequest], words: int, seed: int = 0) -> Path:
    """Paragraphs of 40 words drawn at random from the requests' text (the statistics
    corpus; short enough that no statistics sequence length cuts one)."""
    rng = random.Random(seed)
    pool = sorted({w for r in requests for w in f"{r.prompt} {r.target_new}".split()})
    paragraphs = []
    for _ in range(max(1, words // 40)):
        paragraphs.append(" ".join(rng.choice(pool) for _ in range(40)) + ".")
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


# -- models ------------------------------------------------------------------------------------


def build_model(name: str, tokenizer, device: str, dtype: str, shape: dict[str, Any] | None = None,
                seed: int = 0) -> ModelHandle:
    """A random-weight model of preset ``name``'s architecture (``shape`` overriding some of
    its numbers), built on ``device`` in ``dtype`` and prepared as ``load_model`` prepares
    a checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM

    preset = get_preset(name)
    if not preset.architecture:
        raise Skip(f"preset {name!r} has no architecture numbers")
    arch = {**preset.architecture, **(shape or {})}
    arch["vocab_size"] = max(int(arch["vocab_size"]), len(tokenizer))  # ids must fit
    eos = tokenizer.eos_token_id
    # No pad_token_id: it would make the embedding's padding row (EOS here) a constant zero,
    # which no trained checkpoint has; the tokenizer pads with EOS and masks it anyway.
    config = AutoConfig.for_model(preset.family, **{"eos_token_id": eos, "bos_token_id": eos, **arch})
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.generation_config.pad_token_id = eos
    preset = dataclasses.replace(preset, num_layers=arch["num_hidden_layers"], dtype=dtype,
                                 device_map=None, gguf=None)
    shape_id = ",".join(f"{k}={v}" for k, v in sorted((shape or {}).items()))
    return prepare(model, tokenizer, preset, f"random:{name}[{shape_id}]@seed{seed}", dtype=dtype,
                   device=device)


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def param_count(handle: ModelHandle) -> int:
    return sum(p.numel() for p in handle.model.parameters())


# -- LocFT-BF ------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised from the epoch boundary when the section's time is up."""


def locft(ctx: Context, handle: ModelHandle, allowed: float) -> dict[str, Any]:
    """Seconds per epoch of one LocFT-BF step over T requests, with and without the cache."""
    name = handle.preset.name
    requests = ctx.requests[: ctx.args.requests]
    batch = min(PAPER_BATCH, len(requests)) if not ctx.args.quick else 10
    cls = EDITORS.get("locft_bf")
    config, resolved = load_hparams(cls.config_class, "locft_bf", name, {
        "batch_size": batch, "epochs": ctx.args.epochs, "loss_threshold": 0.0,
        "epoch_stop_threshold": 0.0})
    trained = [handle.resolve_module_name(m) for m in config.modules]
    restore = handle.snapshot([n for n, _ in handle.model.named_parameters()
                               if any(n.startswith(t + ".") for t in trained)])
    tokens = sum(len(handle.tokenizer(f"{r.prompt} {r.target_new}")["input_ids"]) + 1 for r in requests)
    out: dict[str, Any] = {"requests": len(requests), "batch_size": batch, "modules": config.modules,
                           "lr": config.lr, "tokens_per_request": round(tokens / len(requests), 2),
                           "note": "no step skipped (loss thresholds 0): every epoch trains all batches"}
    deadline = time.monotonic() + allowed
    for cache in (True, False):
        key = "cached" if cache else "uncached"
        if time.monotonic() > deadline:
            out[key] = {"status": "skipped", "reason": "section time used up"}
            continue
        editor = cls(handle, dataclasses.replace(config, prefix_cache=cache))
        stamps: list[float] = []

        def hook(passes: int, last: bool, stamps=stamps) -> None:
            stamps.append(now(ctx.device))
            # Stop once another epoch would pass the deadline (two epochs are the minimum).
            if len(stamps) >= 2 and not last and time.monotonic() + (stamps[-1] - stamps[-2]) > deadline:
                raise _Stop

        editor.set_boundary_hook(hook)
        reset_peak(ctx.device)
        t0 = now(ctx.device)
        info: dict[str, Any] = {}
        try:
            info = editor.edit(requests).info
        except _Stop:
            info = {"stopped": f"after epoch {len(stamps)}: section time used up"}
        finally:
            restore()
        epochs = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)]
        steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
        setup = epochs[0] - steady  # the first epoch also built the cache and checked packing
        out[key] = {
            "epoch_seconds": [round(s, 3) for s in epochs],
            "seconds_per_epoch": round(steady, 4),
            "seconds_per_edit_epoch": steady / len(requests),
            "first_epoch_extra_s": round(setup, 3),
            "projected_seconds_per_edit": (max(setup, 0.0) + PAPER_EPOCHS * steady) / len(requests),
            "peak_memory_gb": peak_memory_gb(ctx.device),
            **{k: info[k] for k in ("prefix_cache", "packing", "stopped") if k in info},
        }
    out["shipped_hparams"] = {k: resolved[k] for k in ("modules", "lr")}
    return out


# -- evaluation ----------------------------------------------------------------------------------


def evaluation(ctx: Context, handle: ModelHandle, allowed: float) -> dict[str, Any]:
    """Prompts per second of the evaluator's pre-edit and post-edit passes, per protocol."""
    tokens = 8 if ctx.args.quick else 32  # the runner's default: 32
    out: dict[str, Any] = {"max_new_tokens": tokens,
                           "note": f"random weights never emit a stop token: generation runs all {tokens} tokens"}
    cases = [(p, bs) for bs in ctx.eval_batches for p in ("teacher_forced", "generation")]
    deadline = time.monotonic() + allowed
    for k, (protocol, bs) in enumerate(cases):
        key = f"{protocol}@batch{bs}"
        share = (deadline - time.monotonic()) / (len(cases) - k)
        if share <= 0:
            out[key] = {"status": "skipped", "reason": "section time used up"}
            continue
        ev = Evaluator(handle, EvalSettings(protocols=(protocol,), batch_size=bs, max_new_tokens=tokens))
        warm = ctx.requests[: min(bs, 16)]
        t0 = now(ctx.device)
        ev.evaluate(warm, ev.baseline(warm))  # warm-up, and a (low) rate estimate
        rate = 2 * len(warm) / (now(ctx.device) - t0)  # requests/s over both passes
        n = max(min(bs, 16), min(ctx.args.eval_requests, int(rate * share * 0.8) // bs * bs))
        requests = ctx.requests[16 : 16 + n]
        prompts = sum(1 + len(r.rephrase_prompts) + len(r.locality) for r in requests)
        reset_peak(ctx.device)
        t0 = now(ctx.device)
        baseline = ev.baseline(requests)
        t1 = now(ctx.device)
        ev.evaluate(requests, baseline)
        t2 = now(ctx.device)
        out[key] = {"requests": n, "prompts": prompts,
                    "baseline_prompts_per_s": round(prompts / (t1 - t0), 1),
                    "evaluate_prompts_per_s": round(prompts / (t2 - t1), 1),
                    "peak_memory_gb": peak_memory_gb(ctx.device)}
    return out


# -- MEMIT / AlphaEdit ---------------------------------------------------------------------------


def locate_overrides(ctx: Context) -> dict[str, Any]:
    keys: dict[str, Any] = {"stats_corpus": str(ctx.corpus), "stats_tokens": ctx.stats_tokens,
                            "stats_seq_len": 256, "stats_batch_size": 8}
    if ctx.args.quick:
        keys.update(v_num_grad_steps=3, context_templates_per_length=2)
    return keys


def locate(ctx: Context, handle: ModelHandle, allowed: float, editor_name: str) -> dict[str, Any]:
    """One step of the shipped ``editor_name`` hparams on a few requests; setup apart."""
    cls = EDITORS.get(editor_name)
    config, _ = load_hparams(cls.config_class, editor_name, handle.preset.name, locate_overrides(ctx))
    _, shipped = load_hparams(cls.config_class, editor_name, handle.preset.name)
    requests = ctx.requests[: ctx.args.locate_requests]
    reset_peak(ctx.device)
    t0 = now(ctx.device)
    editor = cls(handle, config)
    setup = now(ctx.device) - t0
    stats_info = dict(editor.stats_info)
    restore = handle.snapshot(editor.edited_parameters())
    t1 = now(ctx.device)
    try:
        info = editor.edit(requests).info
        edit_s = now(ctx.device) - t1
    finally:
        restore()
    return {
        "requests": len(requests), "layers": config.layers, "v_num_grad_steps": config.v_num_grad_steps,
        "setup_s": round(setup, 2), "stats": {k: stats_info[k] for k in stats_info
                                               if k in ("seconds", "tokens_seen", "cached", "computed",
                                                        "nullspace_dims")},
        "edit_s": round(edit_s, 3), "seconds_per_edit": round(edit_s / len(requests), 4),
        "v_steps": info.get("v_steps"), "v_mean_final_loss": info.get("v_mean_final_loss"),
        "peak_memory_gb": peak_memory_gb(ctx.device),
        "shipped_hparams": {k: shipped[k] for k in ("layers", "v_num_grad_steps", "stats_corpus", "stats_tokens")},
    }


# -- parity --------------------------------------------------------------------------------------

def teach_facts(handle: ModelHandle, requests: Sequence[EditRequest]) -> float:
    """Train the tiny random model (every block) on the true facts of ``requests``: edit
    prompts and paraphrases with ``target_true``, locality prompts with their answers.

    Why: random weights leave near-ties in every prediction, where float rounding alone
    flips an argmax; a model that knows its facts has margins, so equal discrete metrics
    on two devices mean equal computations, not luck. Returns the last epoch's loss.
    """
    facts = [EditRequest(f"{r.case_id}.{i}", p, r.subject, r.target_true or r.target_new)
             for r in requests for i, p in enumerate((r.prompt, *r.rephrase_prompts))]
    facts += [EditRequest(f"{r.case_id}.loc{j}", loc.prompt, r.subject, loc.answer)
              for r in requests for j, loc in enumerate(r.locality)]
    cls = EDITORS.get("locft_bf")
    config = cls.config_class(modules=[f"block@{i}" for i in range(handle.num_layers)], lr=1e-2,
                              batch_size=len(facts), epochs=150)
    return cls(handle, config).edit(facts).info["epoch_losses"][-1]


def parity_edits(ctx: Context, handle: ModelHandle, autocast: bool) -> dict[str, Any]:
    """LocFT-BF and MEMIT on the same requests from the same weights; what each yields."""
    requests = ctx.requests[:PARITY_REQUESTS]
    settings = EvalSettings(protocols=("generation", "teacher_forced"), max_new_tokens=8, batch_size=8)
    out: dict[str, Any] = {}
    locft_config = EDITORS.get("locft_bf").config_class(
        modules=["mlp_down@2"], lr=1e-2, batch_size=4, epochs=60, bf16_autocast=autocast)
    memit_config = EDITORS.get("memit").config_class(
        layers=[1, 2], stats_corpus=str(ctx.corpus), stats_tokens=1000, stats_seq_len=64,
        v_num_grad_steps=20, clamp_norm_factor=4.0, context_template_lengths=[5],
        context_templates_per_length=2)
    for name, config in (("locft_bf", locft_config), ("memit", memit_config)):
        config.validate()
        ev = Evaluator(handle, settings)
        baseline = ev.baseline(requests)
        editor = EDITORS.get(name)(handle, config)
        restore = handle.snapshot(editor.edited_parameters())
        try:
            info = editor.edit(requests).info
            metrics = ev.evaluate(requests, baseline)
        finally:
            restore()
        if name == "locft_bf":
            losses = info["epoch_losses"]
            discrete = {"epochs_run": info["epochs_run"], "optimizer_steps": info["optimizer_steps"]}
        else:
            losses = [info["v_mean_final_loss"], info["v_max_final_loss"]]
            discrete = {"v_steps": info["v_steps"]}
        for protocol, values in metrics.items():
            for key, value in values.items():
                if not isinstance(value, (int, float)):
                    continue
                if key.endswith("_kl"):  # a divergence, not a count: compared like a loss
                    losses.append(value)
                else:
                    discrete[f"{protocol}.{key}"] = value
        out[name] = {"losses": losses, "discrete": discrete}
    return out


def parity(ctx: Context, allowed: float) -> dict[str, Any]:
    """CPU float32 reference against ``ctx.device`` in float32 and bfloat16."""
    target = ctx.device
    out: dict[str, Any] = {
        "reference": "cpu float32", "device": target, "requests": PARITY_REQUESTS,
        "note": ("the device is the CPU too: this compares CPU against CPU (float32: determinism; "
                 "bfloat16: bfloat16 weights, which a CPU trains without float32 master copies)"
                 if target == "cpu" else "float32 without autocast; bfloat16 as shipped (float32 "
                 "master copies of the trained tensor, bfloat16 autocast)"),
        "edits": ("LocFT-BF on mlp_down@2 and MEMIT on layers 1-2 of a 4-layer model (width 64) taught "
                  "the requests' true facts first"),
        "compared": "losses (LocFT-BF epoch means, MEMIT target losses, locality KL) within the relative "
                    "tolerance; epochs, optimizer and target steps and every other metric exactly",
        "tolerance": PARITY_TOLERANCE, "models": {}}
    # Four layers; weights drawn 10x wider than transformers' default (std 0.2): the output
    # rows of the answers the edits teach can then reach confident logits.
    shape = {**TINY, "num_hidden_layers": 4, "initializer_range": 0.2}
    deadline = time.monotonic() + allowed
    all_ok = True
    for name in ctx.parity_models:
        if time.monotonic() > deadline:
            out["models"][name] = {"status": "skipped", "reason": "section time used up"}
            all_ok = False
            continue
        t0 = time.monotonic()
        ref_handle = build_model(name, ctx.tokenizer, "cpu", "float32", shape)
        taught = teach_facts(ref_handle, ctx.requests[:PARITY_REQUESTS])
        state = {k: v.clone() for k, v in ref_handle.model.state_dict().items()}
        reference = parity_edits(ctx, ref_handle, autocast=False)
        del ref_handle
        cases: dict[str, Any] = {}
        for dtype in ("float32", "bfloat16"):
            handle = build_model(name, ctx.tokenizer, target, dtype, shape)
            handle.model.load_state_dict(state)
            got = parity_edits(ctx, handle, autocast=dtype != "float32")
            del handle
            free(target)
            cases[dtype] = compare_parity(reference, got, PARITY_TOLERANCE[dtype])
            all_ok = all_ok and cases[dtype]["ok"]
        out["models"][name] = {"family": get_preset(name).family, "seconds": round(time.monotonic() - t0, 1),
                               "taught_loss": taught, "reference": reference, **cases}
    out["ok"] = all_ok
    return out


def compare_parity(reference: dict[str, Any], got: dict[str, Any], tol: dict[str, float]) -> dict[str, Any]:
    """Per editor: the largest relative loss difference, every count or metric that is not
    equal (``differences``) and those beyond the tolerance (``beyond_tolerance``)."""
    result: dict[str, Any] = {}
    ok = True
    for editor, ref in reference.items():
        mine = got[editor]
        worst = max((abs(a - b) / max(1.0, abs(a)) for a, b in zip(ref["losses"], mine["losses"],
                                                                      strict=False)), default=0.0)
        differ, beyond = {}, {}
        for key, want in ref["discrete"].items():
            have = mine["discrete"].get(key)
            if have == want:
                continue
            differ[key] = [want, have]
            counted = isinstance(want, int) and "." not in key
            allowed = tol["count_rtol"] * abs(want) if counted else tol["metric_atol"]
            if have is None or abs(have - want) > allowed + 1e-12:
                beyond[key] = [want, have]
        editor_ok = worst <= tol["loss_rtol"] and not beyond and len(ref["losses"]) == len(mine["losses"])
        ok = ok and editor_ok
        result[editor] = {"ok": editor_ok, "max_relative_loss_diff": worst, "losses": mine["losses"],
                          "differences": differ, "beyond_tolerance": beyond}
    result["ok"] = ok
    return result


# -- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    device: str
    tokenizer: Any
    requests: list[EditRequest]
    corpus: Path
    stats_tokens: int
    eval_batches: tuple[int, ...]
    tflops: dict[str, float]
    parity_models: tuple[str, ...]


def estimates(ctx: Context, params: int, arch: dict[str, Any]) -> dict[str, float]:
    """Seconds each section of a model needs at least, from measurements at the start: the
    matrix-product throughput (at a pessimistic 20% of it), one float64 eigendecomposition
    (extrapolated as n^3, one per edited layer) and the statistics cache's write speed (the
    matrices are moved, hashed and written: three passes)."""
    rate = ctx.tflops["compute"] * 1e12 * 0.2
    tokens = 12 * min(ctx.args.requests, len(ctx.requests))
    epoch = 6 * params * tokens / rate  # forward and backward through the whole model
    n, layers = int(arch["intermediate_size"]), 5
    disk = 3 * layers * n * n * 4 / 1e9 / ctx.tflops["disk_gb_per_s"]
    targets = 25 * 6 * params * ctx.args.locate_requests * 6 * 20 / rate
    eigh = layers * ctx.tflops["eigh_s"] * (n / ctx.tflops["eigh_n"]) ** 3
    return {"build": 3 + params / 2e9, "locft": 2 * 3 * epoch + 5, "eval": 15,
            "memit": 10 + disk + targets, "alphaedit": 10 + 2 * disk + targets + eigh}


# The plan, in order of value: the Qwen2.5-7B LocFT-BF number is the goal (<= 0.03 s
# per edit), Llama-3-8B the paper's other shape; locate-then-edit on 7-8B models costs most
# (statistics of 18944-wide keys, float64 eigendecompositions) and comes after.
PLAN = [("locft", "qwen2.5-7b"), ("eval", "qwen2.5-7b"), ("locft", "llama3-8b"), ("eval", "llama3-8b"),
        ("memit", "qwen2.5-7b"), ("alphaedit", "qwen2.5-7b"), ("locft", "smollm2-135m"),
        ("eval", "smollm2-135m"), ("memit", "smollm2-135m"), ("alphaedit", "smollm2-135m"),
        ("memit", "llama3-8b"), ("alphaedit", "llama3-8b")]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = "bfloat16" if on_gpu else "float32"
    budget = Budget(args.budget)
    work = Path(tempfile.mkdtemp(prefix="editbench-gpu-"))
    os.environ["EDITBENCH_STATS_CACHE"] = str(work / "stats")  # nothing stale, nothing kept
    requests = generate(max(args.requests, args.eval_requests + 256, 2000))
    tokenizer = train_tokenizer(requests[:2000])
    corpus = random_text(work / "random.txt", requests[:2000], words=3000 if not args.quick else 600)
    eigh_n = 4096 if on_gpu else 256
    tflops = {"compute": matmul_tflops(device, DTYPES[dtype], 4096 if on_gpu else 256),
              "float64": matmul_tflops(device, torch.float64, 2048 if on_gpu else 256),
              "eigh_n": eigh_n, "eigh_s": eigh_seconds(device, eigh_n), "disk_gb_per_s": disk_gb_per_s(work)}
    ctx = Context(args, device, tokenizer, requests, corpus, 4096 if not args.quick else 512,
                  (32, 128) if not args.quick else (8,), tflops,
                  ("smollm2-135m", "qwen2.5-7b") if not args.quick else ("qwen2.5-7b",))
    report: dict[str, Any] = {
        "script": "benchmarks/gpu.py", "quick": args.quick, "device": describe_device(device),
        "dtype": dtype, "budget_s": args.budget, "calibration": {k: round(v, 4) for k, v in tflops.items()},
        "requests": "editbench synthetic (seed 0)", "sections": []}

    def record(section: str, model: str | None, fn: Callable[[], dict[str, Any]], need: float) -> bool:
        entry: dict[str, Any] = {"section": section, "model": model}
        t0 = time.monotonic()
        try:
            budget.require(need, section if model is None else f"{section} on {model}")
            reset_peak(device)
            entry["result"] = fn()
            entry["status"] = "ok"
        except Skip as exc:
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # one failing section must not lose the others' numbers
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=6)[-3000:])
        entry["seconds"] = round(time.monotonic() - t0, 2)
        entry["peak_memory_gb"] = peak_memory_gb(device)
        report["sections"].append(entry)
        report["wall_s"] = round(time.monotonic() - START, 1)
        write(report, args.output)
        print(f"[{report['wall_s']:6.1f} s] {section:9s} {model or '':14s} {entry['status']}"
              f"{': ' + entry.get('reason', entry.get('error', '')) if entry['status'] != 'ok' else ''}",
              file=sys.stderr, flush=True)
        return entry["status"] == "ok"

    if "parity" in args.sections:
        record("parity", None, lambda: parity(ctx, min(args.parity_s, budget.left())), 5 if args.quick else 20)
    plan = [(s, m) for s, m in PLAN if s in args.sections and m in args.models]
    # One model on the device at a time: a later section of a model built before builds it
    # again (seconds) rather than hold 15 GB beside the next one.
    handles: dict[str, ModelHandle] = {}
    failed: set[str] = set()
    for section, name in plan:
        preset = get_preset(name)
        arch = {**(preset.architecture or {}), **(TINY if args.quick else {})}
        with torch.device("meta"):
            params = _meta_params(preset.family, arch, len(tokenizer))
        est = estimates(ctx, params, arch)
        if name in failed:
            continue
        if name not in handles:
            handles.clear()
            free(device)
            def build(name=name, arch=arch) -> dict[str, Any]:
                handles[name] = build_model(name, tokenizer, device, dtype, TINY if args.quick else None)
                config = handles[name].model.config
                return {"parameters": param_count(handles[name]), "dtype": dtype,
                        "architecture": {k: getattr(config, k) for k in (
                            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "vocab_size")}}

            if not record("build", name, build, est["build"] + est[section]):
                failed.add(name)
                continue
        handle = handles[name]
        cap = min(budget.left(), getattr(args, f"{section}_s"))
        fn = {"locft": lambda h=handle, c=cap: locft(ctx, h, c),
              "eval": lambda h=handle, c=cap: evaluation(ctx, h, c),
              "memit": lambda h=handle, c=cap: locate(ctx, h, c, "memit"),
              "alphaedit": lambda h=handle, c=cap: locate(ctx, h, c, "alphaedit")}[section]
        record(section, name, fn, est[section])
        del handle, fn
        free(device)  # what the section's editor kept (statistics, projections) goes
    handles.clear()
    report["wall_s"] = round(time.monotonic() - START, 1)
    report["table"] = table_rows(report)
    write(report, args.output)
    return report


def _meta_params(family: str, arch: dict[str, Any], vocab: int) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = {**arch, "vocab_size": max(int(arch["vocab_size"]), vocab)}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **arch))
    return sum(p.numel() for p in model.parameters())


def describe_device(device: str) -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {"device": device, "torch": torch.__version__,
                           "transformers": transformers.__version__, "python": platform.python_version(),
                           "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        out.update(name=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                   load_average=[round(x, 2) for x in os.getloadavg()])
    return out


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def headline(entry: dict[str, Any]) -> str:
    r = entry.get("result") or {}
    s = entry["section"]
    if entry["status"] != "ok":
        return entry.get("reason") or entry.get("error", "")[:80]
    if s == "parity":
        cases = [f"{m}: " + "/".join(f"{d} {'ok' if v[d]['ok'] else 'DIFFERS'}" for d in ("float32", "bfloat16"))
                 for m, v in r["models"].items() if "float32" in v]
        return "; ".join(cases)
    if s == "build":
        n = r["parameters"]
        return f"{n / 1e9:.2f}B params, {r['dtype']}" if n >= 1e8 else f"{n / 1e6:.2f}M params, {r['dtype']}"
    if s == "locft":
        parts = []
        for key in ("cached", "uncached"):
            v = r.get(key, {})
            if "seconds_per_epoch" in v:
                parts.append(f"{key} {_fmt(v['seconds_per_epoch'])} s/epoch, "
                             f"{_fmt(v['projected_seconds_per_edit'])} s/edit@25ep")
        return f"T={r['requests']}: " + "; ".join(parts)
    if s == "eval":
        return "; ".join(f"{k} {v['evaluate_prompts_per_s']} p/s" for k, v in r.items()
                         if isinstance(v, dict) and "evaluate_prompts_per_s" in v)
    if s in ("memit", "alphaedit"):
        return (f"{_fmt(r['seconds_per_edit'])} s/edit ({r['requests']} req), "
                f"setup {r['setup_s']} s")
    return ""


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[e["section"], e["model"] or "-", e["status"], f"{e['seconds']:.1f}",
             _fmt(e.get("peak_memory_gb")), headline(e)] for e in report["sections"]]


def print_table(report: dict[str, Any]) -> None:
    head = ["section", "model", "status", "seconds", "peak GB", "result"]
    rows = [head, *report["table"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    for k, row in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + " | " + row[-1])
        if k == 0:
            print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    dev = report["device"]
    print(f"\n{dev.get('name')} ({report['dtype']}), torch {dev['torch']}, transformers "
          f"{dev['transformers']}; {report['wall_s']} s of a {report['budget_s']} s budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes of the same presets (CI)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the JSON file (default $OUT/gpu.json, else ./gpu-bench.json)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run, startup included (default 450; quick 240)")
    parser.add_argument("--models", default="qwen2.5-7b,llama3-8b,smollm2-135m")
    parser.add_argument("--sections", default="parity,locft,eval,memit,alphaedit")
    parser.add_argument("--requests", type=int, default=None, help="T of the LocFT-BF step (1000; quick 40)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs timed per LocFT-BF run (4; quick 2)")
    parser.add_argument("--eval-requests", type=int, default=None, help="at most (256; quick 8)")
    parser.add_argument("--locate-requests", type=int, default=None, help="one MEMIT/AlphaEdit step (16; quick 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's; quick on a CPU: 1, tiny shapes gain nothing)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.output = args.output or Path(os.environ.get("OUT") or ".") / ("gpu.json" if os.environ.get("OUT")
                                                                       else "gpu-bench.json")
    args.budget = args.budget or (240.0 if quick else 450.0)
    args.requests = args.requests or (40 if quick else 1000)
    args.epochs = args.epochs or (2 if quick else 4)
    args.eval_requests = args.eval_requests or (8 if quick else 256)
    args.locate_requests = args.locate_requests or (2 if quick else 16)
    args.models = [m for m in args.models.split(",") if m]
    args.sections = set(args.sections.split(","))
    if quick and args.device == "cpu" and args.threads is None:
        args.threads = 1
    # Per-section caps (seconds) on one H100: the budget's 450 s in order of value.
    args.parity_s, args.locft_s, args.eval_s, args.memit_s, args.alphaedit_s = (
        (60, 60, 60, 60, 60) if quick else (40, 60, 50, 70, 100))
    report = run(args)
    print_table(report)
    print(f"\nJSON: {args.output}")
    return 1 if any(e["status"] == "error" for e in report["sections"]) else 0


if __name__ == "__main__":
    sys.exit(main())
