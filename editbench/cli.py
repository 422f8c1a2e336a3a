"""``editbench`` command line: argument parsing only; the work is in runner / leaderboard."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from editbench.api import EditbenchError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="editbench", description="Benchmark knowledge editors of language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a sequential-editing experiment")
    r.add_argument("--editor", default="locft_bf", help="registered editor name (default: locft_bf)")
    r.add_argument("--model", default="smollm2-135m",
                   help="model preset, Hugging Face id or local folder (default: smollm2-135m)")
    r.add_argument("--dataset", default="embedded",
                   help="dataset name or file (default: the embedded dataset)")
    r.add_argument("--data-dir", help="folder holding downloaded dataset files "
                   "(default: $EDITBENCH_DATA_DIR, then the user cache)")
    r.add_argument("--target", choices=["alt", "answers0"],
                   help="zsRE edit target: alt (default, EasyEdit/LocFT-BF) or answers0 (ROME/MEMIT)")
    r.add_argument("--num-edits", type=_positive, help="number of edit requests T (default: all)")
    r.add_argument("--sample", choices=["first", "random"], default="first",
                   help="take the first T requests or a seeded random T")
    r.add_argument("--edits-per-step", type=_positive,
                   help="requests per editing step S (default: the editor's, from its hparams)")
    r.add_argument("--eval-every", type=_positive, help="also evaluate after every K edits")
    r.add_argument("--protocol", choices=["generation", "teacher_forced", "both"],
                   default="generation", help="scoring protocol (default: generation)")
    r.add_argument("--max-new-tokens", type=_positive, default=32)
    r.add_argument("--eval-batch-size", type=_positive, default=32)
    r.add_argument("--hparams", dest="hparams_file", help="a YAML file instead of hparams/<editor>/<model>.yaml")
    r.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override one hyperparameter (repeatable), e.g. --set lr=1e-3")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: the preset's on GPU, float32 on CPU)")
    r.add_argument("--output", help="run directory (default: runs/<editor>-<model>-<dataset>-<time>)")
    r.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    r.add_argument("--checkpoint-every", type=_positive, metavar="K",
                   help="save the edited tensors and editor state every K edits (for --resume)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --output from its last checkpoint")
    r.add_argument("--trust-remote-code", action="store_true")

    lb = sub.add_parser("leaderboard", help="Markdown tables of finished runs")
    lb.add_argument("runs", nargs="+", help="run directories")
    lb.add_argument("--strict", action="store_true", help="fail instead of splitting incomparable runs")

    ls = sub.add_parser("list", help="list registered editors, models or datasets")
    ls.add_argument("what", choices=["editors", "models", "datasets"])

    hp = sub.add_parser("hparams", help="print the resolved hyperparameters")
    hp.add_argument("--editor", required=True)
    hp.add_argument("--model", required=True)
    hp.add_argument("--hparams", dest="hparams_file")
    hp.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from editbench.config import parse_overrides
    from editbench.runner import RunSpec, run

    protocols = ("generation", "teacher_forced") if args.protocol == "both" else (args.protocol,)
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["overrides"] = parse_overrides(args.overrides)
    values["protocols"] = protocols
    out = run(RunSpec(**values))
    _, metrics = out.load()
    print(f"run directory: {out.path}")
    for protocol, res in metrics["results"].items():
        if protocol != "capability" and res:
            parts = ", ".join(
                f"{k} {res[k]:.3f}" for k in ("reliability", "generalization", "locality")
                if res.get(k) is not None
            )
            print(f"{protocol}: {parts}")
    print(f"edit time {metrics['edit_time_s']:.1f} s ({metrics['edit_time_per_request_s']:.3f} s/edit), "
          f"evaluation {metrics['eval_time_s']:.1f} s")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "editors":
        from editbench.registry import EDITORS

        names = EDITORS.names()
    elif args.what == "models":
        from editbench.models import preset_names

        names = preset_names()
    else:
        from editbench.data import dataset_names

        names = dataset_names()
    print("\n".join(names))
    return 0


def _cmd_hparams(args: argparse.Namespace) -> int:
    from editbench.config import load_hparams, parse_overrides
    from editbench.registry import EDITORS

    cls = EDITORS.get(args.editor).config_class
    _, resolved = load_hparams(cls, args.editor, args.model, parse_overrides(args.overrides), args.hparams_file)
    print(json.dumps(resolved, indent=2))
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from editbench.leaderboard import tables

    print(tables(args.runs, strict=args.strict))
    return 0


COMMANDS = {"run": _cmd_run, "list": _cmd_list, "hparams": _cmd_hparams, "leaderboard": _cmd_leaderboard}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("EDITBENCH_LOG", "WARNING"), format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except EditbenchError as exc:
        print(f"editbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editbench: interrupted; the run directory holds no metrics.json", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
