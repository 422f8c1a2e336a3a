"""``editbench`` command line: argument parsing and printing only; the work is in
``editbench.run`` (run, sweep, tune) and ``editbench.report`` (tables, plots, the page)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from editbench.errors import EditbenchError
from editbench.run.spec import parse_positive


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
    add_spec_options(r)

    tu = sub.add_parser("tune", help="sweep an editor's tuning location and lr, write its hparams")
    tu.add_argument("--editor", required=True)
    tu.add_argument("--dataset", help="dataset name or file (default: the model's known-fact "
                    "tuning slice, known-<model>-tune, built by editbench known-facts)")
    tu.add_argument("--num", type=_argtype(parse_positive), default=50, help="requests in the tuning slice (default 50)")
    tu.add_argument("--take", choices=["last", "first"], default="last",
                    help="slice from the end of the dataset (default; runs use the first T) or the start")
    tu.add_argument("--templates", default="mlp_down",
                    help="module templates to try for fine-tuning editors, comma-separated (e.g. mlp_down,block)")
    tu.add_argument("--layers", help="coarse layers, comma-separated (default: ~7 evenly spaced)")
    tu.add_argument("--lr-factors", default="0.3,3", help="fine stage: the base lr times these (default 0.3,3)")
    tu.add_argument("--objective", default="reliability+generalization")
    tu.add_argument("--constraint", dest="constraints", action="append", metavar="METRIC>=X",
                    help="repeatable (default: " + ", ".join(_tune_default("constraints")) + ")")
    add_spec_options(tu, ["overrides", "hparams_file"])
    tu.add_argument("--output", help="folder of the sweep's tune.jsonl (resumable)")
    tu.add_argument("--write", help="YAML to write (default hparams/<editor>/<model>.yaml here)")
    tu.add_argument("--dry-run", dest="dry", action="store_true", help="print only, write no YAML")
    add_spec_options(tu, ["model", "seed", "device", "dtype", "data_dir", "target", "max_new_tokens",
                          "eval_batch_size", "prompt_format"])

    kf = sub.add_parser("known-facts", help="scan which locality facts a model knows and write "
                        "an editing dataset of them (tuning and evaluation slices)")
    add_spec_options(kf, ["model", "device", "dtype", "data_dir", "prompt_format", "seed"])
    kf.add_argument("--sources", default="counterfact-3k,zsre-3k",
                    help="comma-separated dataset names or files to scan (default: "
                    "counterfact-3k,zsre-3k)")
    kf.add_argument("--output", help="folder for tune.json, eval.json and the card (default: the "
                    "user cache, where runs find them as known-<model>-tune|eval)")
    kf.add_argument("--tune-fraction", type=float, default=0.3,
                    help="share of the subjects in the tuning slice (default 0.3)")
    kf.add_argument("--max-new-tokens", type=_argtype(parse_positive), default=16,
                    help="new tokens per scanned answer (default 16)")
    kf.add_argument("--batch-size", type=_argtype(parse_positive), default=32)
    kf.add_argument("--limit", type=_argtype(parse_positive), metavar="N",
                    help="scan only the first N requests of each source (default: all)")

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

    pl = sub.add_parser(
        "plot", help="metrics vs number of edits where runs make curves (--eval-every or several "
        "sizes), the final metrics per editor as grouped bars where they make one point")
    pl.add_argument("runs", nargs="+", help="run directories or sweep folders")
    pl.add_argument("-o", "--output", default="curves.png", help="a .png, .svg or .pdf file (default: curves.png)")
    pl.add_argument("--columns", help="comma-separated metrics to plot, or 'all'")

    rp = sub.add_parser("report", help="one self-contained HTML page: the sweep's state, tables, "
                        "figures, protocol and metric definitions, each run's settings")
    rp.add_argument("runs", nargs="+", help="sweep folders or run directories")
    rp.add_argument("-o", "--output", default="report.html")
    rp.add_argument("--columns", help="comma-separated metrics to show, or 'all'")

    ls = sub.add_parser("list", help="list registered editors, models, datasets, suites or grids")
    ls.add_argument("what", choices=["editors", "models", "datasets", "suites", "grids"])
    ls.add_argument("--json", action="store_true", help="one JSON array of objects, for scripts")
    ls.add_argument("--data-dir", help="also look for dataset files here (datasets)")

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
    cp.add_argument("--batch-size", type=_argtype(parse_positive), default=32)
    cp.add_argument("--no-cache", action="store_true", help="recompute instead of using the cache")
    cp.add_argument("--device", default="auto")
    cp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    cp.add_argument("--trust-remote-code", action="store_true")
    return parser


def _tune_default(name: str):
    import dataclasses as dc

    from editbench.run.tune import TuneSpec

    return next(f.default for f in dc.fields(TuneSpec) if f.name == name)


_GROUPS = {
    "capability": "general capability (scored before the first edit and after the last)",
    "quality": "quality metrics (scored before the first edit and after the last)",
}


def _argtype(parse):
    """An argparse ``type`` from a parser that raises EditbenchError."""
    def convert(text: str):
        try:
            return parse(text)
        except EditbenchError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--metrics: ")
                                             .removeprefix("--protocol: ")) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_spec_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                     defaults: dict[str, object] | None = None) -> None:
    """Flags for the RunSpec fields ``names`` (default: all), generated from the fields:
    name, default, help text and choices are declared once, in ``editbench.run.spec``.
    ``defaults`` replaces a field's default (a command whose own default differs)."""
    import typing

    from editbench.run.spec import RunSpec, flag_name, literal_choices, parse_positive

    hints = typing.get_type_hints(RunSpec)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(RunSpec):
        if names is not None and f.name not in names:
            continue
        meta = f.metadata
        default = (defaults or {}).get(f.name, f.default)
        help_text = meta["help"]
        kwargs: dict[str, object] = {"dest": f.name}
        if hints[f.name] is bool:
            kwargs["action"] = "store_true"
        elif meta.get("append"):
            kwargs.update(action="append", metavar=meta.get("metavar"))
        else:
            parse = meta.get("parse") or (parse_positive if meta.get("positive") else None)
            if parse is None and float in typing.get_args(hints[f.name]):
                parse = float
            kwargs.update(default=default, type=_argtype(parse) if parse else str)
            choices = literal_choices(f)
            if choices:
                kwargs["choices"] = choices
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if default not in (None, (), ""):
                shown = ",".join(default) if isinstance(default, tuple) else default
                help_text += f" (default: {shown})"
        group = meta.get("group")
        target = parser
        if group is not None and names is None:
            target = groups.get(group) or groups.setdefault(group, parser.add_argument_group(_GROUPS[group]))
        target.add_argument(flag_name(f), help=help_text, **kwargs)


def spec_values(args: argparse.Namespace) -> dict[str, object]:
    """The RunSpec fields present in ``args`` (``--set`` pairs parsed)."""
    from editbench.config import parse_overrides
    from editbench.run.spec import RunSpec

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSpec) if hasattr(args, f.name)}
    if "overrides" in values:
        values["overrides"] = parse_overrides(values["overrides"])
    return values


def _capability_options(p: argparse.ArgumentParser, prefix: str = "capability-") -> None:
    dest = "capability_" if prefix else ""
    p.add_argument(f"--{prefix}limit", dest=f"{dest}limit", type=_argtype(parse_positive), metavar="N",
                   help="score at most N items of every capability task (default: the task files' limits)")
    p.add_argument(f"--{prefix}data-dir", dest=f"{dest}data_dir", metavar="DIR",
                   help="folder that `shared:` capability data is relative to (default: "
                   "$EDITBENCH_CAPABILITY_DATA_DIR, $EDITBENCH_DATA_DIR, ../shared/data beside the checkout)")


def _cmd_run(args: argparse.Namespace) -> int:
    from editbench.report.summary import summary
    from editbench.run import RunSpec, run

    out = run(RunSpec(**spec_values(args)))
    config, metrics = out.load()
    print(summary(config, metrics, out.path))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from editbench.run.tune import Tuner, TuneSpec, format_table

    def numbers(text: str | None, kind):
        try:
            return None if text is None else tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise EditbenchError(f"expected comma-separated numbers, got {text!r}") from None

    shared = spec_values(args)  # the flags tune shares with run
    spec = TuneSpec(
        editor=args.editor, dataset=args.dataset, num=args.num, take=args.take,
        templates=tuple(t.strip() for t in args.templates.split(",") if t.strip()),
        layers=numbers(args.layers, int), lr_factors=numbers(args.lr_factors, float) or (),
        objective=args.objective, output=args.output, write=args.write, dry=args.dry,
        **({"constraints": tuple(args.constraints)} if args.constraints else {}),
        **{k: v for k, v in shared.items() if k not in ("editor", "dataset", "output")},
    )
    result = Tuner(spec).run()
    print(format_table(result["rows"], result["chosen"]))
    print("Pareto front: " + "; ".join(r["location"] for r in result["front"]))
    print(f"rule: {result['rule']} -> {result['chosen']['location']}"
          + ("" if result["meets_constraints"] else " (no point met the rule: closest shown)"))
    if "written" in result:
        print(f"wrote {result['written']}")
    return 0


def _cmd_known_facts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.data import load_dataset
    from editbench.data.known import KnownSettings, build, known_dir
    from editbench.models import load_model

    settings = KnownSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             prompt_format=args.prompt_format, tune_fraction=args.tune_fraction,
                             seed=args.seed)
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    sources = [load_dataset(n, data_dir=args.data_dir, num=args.limit) for n in names]
    handle = load_model(args.model, args.device, args.dtype)
    out = Path(args.output) if args.output else known_dir(args.model)
    build(handle, sources, out, settings, args.model)
    print((out / "README.md").read_text(), end="")
    print(f"wrote {out}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rows = _list_rows(args.what, args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from tabulate import tabulate

    def cell(value: object) -> object:
        if isinstance(value, list):
            return ", ".join(map(str, value)) or "-"
        return "-" if value is None else value

    print(tabulate([{k: cell(v) for k, v in row.items()} for row in rows], headers="keys",
                   tablefmt="plain", intfmt=","))
    return 0


def _list_rows(what: str, data_dir: str | None) -> list[dict[str, object]]:
    if what == "editors":
        from editbench.config import describe_editors

        return describe_editors()
    if what == "models":
        from editbench.models import describe_presets

        return describe_presets()
    if what == "grids":
        from editbench.run.grid import grid_descriptions

        return [{"name": n, "description": t} for n, t in grid_descriptions().items()]
    if what == "suites":
        from editbench.capability import load_suite, suite_names

        return [{"name": n, "description": load_suite(n).spec.description} for n in suite_names()]
    from editbench.data.catalog import describe_datasets

    return describe_datasets(data_dir)


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
    from editbench.report.leaderboard import render

    _write_or_print(render(args.runs, args.format, _columns(args.columns), args.strict), args.output)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.run.grid import load_grid
    from editbench.run.sweep import summary, sweep

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
    from editbench.report.plots import plot

    print(f"wrote {plot(args.runs, args.output, _columns(args.columns))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from editbench.report.page import write_report

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


COMMANDS = {"run": _cmd_run, "tune": _cmd_tune, "known-facts": _cmd_known_facts, "list": _cmd_list, "hparams": _cmd_hparams,
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
