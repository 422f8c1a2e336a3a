"""How fast a locate-then-edit editor reaches its first edit on a fresh machine, and how
many statistics tokens its edits need (one JSON object on stdout).

Parts (``--parts``, comma-separated):
- ``startup``: MEMIT with the shipped hparams and an empty statistics cache: seconds from
  building the editor (self-generated corpus, one pass over every layer) to its first
  edit, then a second editor (ROME, other layers) that must find its matrices cached.
- ``tokens``: MEMIT on the same zsRE requests with statistics from each ``--tokens``
  budget (each budget samples its own seeded corpus of that size), reliability / generalization /
  locality per budget, to show how many tokens the statistics need.

    EDITBENCH_PROGRESS=0 python benchmarks/locate_startup.py --data-dir ../shared/data

Say in any figure you quote whether the machine was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.models import load_model
from editbench.registry import EDITORS
from editbench.run import edit_and_evaluate


def _editor(handle, name: str, model: str, overrides: dict):
    cls = EDITORS.get(name)
    config, _ = load_hparams(cls.config_class, name, model, overrides)
    return cls(handle, config)


def startup(handle, model: str, requests) -> dict:
    t0 = time.perf_counter()
    memit = _editor(handle, "memit", model, {})
    built = time.perf_counter() - t0
    restore = handle.snapshot(memit.edited_parameters())
    memit.edit(requests[:1])
    first = time.perf_counter() - t0
    restore()
    t1 = time.perf_counter()
    rome = _editor(handle, "rome", model, {"layers": [max(0, handle.num_layers // 2)]})
    return {"memit_build_s": round(built, 1), "memit_first_edit_s": round(first, 1),
            "memit_stats": memit.stats_info, "rome_build_s": round(time.perf_counter() - t1, 1),
            "rome_stats": rome.stats_info}


def tokens(handle, model: str, requests, budgets: list[int]) -> dict:
    evaluator = Evaluator(handle, EvalSettings())
    baseline = evaluator.baseline(requests)
    out = {}
    for budget in budgets:
        editor = _editor(handle, "memit", model, {"stats_tokens": budget})
        t0 = time.perf_counter()
        results, seconds = edit_and_evaluate(editor, requests, len(requests), evaluator, baseline)
        g = results["generation"]
        out[str(budget)] = {k: round(g[k], 4) for k in ("reliability", "generalization", "locality")
                            if g.get(k) is not None}
        out[str(budget)]["edit_s"] = round(seconds, 1)
        out[str(budget)]["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=os.environ.get("EDITBENCH_DATA_DIR"))
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--tokens", default="10000,25000,50000")
    p.add_argument("--parts", default="startup,tokens")
    p.add_argument("--cache", help="statistics cache folder (default: a fresh temporary one)")
    args = p.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="editbench-stats-")
    os.environ["EDITBENCH_STATS_CACHE"] = cache  # a fresh machine: nothing cached
    handle = load_model(args.model, "auto", None)
    requests = load_dataset("zsre-3k", data_dir=args.data_dir, num=args.requests).requests
    result: dict = {"model": args.model, "requests": len(requests), "stats_cache": cache,
                    "load_avg_1min": os.getloadavg()[0]}
    parts = args.parts.split(",")
    if "startup" in parts:
        result["startup"] = startup(handle, args.model, requests)
    if "tokens" in parts:
        result["tokens"] = tokens(handle, args.model, requests, [int(t) for t in args.tokens.split(",")])
    result["load_avg_1min_end"] = os.getloadavg()[0]
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
