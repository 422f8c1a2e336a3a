"""Calibrate the semantic-match threshold on (answer, target) pairs whose exact match is known.

Pairs come from finished runs (``--cases RUN/cases.jsonl ...``: the generation protocol's
reliability and generalization items, each with ``answer``, ``target`` and ``match``) or
are built here (``--build``): the generation protocol's answers of the unedited model to
zsRE and CounterFact edit and rephrase prompts, paired with the new target (mostly no
match) and the true object (the model's own knowledge: some matches); with ``--edit
locft_bf``, also the same prompts after editing all requests, paired with the new target
(mostly matches, most of them the target verbatim). Heavy: run it under the lock.

The threshold is the cut on the sentence-embedding cosine that best separates
exact-match-true from exact-match-false pairs (highest accuracy; ties: the middle of the
best interval). The JSON output gives the ROC AUC, accuracy and balanced accuracy at the
threshold and at round values, the pair counts, and the disagreements.

Usage:
  flock /tmp/editbench-heavy.lock python benchmarks/semantic_threshold.py --build \
      --data-dir ../shared/data --num 300 --output semantic_threshold.json
  python benchmarks/semantic_threshold.py --cases runs/*/cases.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from editbench.evaluate.normalize import exact_match
from editbench.evaluate.quality.semantic import OFFLINE_MODEL, SentenceEncoder
from editbench.files import read_jsonl

Pair = tuple[str, str, bool, str]  # answer, target, exact match, where it came from


def pairs_from_cases(paths: Iterable[str]) -> list[Pair]:
    out: list[Pair] = []
    for path in paths:
        for _, rec in read_jsonl(path):
            if rec.get("protocol") != "generation":
                continue
            items = [rec["reliability"], *rec.get("generalization", [])]
            out += [(it["answer"], it["target"], bool(it["match"]), str(path)) for it in items]
    return out


def build_pairs(args: argparse.Namespace) -> tuple[list[Pair], dict[str, Any]]:
    """Pre- and post-edit answers of ``--model`` on zsRE and CounterFact requests."""
    from editbench.config import load_hparams
    from editbench.data import load_dataset
    from editbench.evaluate.generation import answers, generate_answers
    from editbench.models import load_model
    from editbench.registry import EDITORS

    requests = [r for name in ("zsre-3k", "counterfact-3k")
                for r in load_dataset(name, data_dir=args.data_dir, num=args.num,
                                      sample="random", seed=args.seed).requests]
    handle = load_model(args.model, device=args.device)
    prompts = [(r, p) for r in requests for p in (r.prompt, *r.rephrase_prompts)]

    def answer_all() -> list[str]:
        return answers(generate_answers(handle, [p for _, p in prompts], 32, args.batch_size))

    info: dict[str, Any] = {"model": args.model, "requests": len(requests)}
    t0 = time.perf_counter()
    pre = answer_all()
    info["pre_generation_s"] = round(time.perf_counter() - t0, 1)
    pairs: list[Pair] = []
    for (r, _), a in zip(prompts, pre, strict=True):
        pairs.append((a, r.target_new, exact_match(a, r.target_new), "pre-edit vs target_new"))
        if r.target_true:
            pairs.append((a, r.target_true, exact_match(a, r.target_true), "pre-edit vs target_true"))
    if not args.edit:
        return pairs, info
    cls = EDITORS.get(args.edit)
    config, _ = load_hparams(cls.config_class, args.edit, args.model)
    t0 = time.perf_counter()
    cls(handle, config).edit(requests)
    info[f"{args.edit}_edit_s"] = round(time.perf_counter() - t0, 1)
    post = answer_all()
    pairs += [(a, r.target_new, exact_match(a, r.target_new), "post-edit vs target_new")
              for (r, _), a in zip(prompts, post, strict=True)]
    return pairs, info


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half."""
    pos = sorted(s for s, y in zip(scores, labels, strict=True) if y)
    neg = sorted(s for s, y in zip(scores, labels, strict=True) if not y)
    if not pos or not neg:
        return None
    wins, i, j = 0.0, 0, 0
    for s in pos:  # negatives below s count 1, equal to s count 1/2
        while i < len(neg) and neg[i] < s:
            i += 1
        j = max(j, i)
        while j < len(neg) and neg[j] == s:
            j += 1
        wins += i + (j - i) / 2
    return wins / (len(pos) * len(neg))


def at_threshold(scores: Sequence[float], labels: Sequence[bool], t: float) -> dict[str, float]:
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if y and s >= t)
    tn = sum(1 for s, y in zip(scores, labels, strict=True) if not y and s < t)
    p, n = sum(labels), len(labels) - sum(labels)
    return {"threshold": round(t, 4), "accuracy": round((tp + tn) / len(labels), 4),
            "balanced_accuracy": round(((tp / p if p else 0) + (tn / n if n else 0)) / 2, 4),
            "true_positive_rate": round(tp / p, 4) if p else None,
            "false_positive_rate": round((n - tn) / n, 4) if n else None}


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The cut with the highest accuracy; among equally good cuts, the middle one."""
    values = sorted(set(scores))
    cuts = [values[0] - 1e-6, *((a + b) / 2 for a, b in pairwise(values)), values[-1] + 1e-6]
    accs = [at_threshold(scores, labels, c)["accuracy"] for c in cuts]
    best = max(accs)
    good = [c for c, a in zip(cuts, accs, strict=True) if a == best]
    return good[len(good) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=[], help="cases.jsonl files of finished runs")
    parser.add_argument("--build", action="store_true", help="build pairs with --model (heavy)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num", type=int, default=100, help="requests per dataset (--build)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--edit", help="also pair the answers after editing all requests with "
                        "this editor (e.g. locft_bf; minutes to hours on a CPU)")
    parser.add_argument("--semantic-model", default=OFFLINE_MODEL)
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--pairs-output", help="write every scored pair (JSON lines) here")
    args = parser.parse_args(argv)
    if not args.cases and not args.build:
        parser.error("give --cases FILE... or --build")

    pairs = pairs_from_cases(args.cases)
    info: dict[str, Any] = {}
    if args.build:
        built, info = build_pairs(args)
        pairs += built
    encoder = SentenceEncoder(args.semantic_model)
    t0 = time.perf_counter()
    scores = encoder.similarities([(a, t) for a, t, _, _ in pairs])
    info["semantic_s"] = round(time.perf_counter() - t0, 1)
    labels = [m for _, _, m, _ in pairs]
    threshold = best_threshold(scores, labels)
    report: dict[str, Any] = {
        **info, "semantic_model": encoder.describe(), "pairs": len(pairs),
        "exact_match_true": sum(labels), "exact_match_false": len(labels) - sum(labels),
        "by_source": {src: sum(1 for *_, s in pairs if s == src) for src in sorted({p[3] for p in pairs})},
        "roc_auc": round(roc_auc(scores, labels) or float("nan"), 4),
        "best": at_threshold(scores, labels, threshold),
        "at": [at_threshold(scores, labels, t) for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)],
        "disagreements": {
            "exact_false_above": sorted(
                ((round(s, 3), a, t) for (a, t, m, _), s in zip(pairs, scores, strict=True)
                 if not m and s >= threshold), reverse=True)[:25],
            "exact_true_below": sorted(
                (round(s, 3), a, t) for (a, t, m, _), s in zip(pairs, scores, strict=True)
                if m and s < threshold)[:25],
        },
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    if args.pairs_output:
        with open(args.pairs_output, "w", encoding="utf-8") as fh:
            for (a, t, m, src), s in zip(pairs, scores, strict=True):
                fh.write(json.dumps({"answer": a, "target": t, "match": m, "source": src,
                                     "similarity": round(s, 5)}, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
