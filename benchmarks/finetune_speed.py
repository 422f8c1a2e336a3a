"""Speed and memory of the fine-tuning pipeline on smollm2-135m; prints JSON.

- seconds per LocFT-BF epoch over 300 zsRE requests (batch 100, no skipped steps);
- wall time of the default smollm2 LocFT-BF edit of the first 100 zsRE requests (the
  released LocFT code needs ~250 s for the same requests on the 2-core dev machine);
- evaluation throughput (prompts/s) of each protocol;
- peak memory (RSS on CPU, allocated memory on GPU).

Usage: python benchmarks/finetune_speed.py --data-dir ../shared/data [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.models import load_model
from editbench.registry import EDITORS


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    requests = load_dataset("zsre-3k", data_dir=args.data_dir, num=300).requests
    handle = load_model("smollm2-135m", device=args.device)
    cls = EDITORS.get("locft_bf")
    original = {k: v.clone() for k, v in handle.model.state_dict().items()}
    out: dict[str, object] = {"device": args.device, "torch_threads": torch.get_num_threads()}

    config, _ = load_hparams(cls.config_class, "locft_bf", "smollm2-135m",
                             {"batch_size": 100, "epochs": args.epochs, "loss_threshold": 0.0,
                              "epoch_stop_threshold": 0.0})
    t0 = time.perf_counter()
    cls(handle, config).edit(requests)
    out["locft_bf_epoch_s_300req_batch100"] = round((time.perf_counter() - t0) / args.epochs, 2)
    handle.model.load_state_dict(original)

    config, resolved = load_hparams(cls.config_class, "locft_bf", "smollm2-135m")
    t0 = time.perf_counter()
    stats = cls(handle, config).edit(requests[:100])
    out["locft_bf_default_edit_s_100req"] = round(time.perf_counter() - t0, 1)
    out["locft_bf_default_hparams"] = {k: resolved[k] for k in ("modules", "lr", "batch_size", "epochs")}
    out["locft_bf_default_epochs_run"] = stats.info["epochs_run"]
    handle.model.load_state_dict(original)

    for protocol in ("generation", "teacher_forced"):
        ev = Evaluator(handle, EvalSettings(protocols=(protocol,), batch_size=64))
        n_prompts = sum(1 + len(r.rephrase_prompts) + len(r.locality) for r in requests)
        baseline = ev.baseline(requests)
        t0 = time.perf_counter()
        ev.evaluate(requests, baseline)
        out[f"eval_{protocol}_prompts_per_s"] = round(n_prompts / (time.perf_counter() - t0), 1)
    out["peak_memory_mb"] = round(peak_memory_mb(args.device), 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
