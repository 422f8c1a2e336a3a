"""What the quality metrics cost and show on a real model; prints (and writes) JSON.

For the first ``--num`` requests of a CounterFact file (flat 3K: template v1 generation
prompts and corpus passages naming the target as references; ROME's full file: its own
generation prompts, with ``--snippets`` its attribute snippets): free generations, fluency
and consistency of the unedited model, the generation protocol's reliability and
generalization answers scored by exact and semantic match; then the same after each
editor (weights restored between editors), with the seconds each part took.

Off, the metrics cost nothing: the evaluator builds no scorer, imports nothing new
(``editbench.evaluate`` does not import ``editbench.evaluate.quality``) and generates
nothing extra; ``import_s`` below is what switching them on adds before any work.

Usage (heavy, under the lock):
  flock /tmp/editbench-heavy.lock python benchmarks/quality_metrics.py \
      --data-dir ../shared/data --corpus ../shared/data/corpus/wiki_passages.jsonl \
      --editors locft_bf,ft_m --output quality_metrics.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--dataset", default="counterfact-3k")
    parser.add_argument("--snippets", help="attribute_snippets.json (ROME's full CounterFact only)")
    parser.add_argument("--corpus", default="../shared/data/corpus/wiki_passages.jsonl")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--editors", default="locft_bf")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from editbench.evaluate.quality import FreeGenConfig, QualityScorer, QualitySettings
    import_s = time.perf_counter() - t0
    from editbench.config import load_hparams
    from editbench.data import load_dataset
    from editbench.evaluate.generation import generate_answers
    from editbench.evaluate.normalize import exact_match
    from editbench.evaluate.quality.fluency import word_tokens
    from editbench.models import load_model
    from editbench.registry import EDITORS

    loaded = load_dataset(args.dataset, data_dir=args.data_dir, num=args.num,
                          attribute_snippets=args.snippets)
    requests = loaded.requests
    handle = load_model(args.model, device=args.device)
    settings = QualitySettings(
        metrics=("fluency", "consistency", "semantic"),
        generation=FreeGenConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        corpus=args.corpus,
        references="data" if args.snippets else "corpus",
    )
    out: dict[str, Any] = {"model": args.model, "dataset": loaded.name, "requests": len(requests),
                           "device": args.device, "torch_threads": torch.get_num_threads(),
                           "import_s": round(import_s, 2)}
    t0 = time.perf_counter()
    scorer = QualityScorer(handle, settings, requests)
    out["scorer_setup_s"] = round(time.perf_counter() - t0, 2)
    out["quality_config"] = scorer.describe()
    out["free_generation_prompts"] = sum(len(scorer.prompts_for(r)) for r in requests)

    def measure(tag: str) -> dict[str, Any]:
        before = dict(scorer.timings)
        res: dict[str, Any] = {}
        t = time.perf_counter()
        quality = scorer.case_quality(requests)
        res["quality_s"] = round(time.perf_counter() - t, 1)
        res["fluency"] = mean([v for q in quality.values() for v in q["_fluency"]])
        res["consistency"] = mean([v for q in quality.values() for v in q["_consistency"]])
        res["consistency_scored"] = sum(1 for q in quality.values() if q["_consistency"])
        # ROME's n-gram entropy grows with text length: an edited model that learnt to stop
        # after the target scores low without writing worse text, so the length goes beside it.
        res["continuation_words"] = mean([float(len(word_tokens(g["continuation"])))
                                          for q in quality.values() for g in q["generations"]])
        prompts = [(r, p) for r in requests for p in (r.prompt, *r.rephrase_prompts)]
        t = time.perf_counter()
        got = generate_answers(handle, [p for _, p in prompts], 32, args.batch_size)
        res["answers_s"] = round(time.perf_counter() - t, 1)
        sims = scorer.semantic([(a, r.target_new) for (r, _), a in zip(prompts, got, strict=True)])
        rel = [i for i, (r, p) in enumerate(prompts) if p == r.prompt]
        gen = [i for i in range(len(prompts)) if i not in set(rel)]
        for key, idx in (("reliability", rel), ("generalization", gen)):
            res[key] = {
                "exact": mean([float(exact_match(got[i], prompts[i][0].target_new)) for i in idx]),
                "semantic": mean([sims[i] for i in idx]),
                "semantic_success": mean([float(scorer.is_match(sims[i])) for i in idx]),
            }
        res["timings_s"] = {k: round(v - before.get(k, 0.0), 2) for k, v in scorer.timings.items()
                            if k != "idf"}
        res["examples"] = [{"prompt": g["prompt"], "continuation": g["continuation"]}
                           for g in quality[requests[0].case_id]["generations"][:2]]
        print(f"[{tag}] fluency {res['fluency']} consistency {res['consistency']} "
              f"rel {res['reliability']} ({res['quality_s']} s)", file=sys.stderr)
        return res

    out["pre"] = measure("pre")
    original = {k: v.detach().clone() for k, v in handle.model.state_dict().items()}
    out["editors"] = {}
    for name in [e.strip() for e in args.editors.split(",") if e.strip()]:
        handle.model.load_state_dict(original)
        cls = EDITORS.get(name)
        config, _ = load_hparams(cls.config_class, name, args.model)
        editor = cls(handle, config)
        step = config.edits_per_step or len(requests)
        t = time.perf_counter()
        for start in range(0, len(requests), step):
            editor.edit(requests[start : start + step])
        editor.finalize()
        edit_s = round(time.perf_counter() - t, 1)
        out["editors"][name] = {"edit_s": edit_s, "edits_per_step": step, **measure(name)}
    handle.model.load_state_dict(original)
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
