"""UltraEdit on zsRE (default smollm2-135m): metrics and seconds per edit, one line of JSON per
setting, all settings on one loaded model (its weights restored between them).

    EDITBENCH_PROGRESS=0 python benchmarks/ultraedit.py --data-dir ../shared/data --num 200
    python benchmarks/ultraedit.py --data-dir ../shared/data --take last --num 100 \
        --set '{"lr": 1e-4}' --set '{"lr": 1e-3, "modules": ["mlp_down@26", "mlp_down@27"]}'

``--take last`` reads the end of zsre_3k.json (requests the tests do not score: the sweep
slice); each ``--set`` is one setting (JSON overrides of the model's hparams); without one,
the hparams as they are. Steps: the hparams' ``edits_per_step`` (the paper's turn: 100).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.models import load_model
from editbench.registry import EDITORS
from editbench.run import edit_and_evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="zsre-3k")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--take", choices=["first", "last"], default="first")
    ap.add_argument("--set", action="append", default=[], help="JSON overrides (one setting each)")
    ap.add_argument("--protocols", default="generation,teacher_forced")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    full = load_dataset(args.dataset, data_dir=args.data_dir).requests
    requests = full[: args.num] if args.take == "first" else full[-args.num :]
    handle = load_model(args.model, args.device)
    evaluator = Evaluator(handle, EvalSettings(protocols=tuple(args.protocols.split(","))))
    t0 = time.perf_counter()
    baseline = evaluator.baseline(requests)
    print(json.dumps({"baseline_s": round(time.perf_counter() - t0, 1), "n": len(requests),
                      "take": args.take, "load": os.getloadavg()}), flush=True)
    cls = EDITORS.get("ultraedit").config_class
    for text in args.set or ["{}"]:
        config, _ = load_hparams(cls, "ultraedit", args.model, json.loads(text))
        editor = EDITORS.get("ultraedit")(handle, config)
        step = config.edits_per_step or len(requests)
        results, seconds = edit_and_evaluate(editor, requests, step, evaluator, baseline)
        row = {"set": json.loads(text), "n": len(requests), "edits_per_step": step,
               "edit_s_per_request": round(seconds / len(requests), 4), "load": os.getloadavg()}
        for protocol, res in results.items():
            for key in ("reliability", "generalization", "locality"):
                if res.get(key) is not None:
                    row[f"{protocol}.{key}"] = round(res[key], 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
