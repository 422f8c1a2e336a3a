"""Leaderboard tables from run directories (Markdown, LaTeX, CSV, HTML, JSON).

One table per protocol, in the layout of the LocFT-BF paper's Table 3: rows are editors,
column groups are dataset x model, cells are metrics. Two runs share a column only when
their comparability keys are equal: ``config["comparability"]`` (written by the runner:
everything besides editor, model, hparams and seed that changes a number) narrowed to the
protocol. Runs of one cell (same editor, model, hparams and key) that differ only in seed
are aggregated as mean +- sample std over n runs. Metric names are read from the runs
(every number in ``metrics.json["results"][protocol]``, plus capability), so a metric the
evaluator adds later is a selectable column at once.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError, did_you_mean
from editbench.files import json_digest
from editbench.run.rundir import RunDir

# Only the default choice and order of columns; every metric a run reports is selectable.
DEFAULT_METRICS = ("reliability", "generalization", "locality", "capability")
FORMATS = ("md", "latex", "csv", "html", "json")
JSON_SCHEMA = Path(__file__).resolve().parent / "schemas" / "leaderboard.schema.json"
SCHEMA_ID = "editbench.leaderboard/1"
# Key fields that say which data a column is about; columns of one table may differ in
# these (and in the model) under --strict, in nothing else.
_DATASET_FIELDS = ("dataset", "dataset_sha256", "edit_target")


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def protocols(self) -> list[str]:
        return [p for p, r in self.metrics["results"].items() if p != "capability" and r]


def expand(dirs: Sequence[str | Path]) -> list[Path]:
    """Run folders: each argument is a run or a sweep folder (its finished cells)."""
    from editbench.run.sweep import finished_cells

    out: list[Path] = []
    for d in dirs:
        cells = None if (Path(d) / "metrics.json").exists() else finished_cells(d)
        out.extend([Path(d)] if cells is None else cells)
    return out


def collect(dirs: Sequence[str | Path]) -> list[Run]:
    if not dirs:
        raise EditbenchError("no run directories given")
    runs = []
    for d in expand(dirs):
        config, metrics = RunDir(d).load()
        _check_run(Path(d), config, metrics)
        runs.append(Run(Path(d), config, metrics))
    if not runs:
        raise EditbenchError(f"no finished runs in {', '.join(map(str, dirs))}")
    return runs


class _MissingSetting(Exception):
    """An older run's config.json lacks a setting its comparability key is rebuilt from."""


def _setting(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _MissingSetting(dotted)
        value = value[part]
    return value


def _check_run(path: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """One line naming the run, file and key when a run folder is not a finished run."""
    results = metrics.get("results")
    if not isinstance(results, dict):
        raise EditbenchError(f"{path}: metrics.json: key 'results': expected an object of "
                             f"protocol -> metrics, got {type(results).__name__}")
    for protocol, values in results.items():
        if values is not None and not isinstance(values, dict):
            raise EditbenchError(f"{path}: metrics.json: key 'results.{protocol}': expected an "
                                 f"object of metric -> number, got {type(values).__name__}")
    # The key is what tables need: building it now names what an older run lacks.
    for protocol in results:
        try:
            comparability_key(config, protocol)
        except _MissingSetting as missing:
            raise EditbenchError(
                f"{path}: config.json: no 'comparability' and key '{missing}' is missing: "
                "expected the config.json of an editbench run") from None


def comparability_key(config: dict[str, Any], protocol: str) -> dict[str, Any]:
    """What must be equal for two runs' ``protocol`` numbers to share a column."""
    comp = config.get("comparability")
    if isinstance(comp, dict):
        key = dict(comp)
        definitions = key.get("protocol_definitions") or {}
        key["protocol_definitions"] = {protocol: definitions.get(protocol)}
        return {"protocol": protocol, **key}
    # Runs written before config.json held a comparability dict.
    locality = _setting(config, "protocol.locality_definition")
    evaluation = _setting(config, "protocol.evaluation")
    key = {
        "protocol": protocol,
        "dataset": _setting(config, "dataset.name"),
        "dataset_sha256": _setting(config, "dataset.sha256")[:12],
        "edit_target": _setting(config, "dataset.target"),
        "num_edits": _setting(config, "dataset.num_edits"),
        "locality": locality,
        "evaluation": evaluation.split(",")[0],
    }
    if protocol == "generation":
        key["max_new_tokens"] = _setting(config, "protocol.max_new_tokens")
    if config.get("capability"):
        limit = (_setting(config, "capability.settings") or {}).get("limit")
        key["capability"] = (f"{_setting(config, 'capability.suite')} "
                             f"({_setting(config, 'capability.suite_hash')[:12]}"
                             + (f", limit {limit}" if limit is not None else "") + ")")
    return key


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def point_metrics(results: dict[str, Any], protocol: str) -> dict[str, float]:
    """Every number a result holds for ``protocol`` (``n`` is the count dict), and the
    capability scores (``capability`` = post-edit, ``capability_pre``, ``capability_delta``)."""
    out: dict[str, float] = {}
    for name, value in (results.get(protocol) or {}).items():
        if name == "n":
            continue
        if _number(value):
            out[name] = value
        elif isinstance(value, dict):  # e.g. a metric broken down by kind
            out.update({f"{name}.{k}": v for k, v in value.items() if _number(v)})
    cap = results.get("capability")
    if isinstance(cap, dict):
        for name, part in (("capability", "post"), ("capability_pre", "pre"), ("capability_delta", "delta")):
            if _number(cap.get(part)):
                out[name] = cap[part]
    return out


def _digest(obj: Any) -> str:
    return json_digest(obj, 8, default=str)


def user_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the user chose besides the defaults for this editor and model (seed aside)."""
    spec = config.get("spec") or {}
    out = {k: v for k, v in sorted((spec.get("overrides") or {}).items()) if k != "seed"}
    if spec.get("hparams_file"):
        out["hparams"] = Path(spec["hparams_file"]).name
    if spec.get("edits_per_step"):
        out["edits/step"] = spec["edits_per_step"]
    return out


def _hparams_id(config: dict[str, Any]) -> str:
    hp = {k: v for k, v in (config.get("hparams") or {}).items() if k != "seed"}
    return _digest([hp, config.get("protocol", {}).get("edits_per_step")])


def model_label(config: dict[str, Any]) -> str:
    return Path(config["model"]["name"]).name


def dataset_label(key: dict[str, Any]) -> str:
    name = str(key.get("dataset", "?"))
    return Path(name).stem if "/" in name or name.endswith((".json", ".jsonl")) else name


@dataclass
class Stat:
    values: list[float]
    runs: list[str]
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


@dataclass
class Column:
    id: str
    dataset: str
    model: str
    key: dict[str, Any]
    label: str = ""


@dataclass
class Row:
    id: str
    editor: str
    label: str


@dataclass
class Table:
    protocol: str
    columns: list[Column]
    rows: list[Row]
    metrics: list[str]  # shown, in order
    available: list[str]  # every metric the table's runs report
    cells: dict[tuple[str, str], dict[str, Stat]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # key fields equal in all columns
    percent: dict[str, bool] = field(default_factory=dict)

    def stat(self, row: Row, col: Column, metric: str) -> Stat | None:
        return self.cells.get((row.id, col.id), {}).get(metric)


def build(runs: Sequence[Run], metrics: Sequence[str] | str | None = None,
          strict: bool = False) -> list[Table]:
    """The tables, one per protocol; ``metrics``: names, ``"all"`` or None (the defaults)."""
    entries: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        for protocol in run.protocols:
            entries.setdefault(protocol, []).append((run, comparability_key(run.config, protocol)))
    tables = [_table(protocol, items) for protocol, items in entries.items()]
    _select_metrics(tables, metrics)
    if strict:
        for t in tables:
            _check_strict(t)
    return tables


def editor_variants(runs: Iterable[Run]) -> dict[str, list[dict[str, Any]]]:
    """Editor -> the distinct settings the user chose for its runs (labels show the
    difference only where an editor has several)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        settings = user_settings(run.config)
        if settings not in out.setdefault(run.config["editor"], []):
            out[run.config["editor"]].append(settings)
    return out


def _table(protocol: str, items: list[tuple[Run, dict[str, Any]]]) -> Table:
    table = Table(protocol, [], [], [], [])
    columns: dict[str, Column] = {}
    placed = []  # (run, row base, column id)
    for run, key in items:
        cid = _digest([key, run.config["model"].get("identity") or run.config["model"]["name"]])
        columns.setdefault(cid, Column(cid, dataset_label(key), model_label(run.config), key))
        placed.append((run, (run.config["editor"], _digest(user_settings(run.config))), cid))
    # A cell whose runs disagree in resolved hparams (e.g. a YAML edited between runs)
    # splits its row rather than averaging different methods.
    hparams: dict[tuple[Any, str], set[str]] = {}
    for run, base, cid in placed:
        hparams.setdefault((base, cid), set()).add(_hparams_id(run.config))
    split = {base for (base, _), ids in hparams.items() if len(ids) > 1}

    variants = editor_variants(run for run, _ in items)
    rows: dict[str, Row] = {}
    for run, base, cid in placed:
        editor = base[0]
        hp = _hparams_id(run.config) if base in split else ""
        label = (editor + variant_label(user_settings(run.config), variants[editor])
                 + (f" [hparams {hp}]" if hp else ""))
        rid = _digest([*base, hp])
        rows.setdefault(rid, Row(rid, editor, label))
        cell = table.cells.setdefault((rid, cid), {})
        for name, value in point_metrics(run.metrics["results"], protocol).items():
            stat = cell.setdefault(name, Stat([], []))
            stat.values.append(value)
            stat.runs.append(str(run.path))
    table.columns = list(columns.values())
    _label_columns(table.columns)
    table.rows = sorted(rows.values(), key=lambda r: (r.editor, r.label))

    names: list[str] = []
    for cell in table.cells.values():
        names.extend(n for n in cell if n not in names)
    table.available = [*(m for m in DEFAULT_METRICS if m in names), *(n for n in names if n not in DEFAULT_METRICS)]
    for name in table.available:
        values = [v for cell in table.cells.values() if name in cell for v in cell[name].values]
        table.percent[name] = all(-1.0 <= v <= 1.0 for v in values)
    keys = [c.key for c in table.columns]
    table.shared = {k: v for k, v in keys[0].items() if all(other.get(k, object()) == v for other in keys)}
    for stats in _by_metric(table):
        means = [s.mean for s in stats]
        if len(means) > 1:
            for s in stats:
                s.best = s.mean == max(means)
    return table


def _by_metric(table: Table) -> Iterable[list[Stat]]:
    """The stats of one metric in one column, across rows (the unit for 'best')."""
    for col in table.columns:
        for name in table.available:
            stats = [s for r in table.rows if (s := table.stat(r, col, name)) is not None]
            if stats:
                yield stats


def variant_label(variant: dict[str, Any], all_variants: list[dict[str, Any]]) -> str:
    if len(all_variants) < 2:
        return ""
    keys = sorted({k for v in all_variants for k in v})
    differ = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in all_variants}) > 1]
    parts = [f"{k}={json.dumps(variant[k]) if not isinstance(variant[k], str) else variant[k]}"
             for k in differ if k in variant]
    return f" ({', '.join(parts) or 'defaults'})"


def _label_columns(columns: list[Column]) -> None:
    """'dataset / model', and what else differs where two columns would read the same."""
    for col in columns:
        col.label = f"{col.dataset} / {col.model}"
    for label in {c.label for c in columns}:
        same = [c for c in columns if c.label == label]
        if len(same) < 2:
            continue
        differ = _differing(same)
        for c in same:
            c.label += " (" + ", ".join(f"{k}={_short(c.key.get(k))}" for k in differ) + ")"


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _select_metrics(tables: list[Table], metrics: Sequence[str] | str | None) -> None:
    available: list[str] = []
    for t in tables:
        available.extend(m for m in t.available if m not in available)
    if metrics is None:
        chosen = [m for m in DEFAULT_METRICS if m in available] or available
    elif metrics == "all":
        chosen = available
    else:
        chosen = list(metrics)
        for m in chosen:
            if m not in available:
                raise EditbenchError(
                    f"--columns: no run reports metric {m!r}{did_you_mean(m, available)}; "
                    f"available: {', '.join(available)}"
                )
    for t in tables:
        t.metrics = chosen


def _differing(columns: Sequence[Column]) -> list[str]:
    fields = sorted({k for c in columns for k in c.key})
    return [k for k in fields if len({json.dumps(c.key.get(k), sort_keys=True) for c in columns}) > 1]


def _check_strict(table: Table) -> None:
    """A table's columns may differ in their data and model only; two columns of the same
    data and model (a split) fail too."""
    by_data: dict[str, list[Column]] = {}
    for col in table.columns:
        by_data.setdefault(f"{col.dataset} / {col.model}", []).append(col)
    differ = [k for k in _differing(table.columns) if k not in _DATASET_FIELDS]
    split = [label for label, cols in by_data.items() if len(cols) > 1]
    for label in split:
        differ.extend(k for k in _differing(by_data[label]) if k not in differ)
    if differ:
        raise EditbenchError(
            f"runs are not comparable: {table.protocol} columns differ in {', '.join(differ)}"
            + (f" (split: {', '.join(split)})" if split else "")
            + "; drop --strict to show them as separate columns"
        )


# --- formats --------------------------------------------------------------------------

def _value(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}" if percent else f"{value:.3g}"


def _cell_parts(stat: Stat | None, percent: bool) -> tuple[str, str | None, int]:
    """(mean, std or None for a single run, n) as text; ('-', None, 0) when missing."""
    if stat is None:
        return "-", None, 0
    std = None if stat.std is None else _value(stat.std, percent)
    return _value(stat.mean, percent), std, stat.n


def _plain_cell(stat: Stat | None, percent: bool, bold: tuple[str, str]) -> str:
    """'mean ± std (n=k)' (Markdown, HTML; numbers need no escaping), the mean wrapped in
    ``bold`` when it is the best of its column."""
    mean, std, n = _cell_parts(stat, percent)
    text = f"{bold[0]}{mean}{bold[1]}" if stat is not None and stat.best else mean
    return text if std is None else f"{text} ± {std} (n={n})"


def _notes(table: Table) -> list[str]:
    """The settings behind the numbers: shared by all columns, then per column."""
    shown = {k: v for k, v in table.shared.items() if k != "protocol"}
    lines = [f"{k}: {_describe(v)}" for k, v in shown.items()]
    for col in table.columns:
        own = {k: v for k, v in col.key.items() if k not in table.shared}
        if own:
            lines.append(f"[{col.label}] " + "; ".join(f"{k}: {_describe(v)}" for k, v in own.items()))
    scaled = [m for m in table.metrics if table.percent.get(m)]
    if scaled:
        lines.append(f"{', '.join(scaled)}: percent (x100). Best value per column in bold; "
                     "mean ± sample std over n runs that differ only in seed.")
    return lines


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}={_describe(v)}" for k, v in value.items()) or "-"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return str(value)


def to_markdown(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        header = ["editor"] + [f"{c.label}" if i == 0 else "" for c in t.columns for i in range(len(t.metrics))]
        sub = [""] + [m for _ in t.columns for m in t.metrics]
        lines = [_md_row(header), _md_row(["---"] + [":---:"] * (len(header) - 1)), _md_row(sub)]
        for r in t.rows:
            cells = [r.label]
            for c in t.columns:
                for m in t.metrics:
                    cells.append(_plain_cell(t.stat(r, c, m), t.percent.get(m, True), ("**", "**")))
            lines.append(_md_row(cells))
        notes = "\n".join(f"- {n}" for n in _notes(t))
        out.append(f"### {t.protocol}\n\n" + "\n".join(lines) + f"\n\n{notes}\n")
    return "\n".join(out)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(tables: Sequence[Table]) -> str:
    """``booktabs`` tables (``\\usepackage{booktabs}``), one ``table`` float per protocol."""
    out = []
    for t in tables:
        k = len(t.metrics)
        spec = "l" + "".join("c" * k for _ in t.columns)
        groups = " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(c.label)}}}" for c in t.columns)
        rules = "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(t.columns)))
        names = " & ".join(latex_escape(m) for _ in t.columns for m in t.metrics)
        lines = [
            r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            rf" & {groups} \\", rules, rf"Editor & {names} \\", r"\midrule",
        ]
        for r in t.rows:
            cells = [latex_escape(r.label)]
            for c in t.columns:
                for m in t.metrics:
                    stat = t.stat(r, c, m)
                    mean, std, n = _cell_parts(stat, t.percent.get(m, True))
                    text = rf"\textbf{{{mean}}}" if stat is not None and stat.best else mean
                    cells.append(text if std is None else rf"{text}$\pm${std}$_{{n={n}}}$")
            lines.append(" & ".join(cells) + r" \\")
        caption = latex_escape(f"{t.protocol} protocol. " + " ".join(_notes(t)))
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


CSV_FIELDS = ("run", "editor", "row", "model", "dataset", "protocol", "column", "key", "seed",
              "num_edits", "metric", "value")


def to_csv(tables: Sequence[Table], runs: Sequence[Run]) -> str:
    """Tidy: one row per run x protocol x metric (capability repeats under each protocol);
    ``value`` is written with ``repr`` so it reads back as the exact float."""
    by_path = {str(r.path): r for r in runs}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for t in tables:
        for r in t.rows:
            for c in t.columns:
                cell = t.cells.get((r.id, c.id), {})
                for metric in t.available:
                    stat = cell.get(metric)
                    for value, path in zip(stat.values, stat.runs, strict=True) if stat else ():
                        run = by_path[path]
                        writer.writerow({
                            "run": path, "editor": r.editor, "row": r.label, "model": c.model,
                            "dataset": c.dataset, "protocol": t.protocol, "column": c.label,
                            "key": _digest(c.key), "seed": run.config.get("seed"),
                            "num_edits": c.key.get("num_edits"), "metric": metric, "value": repr(value),
                        })
    return buf.getvalue()


def to_json(tables: Sequence[Table]) -> dict[str, Any]:
    """The documented structure (``editbench/report/schemas/leaderboard.schema.json``)."""
    return {
        "schema": SCHEMA_ID,
        "tables": [{
            "protocol": t.protocol,
            "metrics": t.metrics,
            "available_metrics": t.available,
            "shared": t.shared,
            "columns": [{"id": c.id, "label": c.label, "dataset": c.dataset, "model": c.model,
                         "key": c.key} for c in t.columns],
            "rows": [{
                "id": r.id, "editor": r.editor, "label": r.label,
                "cells": {c.id: {m: {"mean": s.mean, "std": s.std, "n": s.n, "best": s.best,
                                     "values": s.values, "runs": s.runs}
                                 for m, s in t.cells.get((r.id, c.id), {}).items()}
                          for c in t.columns if (r.id, c.id) in t.cells},
            } for r in t.rows],
            "notes": _notes(t),
        } for t in tables],
    }


def to_html(tables: Sequence[Table], run_links: dict[str, str] | None = None) -> str:
    """HTML ``<table>`` fragments; ``run_links`` maps a run path to an anchor (the report)."""
    out = []
    for t in tables:
        k = len(t.metrics)
        head1 = "".join(f'<th colspan="{k}">{html.escape(c.label)}</th>' for c in t.columns)
        head2 = "".join(f"<th>{html.escape(m)}</th>" for _ in t.columns for m in t.metrics)
        body = []
        for r in t.rows:
            cells = [f'<th scope="row">{html.escape(r.label)}</th>']
            for c in t.columns:
                for m in t.metrics:
                    stat = t.stat(r, c, m)
                    text = _plain_cell(stat, t.percent.get(m, True), ("<b>", "</b>"))
                    if stat is not None and run_links:
                        links = " ".join(f'<a href="#{run_links[p]}" title="{html.escape(Path(p).name)}">'
                                         f"{i + 1}</a>" for i, p in enumerate(stat.runs) if p in run_links)
                        text += f' <span class="runs">[{links}]</span>'
                    cells.append(f"<td>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in _notes(t))
        out.append(
            f'<section class="leaderboard"><h3>{html.escape(t.protocol)}</h3>'
            f'<table><thead><tr><th rowspan="2">editor</th>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table><ul class="notes">{notes}</ul></section>'
        )
    return "\n".join(out)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #111; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #999; padding: 4px 8px; text-align: center; }
th[scope=row] { text-align: left; }
.notes { font-size: 85%; color: #444; }
.runs { font-size: 75%; }
img.plot { max-width: 100%; }
td.failed { color: #b00; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 80%; }
"""


def html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def render(dirs: Sequence[str | Path], fmt: str = "md", metrics: Sequence[str] | str | None = None,
           strict: bool = False) -> str:
    """``editbench leaderboard``: the tables of ``dirs`` in one format."""
    if fmt not in FORMATS:
        raise EditbenchError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = collect(dirs)
    tables = build(runs, metrics, strict)
    if fmt == "md":
        return to_markdown(tables)
    if fmt == "latex":
        return to_latex(tables)
    if fmt == "csv":
        return to_csv(tables, runs)
    if fmt == "json":
        return json.dumps(to_json(tables), indent=2, allow_nan=False) + "\n"
    return html_page("editbench leaderboard", to_html(tables))


def tables(run_dirs: Sequence[str | Path], strict: bool = False) -> str:
    """Markdown tables (the default ``editbench leaderboard`` output)."""
    return render(run_dirs, "md", strict=strict)
