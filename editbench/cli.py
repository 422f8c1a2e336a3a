"""``editbench`` command line: argument parsing only; the work is in runner, sweep,
leaderboard, plots and report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from editbench.errors import EditbenchError


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
    # --- capability (issue 5) ---
    r.add_argument("--capability", metavar="SUITE",
                   help="also score general capability before and after editing: a suite name "
                   "(editbench list suites) or a suite .yaml")
    _capability_options(r)
    r.add_argument("--capability-at-checkpoints", action="store_true",
                   help="also score capability at every --eval-every point (slow)")

    sw = sub.add_parser("sweep", help="run every cell of a grid (editors x models x datasets ...)")
    sw.add_argument("grid", help="a grid .yaml or a shipped grid's name (editbench list grids)")
    sw.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: one cell after another (default); ray: each cell a Ray task")
    sw.add_argument("--output", help="sweep folder, one run directory per cell (default: sweeps/<grid>)")
    sw.add_argument("--ray-address", help="join this running Ray cluster (default: start a local one)")
    sw.add_argument("--dry-run", action="store_true", help="validate the grid and list its cells")
    sw.add_argument("--device", help="auto, cpu, cuda or cuda:N for every cell")
    sw.add_argument("--data-dir", help="folder holding downloaded dataset files")
    sw.add_argument("--capability-data-dir", metavar="DIR",
                    help="folder that `shared:` capability data is relative to")

    lb = sub.add_parser("leaderboard", help="tables of finished runs (Markdown, LaTeX, CSV, HTML, JSON)")
    lb.add_argument("runs", nargs="+", help="run directories or sweep folders")
    lb.add_argument("--format", choices=["md", "latex", "csv", "html", "json"], default="md")
    lb.add_argument("--columns", help="comma-separated metrics to show, or 'all' "
                    "(default: reliability,generalization,locality,capability where present)")
    lb.add_argument("--strict", action="store_true",
                    help="fail instead of showing incomparable runs as separate columns")
    lb.add_argument("-o", "--output", help="write to this file instead of standard output")

    pl = sub.add_parser("plot", help="metrics vs number of edits, one panel per metric")
    pl.add_argument("runs", nargs="+", help="run directories or sweep folders")
    pl.add_argument("-o", "--output", default="curves.png", help="a .png, .svg or .pdf file (default: curves.png)")
    pl.add_argument("--columns", help="comma-separated metrics to plot, or 'all'")

    rp = sub.add_parser("report", help="one self-contained HTML page: tables, plots, each run's settings")
    rp.add_argument("runs", nargs="+", help="sweep folders or run directories")
    rp.add_argument("-o", "--output", default="report.html")
    rp.add_argument("--columns", help="comma-separated metrics to show, or 'all'")

    ls = sub.add_parser("list", help="list registered editors, models, datasets, suites or grids")
    ls.add_argument("what", choices=["editors", "models", "datasets", "suites", "grids"])

    hp = sub.add_parser("hparams", help="print the resolved hyperparameters")
    hp.add_argument("--editor", required=True)
    hp.add_argument("--model", required=True)
    hp.add_argument("--hparams", dest="hparams_file")
    hp.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE")

    # --- capability (issue 5) ---
    cp = sub.add_parser("capability", help="score the general capability of an unedited model")
    cp.add_argument("--model", default="smollm2-135m", help="model preset, HF id or local folder")
    cp.add_argument("--suite", default="default", help="suite name or suite .yaml (default: default)")
    cp.add_argument("--output", help="write the full result as JSON to this file")
    _capability_options(cp, prefix="")
    cp.add_argument("--batch-size", type=_positive, default=32)
    cp.add_argument("--no-cache", action="store_true", help="recompute instead of using the cache")
    cp.add_argument("--device", default="auto")
    cp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    cp.add_argument("--trust-remote-code", action="store_true")
    return parser


def _capability_options(p: argparse.ArgumentParser, prefix: str = "capability-") -> None:
    dest = "capability_" if prefix else ""
    p.add_argument(f"--{prefix}limit", dest=f"{dest}limit", type=_positive, metavar="N",
                   help="score at most N items of every capability task (default: the task files' limits)")
    p.add_argument(f"--{prefix}data-dir", dest=f"{dest}data_dir", metavar="DIR",
                   help="folder that `shared:` capability data is relative to (default: "
                   "$EDITBENCH_CAPABILITY_DATA_DIR, $EDITBENCH_DATA_DIR, ../shared/data beside the checkout)")


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
    cap = metrics["results"].get("capability")
    if cap:
        print(f"capability ({cap['suite']}): pre {cap['pre']:.3f}, post {cap['post']:.3f}, "
              f"delta {cap['delta']:+.3f} (chance {cap['chance']:.3f})")
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
    elif args.what == "grids":
        from editbench.sweep import grid_descriptions

        names = [f"{name}\t{text}" for name, text in grid_descriptions().items()]
    elif args.what == "suites":
        from editbench.capability import load_suite, suite_names

        names = [f"{n}\t{load_suite(n).spec.description}" for n in suite_names()]
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


def _columns(text: str | None) -> list[str] | str | None:
    if text is None or text == "all":
        return text
    return [c.strip() for c in text.split(",") if c.strip()]


def _write_or_print(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from editbench.files import atomic_write_text

    atomic_write_text(output, text)
    print(f"wrote {output}")


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from editbench.leaderboard import render

    _write_or_print(render(args.runs, args.format, _columns(args.columns), args.strict), args.output)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.sweep import load_grid, summary, sweep

    grid = load_grid(args.grid)
    if args.dry_run:
        print(f"{grid.source}: {len(grid.cells)} cells")
        print("\n".join(cell.name for cell in grid.cells))
        return 0
    output = args.output or str(Path("sweeps") / Path(grid.source).stem)
    machine = {"device": args.device, "data_dir": args.data_dir,
               "capability_data_dir": args.capability_data_dir}
    outcomes = sweep(grid, output, args.executor, machine, args.ray_address)
    print(summary(outcomes, output))
    print(f"tables: editbench leaderboard {output}; page: editbench report {output}")
    return 1 if any(o.status == "failed" for o in outcomes.values()) else 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from editbench.plots import plot

    print(f"wrote {plot(args.runs, args.output, _columns(args.columns))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from editbench.report import write_report

    print(f"wrote {write_report(args.runs, args.output, _columns(args.columns))}")
    return 0


def _cmd_capability(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.capability import CapabilitySettings, cached_pre_edit, evaluate_suite, load_suite
    from editbench.files import atomic_write_json
    from editbench.models import load_model

    suite = load_suite(args.suite)
    settings = CapabilitySettings(limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir)
    handle = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    if args.no_cache:
        result, cached = evaluate_suite(handle, suite, settings), False
    else:
        result, cached = cached_pre_edit(handle, suite, settings)
    result = {**result, "model": {"name": args.model, "identity": handle.identity, **handle.info},
              "from_cache": cached}
    width = max(len(n) for n in result["tasks"])
    print(f"{'task':<{width}}  score   chance  n      time_s")
    for name, res in result["tasks"].items():
        mark = " (not in mean)" if name in result["report_only"] else ""
        print(f"{name:<{width}}  {res['score']:.4f}  {res['chance']:.4f}  {res['n']:<5}  "
              f"{res['time_s']:.1f}{mark}")
    print(f"{suite.spec.name}: {result['score']:.4f} (chance {result['chance']:.4f}), "
          f"{result['time_s']:.1f} s" + (" [cached]" if cached else ""))
    if args.output:
        atomic_write_json(Path(args.output), result)
    return 0


COMMANDS = {"run": _cmd_run, "list": _cmd_list, "hparams": _cmd_hparams, "leaderboard": _cmd_leaderboard,
            "capability": _cmd_capability, "sweep": _cmd_sweep, "plot": _cmd_plot, "report": _cmd_report}


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
