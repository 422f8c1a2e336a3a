"""``editbench report``: one self-contained HTML page for a sweep (or any runs).

The sweep's state (finished, failed, not run) with each cell's outcome and error, the
leaderboard tables, the curves (PNG embedded as data URIs, so the page is one file that
can be mailed or archived), and every run's resolved settings one click away (each table
cell links to its runs).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from editbench.errors import EditbenchError
from editbench.files import atomic_write_text
from editbench.report.leaderboard import html_page, to_html
from editbench.report.runs import Run, collect
from editbench.report.tables import build
from editbench.run.sweep import STATUS_WORDS, describe_cells, sweep_state

# Opens a run's <details> when a table link jumps to it.
_OPEN_TARGET = ("<script>function openTarget(){var e=document.getElementById(location.hash.slice(1));"
                "if(e&&e.tagName==='DETAILS'){e.open=true;}}"
                "window.addEventListener('hashchange',openTarget);openTarget();</script>")


def _anchor(run: Run, index: int) -> str:
    return f"run-{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run.name)


def _plots(runs: Sequence[Run], metrics) -> str:
    from editbench.report.plots import render

    try:
        png = render(runs, "png", metrics)
    except EditbenchError as exc:
        return f"<p class=\"missing\">No plots: {html.escape(str(exc))}</p>"
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="metrics vs number of edits" src="data:image/png;base64,{data}">'


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
    body = "\n".join([
        "<h1>editbench report</h1>",
        _sweep_section(dirs),
        "<h2>Leaderboard</h2>",
        to_html(build(runs, metrics), anchors),
        "<h2>Metrics vs number of edits</h2>",
        _plots(runs, metrics),
        _runs_section(runs, anchors),
        _OPEN_TARGET,
    ])
    return html_page("editbench report", body)


def write_report(dirs: Sequence[str | Path], output: str | Path, metrics=None) -> Path:
    out = Path(output)
    atomic_write_text(out, report_html(dirs, metrics))
    return out
