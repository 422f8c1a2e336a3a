"""Why the pre-edit baseline takes longer than the post-edit evaluation: both phases timed on
the same requests, with the tokens each one generated (one JSON object on stdout).

Three measurements on one loaded model:
- ``baseline``: ``Evaluator.baseline`` on the unedited model (every protocol's prompts: edit,
  paraphrase and locality, and the locality token distributions the later phases compare with);
- ``evaluation_unedited``: ``Evaluator.evaluate`` of the same, still unedited model against
  that baseline: the same prompts and the same generated answers, so any cost the baseline
  adds beyond the evaluation's shows up as a ratio above 1;
- ``evaluation_edited``: the same after ``--editor`` edited the requests (the number a run
  reports as its evaluation time).

Generation stops at '.', newline or EOS; an edited model trained to stop after its target
answers the edit and paraphrase prompts in a few tokens where the unedited model goes on,
so the tokens generated per phase are counted too.

    EDITBENCH_PROGRESS=0 python benchmarks/baseline_cost.py --data-dir ../shared/data \\
        --dataset counterfact-3k --num 200

Say in any figure you quote whether the machine was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.evaluate import EvalSettings, Evaluator
from editbench.evaluate.records import PreEdit
from editbench.models import load_model
from editbench.registry import EDITORS


def _outputs(record: dict[str, Any]) -> list[str]:
    """Every generated output string in one evaluation record."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "output" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(record)
    return found


def timed(tokenizer, call) -> dict[str, Any]:
    """Run ``call(sink)``; its seconds, records and generated tokens."""
    records: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    call(records.append)
    seconds = time.perf_counter() - t0
    outputs = [o for r in records for o in _outputs(r)]
    tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    return {"seconds": round(seconds, 2), "answers": len(outputs), "generated_tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=os.environ.get("EDITBENCH_DATA_DIR"))
    p.add_argument("--dataset", default="counterfact-3k")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--editor", default="locft_bf")
    args = p.parse_args(argv)

    handle = load_model(args.model, "auto", None)
    requests = load_dataset(args.dataset, data_dir=args.data_dir, num=args.num).requests
    evaluator = Evaluator(handle, EvalSettings())
    tok = handle.tokenizer
    result: dict[str, Any] = {"model": args.model, "dataset": args.dataset, "requests": len(requests),
                              "load_average_start": [round(x, 2) for x in os.getloadavg()]}

    pre: list[dict[str, Any]] = []

    def run_baseline(sink) -> None:  # as the runner calls it: edit and paraphrase prompts too
        evaluator.baseline(requests, targets=True, sink=lambda rec: (pre.append(rec), sink(rec)))

    result["baseline"] = timed(tok, run_baseline)
    baseline = PreEdit(pre)
    result["evaluation_unedited"] = timed(tok, lambda sink: evaluator.evaluate(requests, baseline, sink))

    cls = EDITORS.get(args.editor)
    config, _ = load_hparams(cls.config_class, args.editor, args.model, {})
    editor = cls(handle, config)
    t0 = time.perf_counter()
    editor.edit(requests)
    result["edit_seconds"] = round(time.perf_counter() - t0, 2)
    result["evaluation_edited"] = timed(tok, lambda sink: evaluator.evaluate(requests, baseline, sink))

    base = result["baseline"]["seconds"]
    result["ratio_baseline_to_unedited_evaluation"] = round(base / result["evaluation_unedited"]["seconds"], 2)
    result["ratio_baseline_to_edited_evaluation"] = round(base / result["evaluation_edited"]["seconds"], 2)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
