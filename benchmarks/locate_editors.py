"""Benchmarks of the locate-then-edit editors (default smollm2-135m; prints one JSON object).

Parts (``--parts``, comma-separated):
- ``stats``: the layer-statistics pass over all edited layers at once vs one pass per layer
  (as the originals do): seconds, tokens/s and the speed-up; caches are bypassed.
- ``rome``: ROME on single CounterFact edits, each on a fresh model (weights restored).
- ``memit``: MEMIT on zsRE requests in one step.
- ``alphaedit``: AlphaEdit on the same requests in steps.
- ``sequential``: MEMIT vs AlphaEdit on a longer sequential zsRE run.
Every part reports the generation protocol's reliability / generalization / locality and
the editing seconds per request.

    EDITBENCH_PROGRESS=0 python benchmarks/locate_editors.py --data-dir ../shared/data \
        --parts stats,rome,memit,alphaedit,sequential

On a GPU server, any model with hparams for the three editors (``--model llama3-8b --device
auto``); ``--corpus`` takes any statistics corpus the hparams accept (an HF dataset spec, a
local file relative to the working directory, or ``self``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.models import load_model
from editbench.registry import EDITORS
from editbench.run import edit_and_evaluate
from editors._locate.stats import compute_second_moments, resolve_corpus


def config_for(editor: str, model: str, overrides: dict):
    cls = EDITORS.get(editor).config_class
    config, _ = load_hparams(cls, editor, model, overrides)
    return config


def summarize(results: dict) -> dict:
    g = results["generation"]
    return {k: (round(g[k], 4) if g.get(k) is not None else None)
            for k in ("reliability", "generalization", "locality")}


def run_sequence(handle, editor_name, requests, step, overrides, evaluator, baseline):
    config = config_for(editor_name, handle.preset.name, overrides)
    t0 = time.perf_counter()
    editor = EDITORS.get(editor_name)(handle, config)
    setup = time.perf_counter() - t0
    results, edit_s = edit_and_evaluate(editor, requests, step, evaluator, baseline)
    return {"n": len(requests), "edits_per_step": step, **summarize(results),
            "edit_s_per_request": round(edit_s / len(requests), 3), "setup_s": round(setup, 2)}


def part_stats(handle, args):
    config = config_for("memit", handle.preset.name, {"stats_corpus": args.corpus})
    names = [handle.module_name("mlp_down", layer) for layer in config.layers]
    corpus = resolve_corpus(args.corpus)
    t0 = time.perf_counter()
    together, n = compute_second_moments(handle, names, corpus, args.stats_tokens,
                                         config.stats_seq_len, config.stats_batch_size)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    worst = 0.0
    for name in names:
        alone, _ = compute_second_moments(handle, [name], corpus, args.stats_tokens,
                                          config.stats_seq_len, config.stats_batch_size)
        worst = max(worst, float((alone[name] - together[name]).abs().max() / together[name].abs().max()))
    per_layer = time.perf_counter() - t0
    return {"modules": names, "tokens": n, "one_pass_s": round(one, 2),
            "one_pass_tokens_per_s": round(n / one, 1), "per_layer_s": round(per_layer, 2),
            "per_layer_tokens_per_s": round(n * len(names) / per_layer, 1),
            "speedup": round(per_layer / one, 2), "max_rel_diff": worst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", default=None, help="statistics corpus (default: the shared wiki passages)")
    p.add_argument("--parts", default="stats,rome,memit,alphaedit,sequential")
    p.add_argument("--stats-tokens", type=int, default=20000)
    p.add_argument("--rome-n", type=int, default=20)
    p.add_argument("--batch-n", type=int, default=100)
    p.add_argument("--alpha-step", type=int, default=20)
    p.add_argument("--seq-n", type=int, default=500)
    p.add_argument("--seq-step", type=int, default=50)
    p.add_argument("--set", action="append", default=[], help="editor=key=value override")
    args = p.parse_args(argv)
    # hparams refuse absolute paths: pass the corpus relative to the working directory.
    if args.corpus is None:
        args.corpus = os.path.relpath(Path(args.data_dir) / "corpus" / "wiki_passages.jsonl")
    overrides: dict[str, dict] = {"rome": {}, "memit": {}, "alphaedit": {}}
    for item in args.set:
        editor, key, value = item.split("=", 2)
        overrides[editor][key] = json.loads(value)
    for o in overrides.values():
        o.setdefault("stats_corpus", args.corpus)
    parts = args.parts.split(",")
    handle = load_model(args.model, device=args.device)
    evaluator = Evaluator(handle, EvalSettings(protocols=("generation",)))
    out: dict = {"torch_threads": torch.get_num_threads()}
    if "stats" in parts:
        out["stats"] = part_stats(handle, args)
    if "rome" in parts:
        reqs = load_dataset("counterfact-3k", data_dir=args.data_dir, num=args.rome_n).requests
        base = evaluator.baseline(reqs)
        rows = [run_sequence(handle, "rome", [r], 1, overrides["rome"], evaluator, base) for r in reqs]
        out["rome_counterfact_single"] = {
            "n": len(rows),
            **{k: round(sum(r[k] for r in rows) / len(rows), 4)
               for k in ("reliability", "generalization", "locality", "edit_s_per_request")}}
        print(json.dumps(out), file=sys.stderr)
    zsre = None
    if {"memit", "alphaedit", "sequential"} & set(parts):
        n = max(args.batch_n, args.seq_n if "sequential" in parts else 0)
        zsre = load_dataset("zsre-3k", data_dir=args.data_dir, num=n).requests
    if "memit" in parts or "alphaedit" in parts:
        reqs = zsre[: args.batch_n]
        base = evaluator.baseline(reqs)
        if "memit" in parts:
            out["memit_zsre_one_step"] = run_sequence(handle, "memit", reqs, len(reqs), overrides["memit"], evaluator, base)
            print(json.dumps(out), file=sys.stderr)
        if "alphaedit" in parts:
            out["alphaedit_zsre_steps"] = run_sequence(handle, "alphaedit", reqs, args.alpha_step, overrides["alphaedit"], evaluator, base)
            print(json.dumps(out), file=sys.stderr)
    if "sequential" in parts:
        reqs = zsre[: args.seq_n]
        base = evaluator.baseline(reqs)
        out["sequential"] = {
            name: run_sequence(handle, name, reqs, args.seq_step, overrides[name], evaluator, base)
            for name in ("memit", "alphaedit")
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
