"""Curves: each metric vs the number of edits, one line per editor (and dataset x model).

Points come from a run's ``curve.jsonl`` (``--eval-every``) and from its final
``metrics.json``; runs that differ only in the number of edits (and in when they were
evaluated) join one line, and runs that differ only in seed are averaged (error bars: the
sample std). One panel per protocol x metric. Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError, did_you_mean
from editbench.extras import require
from editbench.files import atomic_write, read_jsonl
from editbench.report.runs import (
    Run,
    collect,
    comparability_key,
    dataset_label,
    default_metrics,
    editor_variants,
    model_label,
    point_metrics,
    user_settings,
    variant_label,
)

# Key fields a line runs along rather than splits on.
_ALONG = ("num_edits", "evaluation")


@dataclass
class Line:
    protocol: str
    editor: str
    data: str  # "dataset / model"
    variant: str  # " (lr=0.001)" where the editor has runs with other settings, else ""
    points: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # edits -> metric -> values

    def add(self, edits: int, values: dict[str, float]) -> None:
        at = self.points.setdefault(edits, {})
        for name, value in values.items():
            at.setdefault(name, []).append(value)


def run_points(run: Run, protocol: str) -> dict[int, dict[str, float]]:
    """edits -> metrics for one run: its curve points, then its final result."""
    points: dict[int, dict[str, float]] = {}
    curve = run.path / "curve.jsonl"
    if curve.is_file():
        for _, point in read_jsonl(curve):
            points[int(point["edits"])] = point_metrics(point["results"], protocol)
    points[int(run.metrics["num_edits"])] = point_metrics(run.metrics["results"], protocol)
    return points


def lines(runs: Sequence[Run]) -> list[Line]:
    out: dict[str, Line] = {}
    variants = editor_variants(runs)
    for run in runs:
        editor, settings = run.config["editor"], user_settings(run.config)
        for protocol in run.protocols:
            key = {k: v for k, v in comparability_key(run.config, protocol).items() if k not in _ALONG}
            ident = json.dumps([key, editor, run.config["model"].get("identity")
                                or run.config["model"]["name"], settings], sort_keys=True, default=str)
            line = out.setdefault(ident, Line(
                protocol, editor, f"{dataset_label(key)} / {model_label(run.config)}",
                variant_label(settings, variants[editor])))
            for edits, values in run_points(run, protocol).items():
                line.add(edits, values)
    return list(out.values())


def _matplotlib():
    require("matplotlib", "plots")
    from matplotlib.figure import Figure

    return Figure


def _choose(all_lines: Sequence[Line], metrics: Sequence[str] | str | None) -> list[str]:
    available: list[str] = []
    for line in all_lines:
        for at in line.points.values():
            available.extend(m for m in at if m not in available)
    if metrics is None:
        return [m for m in default_metrics() if m in available] or available
    if metrics == "all":
        return available
    for m in metrics:
        if m not in available:
            raise EditbenchError(f"--columns: no run reports metric {m!r}{did_you_mean(m, available)}; "
                                 f"available: {', '.join(available)}")
    return list(metrics)


def figure(runs: Sequence[Run], metrics: Sequence[str] | str | None = None):
    """A matplotlib Figure (no pyplot, so no global figure state)."""
    figure_cls = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    all_lines = lines(runs)
    chosen = _choose(all_lines, metrics)
    protocols = list(dict.fromkeys(line.protocol for line in all_lines))
    several_data = len({line.data for line in all_lines}) > 1
    fig = figure_cls(figsize=(3.4 * len(chosen), 2.8 * len(protocols) + 0.8), layout="constrained")
    axes = fig.subplots(len(protocols), len(chosen), squeeze=False)
    editors = sorted({line.editor for line in all_lines})
    datas = sorted({line.data for line in all_lines})
    styles = ["-", "--", ":", "-."]
    for i, protocol in enumerate(protocols):
        for j, metric in enumerate(chosen):
            ax = axes[i][j]
            ax.set_title(f"{protocol}: {metric}", fontsize=10)
            ax.set_xlabel("edits")
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for line in (x for x in all_lines if x.protocol == protocol):
                xs = sorted(e for e, at in line.points.items() if at.get(metric))
                if not xs:
                    continue
                values = [line.points[e][metric] for e in xs]
                means = [math.fsum(v) / len(v) for v in values]
                stds = [_std(v) for v in values]
                label = line.editor + line.variant + (
                    f" · {line.data}" if several_data else "")
                ax.errorbar(xs, means, yerr=stds if any(stds) else None, marker="o", markersize=4,
                            capsize=2, linestyle=styles[datas.index(line.data) % len(styles)],
                            color=f"C{editors.index(line.editor) % 10}", label=label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    return fig


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def render(runs: Sequence[Run], fmt: str, metrics: Sequence[str] | str | None = None) -> bytes:
    """The figure as ``png``, ``svg`` or ``pdf`` bytes (no timestamps, so reruns are equal)."""
    matplotlib = require("matplotlib", "plots")
    if fmt not in ("png", "svg", "pdf"):
        raise EditbenchError(f"plot format: expected png, svg or pdf, got {fmt!r}")
    fig = figure(runs, metrics)
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
    with matplotlib.rc_context({"svg.hashsalt": "editbench"}):
        fig.savefig(buf, format=fmt, dpi=100, metadata=meta)
    return buf.getvalue()


def plot(dirs: Sequence[str | Path], output: str | Path,
         metrics: Sequence[str] | str | None = None) -> Path:
    """``editbench plot``: write the figure of ``dirs`` to ``output`` (format from its suffix)."""
    out = Path(output)
    data = render(collect(dirs), out.suffix.lstrip(".").lower(), metrics)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out
