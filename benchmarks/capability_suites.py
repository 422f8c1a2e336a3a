"""Score capability suites on an unedited model and measure option-scoring throughput.

    python benchmarks/capability_suites.py --suite default --suite shared \
        --data-dir ../shared/data [--model smollm2-135m] [--limit N] [--compare-sharing]

Prints one JSON object: per suite, the mean and chance mean, per-task score / chance / n /
seconds / prompts per second; with --compare-sharing, the multiple-choice tasks of each
suite are scored a second time with one sequence per (prompt, option) pair instead of one
prompt pass shared by its options, and both throughputs are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("EDITBENCH_PROGRESS", "0")


def main() -> None:
    import torch

    from editbench.capability import CapabilitySettings, evaluate_suite, load_suite
    from editbench.capability.evaluate import prepare_task
    from editbench.capability.scoring import score_choices
    from editbench.models import load_model
    from editbench.tokens import encode_prompt_target

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", action="append", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--compare-sharing", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    handle = load_model(args.model, args.device)
    out = {"model": args.model, "identity": handle.identity, "device": args.device,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_avg_at_start": os.getloadavg(), "platform": platform.platform(),
           "load_s": round(time.perf_counter() - t0, 2), "suites": {}}
    settings = CapabilitySettings(limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir)
    for name in args.suite:
        suite = load_suite(name)
        result = evaluate_suite(handle, suite, settings)
        entry = {
            "score": round(result["score"], 4), "chance": round(result["chance"], 4),
            "time_s": result["time_s"], "average": result["average"],
            "tasks": {n: {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in t.items()
                          if k in ("score", "chance", "n", "time_s", "prompts_per_s", "perplexity", "options")}
                      for n, t in result["tasks"].items()},
        }
        if args.compare_sharing:
            for task in suite.tasks:
                if task.kind != "multiple_choice":
                    continue
                items = prepare_task(task, suite.task_files[task.name], settings)["items"]
                timing = {}
                for share in (True, False):
                    t1, c1 = time.perf_counter(), time.process_time()
                    acc, _ = score_choices(handle, items, task.normalization, args.batch_size, share)
                    dt, cpu = time.perf_counter() - t1, time.process_time() - c1
                    timing["shared_prompt" if share else "pair_per_sequence"] = {
                        "accuracy": round(acc, 4), "s": round(dt, 2), "cpu_s": round(cpu, 2),
                        "prompts_per_s": round(len(items) / dt, 2)}
                # Work as tokens fed to the model: one sequence per pair vs one prompt pass
                # plus each option's tokens but its last (see scoring._shared_prompt_logprobs).
                enc = [[encode_prompt_target(handle.tokenizer, it.context, o) for o in it.options]
                       for it in items]
                timing["tokens_fed"] = {
                    "pair_per_sequence": sum(len(p.ids) for e in enc for p in e),
                    "shared_prompt": sum(len(e[0].prompt_ids) + sum(len(p.target_ids) - 1 for p in e)
                                         for e in enc),
                }
                entry["tasks"][task.name]["sharing"] = timing
        out["suites"][name] = entry
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
