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


def definitions(table: Table) -> list[tuple[str, str]]:
    """(term, definition) of the settings behind the numbers: those shared by all columns
    (each protocol's definition under the protocol's name), then each column's own, then
    how to read a cell."""
    out: list[tuple[str, str]] = []
    for k, v in table.shared.items():
        if k == "protocol":
            continue
        if k == "protocol_definitions" and isinstance(v, dict):
            out.extend((name, _describe(text)) for name, text in v.items())
        else:
            out.append((k, _describe(v)))
    for col in table.columns:
        own = {k: v for k, v in col.key.items() if k not in table.shared}
        if own:
            out.append((f"[{col.label}]", "; ".join(f"{k}: {_describe(v)}" for k, v in own.items())))
    flagged = sorted({m for (_, _), cell in table.cells.items() for m, s in cell.items()
                      if s.few and m in table.metrics})
    for m in flagged:
        out.append((f"{FEW_MARK} {m}", f"rests on fewer than {min_cases(m)} requests with a prompt "
                    "it applies to (known locality facts); read it as indicative only"))
    scaled = [m for m in table.metrics if table.percent.get(m)]
    reading = ("best value per column in bold (in the metric's direction); mean ± sample std over "
               "n runs that differ only in seed")
    out.append(("cells", (f"{', '.join(scaled)} in percent (x100); " if scaled else "") + reading))
    return out


def _notes(table: Table) -> list[str]:
    """The definitions as lines (Markdown bullets, the LaTeX caption, JSON)."""
    return [f"{term}: {text}" for term, text in definitions(table)]


def definition_table(rows: Sequence[tuple[str, str]]) -> str:
    """term -> definition as a compact two-column HTML table."""
    body = "".join(f'<tr><th scope="row">{html.escape(term)}</th><td>{html.escape(text)}</td></tr>'
                   for term, text in rows)
    return f'<table class="defs"><tbody>{body}</tbody></table>'


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


def _html_cell(stat: Stat | None, percent: bool, links: str) -> str:
    """'mean ± std' on one line, '(n=k) [runs]' small below it: every cell reads the same
    however wide the table."""
    mean, std, n = _cell_parts(stat, percent)
    text = f"<b>{mean}</b>" if stat is not None and stat.best else mean
    below = " ".join(x for x in ("" if std is None else f"(n={n})", links) if x)
    return (f'<span class="v">{text}{"" if std is None else f" ± {std}"}</span>'
            + (f'<span class="n">{below}</span>' if below else ""))


def to_html(tables: Sequence[Table], run_links: dict[str, str] | None = None,
            notes: bool = True) -> str:
    """HTML ``<table>`` fragments; ``run_links`` maps a run path to an anchor (the report);
    ``notes``: each table's definitions below it (the report gathers them in one place)."""
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
                    links = ""
                    if stat is not None and run_links:
                        links = " ".join(f'<a href="#{run_links[p]}" title="{html.escape(Path(p).name)}">'
                                         f"{i + 1}</a>" for i, p in enumerate(stat.runs) if p in run_links)
                        links = f'<span class="runs">[{links}]</span>'
                    cells.append(f"<td>{_html_cell(stat, t.percent.get(m, True), links)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        out.append(
            f'<section class="leaderboard"><h3>{html.escape(t.protocol)}</h3>'
            f'<table><thead><tr><th rowspan="2">editor</th>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            f'{definition_table(definitions(t)) if notes else ""}</section>'
        )
    return "\n".join(out)


HTML_STYLE = """
body { font-family: Georgia, "DejaVu Serif", serif; color: #111; line-height: 1.4;
       max-width: 1300px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #bbb; padding-bottom: 0.15em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-variant-numeric: tabular-nums;
        border-top: 2px solid #111; border-bottom: 2px solid #111; }
th, td { padding: 3px 10px; text-align: center; }
thead tr:last-child th, thead th[rowspan] { border-bottom: 1px solid #111; }
thead th[colspan] { border-bottom: 1px solid #777; }
th[scope=row] { text-align: left; font-weight: normal; }
section.leaderboard { overflow-x: auto; }
.v { white-space: nowrap; }
.n { display: block; font-size: 72%; color: #555; white-space: nowrap; line-height: 1.1; }
table.defs { font-size: 88%; border-width: 1px; }
table.defs th { font-weight: bold; white-space: nowrap; vertical-align: top; padding-right: 1.2em; }
table.defs td { text-align: left; }
.runs a { color: #555; }
figure { margin: 1em 0 1.5em; }
figcaption, p.caption, .meta { font-size: 90%; color: #333; }
img.plot { max-width: 100%; display: block; }
.failed { color: #b00; }
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
