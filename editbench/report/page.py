"""``editbench report``: one self-contained HTML page for a sweep (or any runs).

In the order a reader needs it: the sweep's state (finished, failed, not run) with each
cell's outcome and error; the leaderboard tables; the figures (PNG embedded as data URIs,
so the page is one file that can be mailed or archived); the protocol and the metrics as
definition tables; every run's resolved settings one click away (each table cell links
to its runs).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from editbench.errors import EditbenchError
from editbench.evaluate.metrics import find, higher_is_better, is_rate
from editbench.files import atomic_write_text
from editbench.report.leaderboard import definition_table, definitions, html_page, to_html
from editbench.report.runs import CAPABILITY_SCORES, Run, collect
from editbench.report.tables import Table, build
from editbench.run.sweep import STATUS_WORDS, describe_cells, sweep_state

# Opens a run's <details> when a table link jumps to it.
_OPEN_TARGET = ("<script>function openTarget(){var e=document.getElementById(location.hash.slice(1));"
                "if(e&&e.tagName==='DETAILS'){e.open=true;}}"
                "window.addEventListener('hashchange',openTarget);openTarget();</script>")

_CAPTIONS = {
    "curves": ("Metrics vs number of edits",
               "Each line is one editor on one dataset / model: its points are the evaluations "
               "during a run (--eval-every) and the final results of runs of each size; mean over "
               "seeds, error bars one sample std. Rates on a 0-100% axis."),
    "bars": ("Final metrics per editor",
             "Runs with a single evaluation (no --eval-every, one number of edits): one panel per "
             "protocol x dataset / model x number of edits, one bar per editor, labelled with its "
             "mean as the tables print it (rates in percent); error bars one sample std over seeds. "
             "Rates share a 0-100% axis; other metrics have their own scale."),
}


def _anchor(run: Run, index: int) -> str:
    return f"run-{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run.name)


def _figures(runs: Sequence[Run], metrics) -> str:
    from editbench.report.plots import parts, render

    out = []
    try:
        for number, part in enumerate(parts(runs), 1):
            title, caption = _CAPTIONS[part]
            data = base64.b64encode(render(runs, "png", metrics, part)).decode("ascii")
            out.append(f'<figure class="{part}"><img class="plot" alt="{html.escape(title)}" '
                       f'src="data:image/png;base64,{data}"><figcaption><b>Figure {number}.</b> '
                       f"{html.escape(title)}. {html.escape(caption)}</figcaption></figure>")
    except EditbenchError as exc:
        return f"<p class=\"missing\">No plots: {html.escape(str(exc))}</p>"
    return "<h2>Figures</h2>\n" + "\n".join(out)


def _sweep_section(dirs: Sequence[str | Path]) -> str:
    parts = []
    for d in dirs:
        state = sweep_state(d)
        if state is None:
            continue
        cells = state["cells"]
        rows = "".join(
            f"<tr><th scope=\"row\">{html.escape(name)}</th><td class=\"{html.escape(c['status'])}\">"
            f"{html.escape(STATUS_WORDS.get(c['status'], c['status']))}</td>"
            f"<td>{c.get('seconds', 0):.0f}</td><td>{html.escape(c.get('error') or '')}</td></tr>"
            for name, c in cells.items()
        )
        finished = state.get("finished") or "not finished (interrupted or still running)"
        about = f" ({html.escape(state['description'])})" if state.get("description") else ""
        parts.append(
            f"<h2>Sweep {html.escape(Path(d).name)}</h2>"
            f'<p class="sweep-state">{html.escape(describe_cells(c["status"] for c in cells.values()))}.</p>'
            f'<p class="meta">grid {html.escape(state["grid"])}{about}; executor '
            f"{html.escape(state['executor'])}; started {html.escape(state['started'])}, finished "
            f"{html.escape(str(finished))}; folder {html.escape(str(d))}</p>"
            f"<details><summary>cells</summary><table><thead><tr><th>cell</th><th>status</th>"
            f"<th>seconds</th><th>error</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    return "\n".join(parts)


def protocol_rows(tables: Sequence[Table]) -> list[tuple[str, str]]:
    """Every table's definitions once, the protocols' own first: a term with the same
    definition in all tables is one row; where the tables differ, one row per protocol.
    How to read a cell is the leaderboard's caption, not a row."""
    by_term: dict[str, dict[str, str]] = {}
    for t in tables:
        for term, text in definitions(t):
            if term != "cells":
                by_term.setdefault(term, {})[t.protocol] = text
    protocols = [t.protocol for t in tables]
    rows = []
    for term in sorted(by_term, key=lambda term: term not in protocols):
        texts = by_term[term]
        if len(set(texts.values())) == 1:
            rows.append((term, next(iter(texts.values()))))
        else:
            rows.extend((f"{term} ({protocol})", text) for protocol, text in texts.items())
    return rows


def metric_rows(names: Sequence[str], percent: dict[str, bool]) -> list[tuple[str, str]]:
    """metric -> what it measures (the metric registry), how it is shown, its direction."""
    rows = []
    for name in names:
        entry = find(name)
        if entry is not None:
            text = entry.definition + ("" if entry.name == name else
                                       f" (kind {name[len(entry.name) + 1:]})")
        else:
            text = CAPABILITY_SCORES[name][1] if name in CAPABILITY_SCORES else "not a registered metric"
        shown = ("a rate" if is_rate(name) else "a score") + (
            ", in percent" if percent.get(name) else "")
        better = "higher" if higher_is_better(name) else "lower"
        rows.append((name, f"{text}; {shown}; {better} is better"))
    return rows


def _definitions_section(tables: Sequence[Table]) -> str:
    shown = list(dict.fromkeys(m for t in tables for m in t.metrics))
    percent = {m: any(t.percent.get(m) for t in tables) for m in shown}
    aggregations = sorted({m.aggregation for name in shown if (m := find(name)) is not None})
    how = (f"<p class=\"caption\">Each metric: {html.escape('; '.join(aggregations))}.</p>"
           if aggregations else "")
    return ("<h2>Protocol</h2>\n" + definition_table(protocol_rows(tables))
            + "\n<h2>Metrics</h2>\n" + definition_table(metric_rows(shown, percent)) + how)


def _leaderboard_caption(tables: Sequence[Table]) -> str:
    """How to read a cell (the tables' own 'cells' definition, said once)."""
    reading = next((text for t in tables for term, text in definitions(t) if term == "cells"), "")
    return (f'<p class="caption">One table per protocol; columns: dataset / model; {html.escape(reading)}; '
            "the bracketed numbers link to the runs.</p>")


def _runs_section(runs: Sequence[Run], anchors: dict[str, str]) -> str:
    items = []
    for run in runs:
        settings = html.escape(json.dumps(run.config, indent=2, sort_keys=True))
        results = html.escape(json.dumps(run.metrics["results"], indent=2))
        items.append(
            f'<details id="{anchors[str(run.path)]}"><summary>{html.escape(run.name)} '
            f"({html.escape(run.config['editor'])}, seed {run.config.get('seed')})</summary>"
            f"<h4>results</h4><pre>{results}</pre><h4>config.json</h4><pre>{settings}</pre></details>"
        )
    return "<h2>Runs</h2>\n" + "\n".join(items)


def report_html(dirs: Sequence[str | Path], metrics=None) -> str:
    runs = collect(dirs)
    anchors = {str(run.path): _anchor(run, i) for i, run in enumerate(runs)}
    tables = build(runs, metrics)
    editors = sorted({run.config["editor"] for run in runs})
    body = "\n".join([
        "<h1>editbench report</h1>",
        f'<p class="meta">{len(runs)} finished runs of {len(editors)} editors '
        f"({html.escape(', '.join(editors))}).</p>",
        _sweep_section(dirs),
        "<h2>Leaderboard</h2>",
        _leaderboard_caption(tables),
        to_html(tables, anchors, notes=False),
        _figures(runs, metrics),
        _definitions_section(tables),
        _runs_section(runs, anchors),
        _OPEN_TARGET,
    ])
    return html_page("editbench report", body)


def write_report(dirs: Sequence[str | Path], output: str | Path, metrics=None) -> Path:
    out = Path(output)
    atomic_write_text(out, report_html(dirs, metrics))
    return out
