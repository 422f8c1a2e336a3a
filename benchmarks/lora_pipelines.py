"""LoRA-DF vs LoRA-BF (and AdaLoRA-BF): the same adapter, two editing pipelines.

Runs ``editbench run`` once per variant on the same requests and prints one JSON object
with the generation-protocol metrics and edit times. Variants (overrides on the bundled
``hparams/<editor>/<model>.yaml``):

- ``lora-df``: the traditional pipeline, one request per edit step, batch 1, up to
  ``max_steps`` Adam steps until the loss is below ``loss_threshold`` (FT-M's schedule);
- ``lora-bf``: the bundled breadth-first settings (all requests, seeded-shuffled
  mini-batches for ``epochs`` epochs);
- ``lora-bf1``: breadth-first at batch 1 (the paper's like-for-like DF-vs-BF comparison);
- ``adalora-bf``: the bundled AdaLoRA settings.

Example (CPU, minutes per variant on smollm2-135m)::

    EDITBENCH_PROGRESS=0 python benchmarks/lora_pipelines.py \\
        --dataset ../shared/data/zsre/zsre_3k.json --num-edits 100 --variants lora-df,lora-bf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from editbench.config import parse_overrides
from editbench.run import RunSpec, run

VARIANTS: dict[str, tuple[str, dict, int | None]] = {
    # name: (editor, overrides, edits_per_step)
    "lora-df": ("lora", {"pipeline": "depth_first", "batch_size": 1, "max_steps": 25}, 1),
    "lora-bf": ("lora", {}, None),
    "lora-bf1": ("lora", {"batch_size": 1}, None),
    "adalora-bf": ("adalora", {}, None),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="zsre-3k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--variants", default="lora-df,lora-bf")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every variant (e.g. layers=[20])")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=None, help="keep the run folders here")
    args = parser.parse_args(argv)
    os.environ.setdefault("EDITBENCH_PROGRESS", "0")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    common = parse_overrides(args.set)
    root = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="lora-pipelines-"))
    report: dict[str, object] = {
        "model": args.model, "dataset": args.dataset, "num_edits": args.num_edits,
        "protocol": "generation", "variants": {},
    }
    for name in names:
        editor, overrides, step = VARIANTS[name]
        spec = RunSpec(
            editor=editor, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
            num_edits=args.num_edits, edits_per_step=step, overrides={**overrides, **common},
            device=args.device, output=str(root / name), overwrite=True,
        )
        out = run(spec)
        metrics = json.loads(out.metrics_path.read_text())
        gen = metrics["results"]["generation"]
        report["variants"][name] = {  # type: ignore[index]
            "editor": editor, "overrides": {**overrides, **common}, "edits_per_step": step,
            **{k: gen.get(k) for k in ("reliability", "generalization", "locality")},
            "edit_time_s": metrics["edit_time_s"],
            "optimizer_steps": sum(s.get("optimizer_steps", 0) for s in metrics["steps"]),
        }
        print(json.dumps({name: report["variants"][name]}), file=sys.stderr, flush=True)  # type: ignore[index]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
