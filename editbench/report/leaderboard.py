"""``editbench leaderboard``: the tables of finished runs as Markdown, LaTeX, CSV, HTML or JSON."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError
from editbench.evaluate.metrics import min_cases
from editbench.report.runs import Run, collect, settings_digest
from editbench.report.tables import Stat, Table, build

FORMATS = ("md", "latex", "csv", "html", "json")
FEW_MARK = "†"
JSON_SCHEMA = Path(__file__).resolve().parent / "schemas" / "leaderboard.schema.json"
SCHEMA_ID = "editbench.leaderboard/1"

__all__ = ["FORMATS", "JSON_SCHEMA", "SCHEMA_ID", "Table", "build", "collect", "render", "tables",
           "to_csv", "to_html", "to_json", "to_latex", "to_markdown"]


def _value(value: float, percent: bool) -> str:
    return f"{100 * value:.1f}" if percent else f"{value:.3g}"


def _cell_parts(stat: Stat | None, percent: bool) -> tuple[str, str | None, int]:
    """(mean, std or None for a single run, n) as text; ('-', None, 0) when missing."""
    if stat is None:
        return "-", None, 0
    std = None if stat.std is None else _value(stat.std, percent)
    return _value(stat.mean, percent) + (FEW_MARK if stat.few else ""), std, stat.n


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
    flagged = sorted({m for (_, _), cell in table.cells.items() for m, s in cell.items()
                      if s.few and m in table.metrics})
    for m in flagged:
        lines.append(f"{FEW_MARK} {m}: rests on fewer than {min_cases(m)} requests with a prompt "
                     "it applies to (known locality facts); read it as indicative only.")
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
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "±": r"$\pm$",
                  FEW_MARK: r"$^\dagger$"}


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
                    mean = latex_escape(mean)
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
                            "key": settings_digest(c.key), "seed": run.config.get("seed"),
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
