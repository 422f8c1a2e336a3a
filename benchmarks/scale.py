"""How a sequential run scales with the number of edits T: seconds and peak memory per phase.

Each size is one ordinary ``editbench run`` in its own process (so peak RSS is that run's),
and the numbers come from its ``metrics.json`` (``phases``: load, baseline, editor, edit,
evaluation, each with seconds and the process's peak RSS at its end).

    # (a) a tiny random LLaMA on the synthetic dataset, one epoch, 2,000 evaluated requests
    python benchmarks/scale.py tiny --sizes 10000,100000 --output scale-tiny.json
    # (b) smollm2-135m LocFT-BF on real requests (all of CounterFact + zsRE in ../shared/data)
    python benchmarks/scale.py smollm2 --sizes 1000,3000,10000 --epochs 1 \\
        --data-dir ../shared/data --output scale-smollm2.json

Part (b) also projects the hours a 100K-edit run would take on this machine, from the
seconds per edit per epoch at the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_HPARAMS = ("modules: [mlp_down@2]\nlr: 1.0e-3\nbatch_size: 100\nepochs: {epochs}\n"
                "epoch_stop_threshold: 0.0\n")


def tiny_model(folder: Path) -> Path:
    """A 4-layer random LLaMA with smollm2's tokenizer (a real vocabulary, 49,152 tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from editbench.models import converted_gguf_folder, get_preset

    source, _ = converted_gguf_folder(get_preset("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(source)
    import torch

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id)
    out = folder / "tiny-llama-real-vocab"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def real_requests(data_dir: Path, out: Path, exclude_subjects: set[str] = frozenset()) -> tuple[Path, int]:
    """All CounterFact cases and zsRE records under ``data_dir`` as one flat JSONL file
    (without requests about ``exclude_subjects``)."""
    from editbench.data import load_path

    # Loaded by path, the files do not say what their locality prompts are; the named
    # releases do (CounterFact: neighbourhood prompts, zsRE: NQ questions).
    kinds = {"cf": "neighbourhood", "zs": "distant", "zt": "distant"}
    files = [("cf", data_dir / "counterfact" / f"counterfact_{s}.json") for s in ("train", "val", "edit")]
    files += [("zs", data_dir / "zsre" / "zsre_3k.json"), ("zt", data_dir / "zsre" / "zsre_train_1k.json")]
    n = 0
    with out.open("w", encoding="utf-8") as fh:
        for prefix, path in files:
            for r in load_path(path).requests:
                if r.subject in exclude_subjects:
                    continue
                record = {
                    "case_id": f"{prefix}-{r.case_id}", "prompt": r.prompt, "subject": r.subject,
                    "target_new": r.target_new, "ground_truth": r.target_true,
                    "rephrase_prompt": list(r.rephrase_prompts),
                    "locality_prompt": [loc.prompt for loc in r.locality],
                    "locality_ground_truth": [loc.answer for loc in r.locality],
                    "locality_kind": [loc.kind or kinds[prefix] for loc in r.locality],
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
    return out, n


def run_one(args: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "EDITBENCH_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "editbench.cli", "run", *args, "--output", str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    epochs = sum(s.get("epochs_run", 1) for s in steps)
    return {"wall_s": round(wall, 1), "phases": metrics["phases"],
            "edit_time_s": metrics["edit_time_s"], "epochs_run": epochs,
            "seconds_per_edit_per_epoch": metrics["edit_time_s"] / (metrics["num_edits"] * max(1, epochs)),
            "peak_rss_mb": max(p["peak_rss_mb"] for p in metrics["phases"].values()),
            "num_evaluated": metrics["num_evaluated"], "results": metrics["results"]}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["tiny", "smollm2"])
    ap.add_argument("--sizes", default=None, help="comma-separated T values")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval-sample", type=int, default=None)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--output", required=True)
    ap.add_argument("--workdir", default=None, help="keep the run directories here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="editbench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"part": args.part, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "load_before": load_average(), "sizes": {}}
    if args.part == "tiny":
        sizes = [int(x) for x in (args.sizes or "10000,100000").split(",")]
        model = tiny_model(work)
        hparams = work / "tiny.yaml"
        hparams.write_text(TINY_HPARAMS.format(epochs=args.epochs))
        sample = args.eval_sample or 2000
        common = ["--editor", "locft_bf", "--model", str(model), "--hparams", str(hparams),
                  "--dataset", "synthetic", "--eval-sample", str(sample), "--device", "cpu",
                  "--max-new-tokens", "8", "--eval-batch-size", "64"]
    else:
        sizes = [int(x) for x in (args.sizes or "1000,3000,10000").split(",")]
        data, available = real_requests(Path(args.data_dir), work / "real-requests.jsonl")
        result["requests_available"] = available
        sample = args.eval_sample or 200
        common = ["--editor", "locft_bf", "--model", "smollm2-135m", "--dataset", str(data),
                  "--eval-sample", str(sample), "--set", f"epochs={args.epochs}",
                  "--set", "epoch_stop_threshold=0.0", "--device", "cpu"]
    result["command"] = common
    for t in sizes:
        print(f"T = {t} ...", file=sys.stderr, flush=True)
        result["sizes"][str(t)] = run_one([*common, "--num-edits", str(t)], work / f"T{t}")
        print(json.dumps(result["sizes"][str(t)]["phases"]), file=sys.stderr, flush=True)
    result["load_after"] = load_average()
    small, large = (result["sizes"][str(s)] for s in (sizes[0], sizes[-1]))
    result["ratios"] = {"peak_rss_large_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
                        "wall_large_over_small": round(large["wall_s"] / small["wall_s"], 2)}
    if args.part == "smollm2":
        spe = large["seconds_per_edit_per_epoch"]
        result["projection_100k_hours"] = {
            "per_epoch": round(spe * 100_000 / 3600, 2),
            "25_epochs_no_early_stop": round(spe * 100_000 * 25 / 3600, 1)}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sizes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
