"""Figures of finished runs: curves where a line has several points, bars where it has one.

A line is one editor (with its settings) on one dataset x model under one protocol: runs
that differ only in the number of edits (and in when they were evaluated) join it, and
runs that differ only in seed are averaged (error bars: the sample std). Its points come
from each run's ``curve.jsonl`` (``--eval-every``) and its final ``metrics.json``.

- A line with more than one point is a **curve**: metric vs number of edits, one panel
  per protocol x metric, integer edit ticks.
- A line with a single point (no ``--eval-every``, one size) is a **bar**: the final
  metrics as grouped bars, one bar per editor within each metric, one panel per protocol x
  dataset/model x number of edits (a leaderboard column).

Rates (the metric registry's ``is_rate``) are drawn on a fixed 0-1 axis, other metrics
autoscale; ticks and bar labels read as percent where the tables print the metric in
percent, so a figure and a table show the same numbers. Needs matplotlib
(``pip install -e ".[plot]"``).
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
from editbench.evaluate.metrics import is_rate, min_cases
from editbench.extras import require
from editbench.files import atomic_write, read_jsonl
from editbench.report.runs import (
    Run,
    collect,
    comparability_key,
    dataset_label,
    default_metrics_for,
    editor_variants,
    few_cases,
    model_label,
    point_metrics,
    user_settings,
    variant_label,
)
from editbench.report.tables import in_percent

# Key fields a line runs along rather than splits on.
_ALONG = ("num_edits", "evaluation")
PARTS = ("curves", "bars")
TITLES = {"curves": "Metrics vs number of edits",
          "bars": "Final metrics per editor (runs without a curve)"}
_STYLES = ["-", "--", ":", "-."]
# One look for every figure (and fixed salts/metadata elsewhere, so reruns are byte-equal).
_RC = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 8,
       "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "axes.spines.top": False,
       "axes.spines.right": False, "axes.axisbelow": True, "svg.hashsalt": "editbench"}


@dataclass
class Line:
    protocol: str
    editor: str
    data: str  # "dataset / model"
    variant: str  # " (lr=0.001)" where the editor has runs with other settings, else ""
    points: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # edits -> metric -> values
    few: set[tuple[int, str]] = field(default_factory=set)  # (edits, metric) resting on too few requests

    def add(self, edits: int, values: dict[str, float]) -> None:
        at = self.points.setdefault(edits, {})
        for name, value in values.items():
            at.setdefault(name, []).append(value)

    @property
    def label(self) -> str:
        return self.editor + self.variant

    @property
    def is_curve(self) -> bool:
        """More than one number of edits: a curve; one: a bar of the final metrics."""
        return len(self.points) > 1


def run_points(run: Run, protocol: str) -> dict[int, tuple[dict[str, float], set[str]]]:
    """edits -> (metrics, the few-case ones) for one run: its curve points, then its final result."""
    results = []
    curve = run.path / "curve.jsonl"
    if curve.is_file():
        results = [(int(point["edits"]), point["results"]) for _, point in read_jsonl(curve)]
    results.append((int(run.metrics["num_edits"]), run.metrics["results"]))
    return {edits: (point_metrics(res, protocol), few_cases(res, protocol)) for edits, res in results}


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
            for edits, (values, few) in run_points(run, protocol).items():
                line.add(edits, values)
                line.few.update((edits, name) for name in few)
    return list(out.values())


def parts(runs: Sequence[Run]) -> list[str]:
    """Which figures the runs make: ``curves`` and/or ``bars``."""
    found = {"curves" if line.is_curve else "bars" for line in lines(runs)}
    return [p for p in PARTS if p in found]


def _choose(all_lines: Sequence[Line], metrics: Sequence[str] | str | None) -> list[str]:
    available: list[str] = []
    for line in all_lines:
        for at in line.points.values():
            available.extend(m for m in at if m not in available)
    if metrics is None:
        return default_metrics_for(available)
    if metrics == "all":
        return available
    for m in metrics:
        if m not in available:
            raise EditbenchError(f"--columns: no run reports metric {m!r}{did_you_mean(m, available)}; "
                                 f"available: {', '.join(available)}")
    return list(metrics)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _value_axis(ax: Any, rate: bool, percent: bool) -> None:
    """Rates on a fixed 0-1 axis; anything else autoscales. Ticks read as percent where the
    tables print the metric in percent."""
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    ax.grid(True, axis="y", alpha=0.35, linewidth=0.6)
    if rate:
        ax.set_ylim(0, 1)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0) if rate else
                                     FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))


def _percent(metrics: Sequence[str], members: Sequence[Line]) -> bool:
    """As the tables print these metrics (the same rule, over the values drawn)."""
    return all(in_percent(m, [v for line in members for at in line.points.values()
                              for v in at.get(m, [])]) for m in metrics)


def _edit_ticks(ax: Any, edits: set[int]) -> None:
    """Integer ticks: at the evaluated numbers of edits when they are few and apart."""
    from matplotlib.ticker import MaxNLocator

    xs = sorted(edits)
    lo, hi = xs[0], xs[-1]
    gaps = [b - a for a, b in zip(xs, xs[1:], strict=False)]
    if len(xs) <= 8 and min(gaps, default=hi) >= 0.1 * (hi - lo):
        ax.set_xticks(xs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    pad = max(0.5, 0.05 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)


def _not_reported(ax: Any) -> None:
    ax.text(0.5, 0.5, "not reported", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Any, entries: dict[str, Any]) -> None:
    """One legend below the panels, in label order (the colours' order)."""
    if entries:
        labels = sorted(entries)
        fig.legend([entries[k] for k in labels], labels, loc="outside lower center",
                   ncols=min(5, len(labels)), frameon=False)


def _draw_curves(fig: Any, curves: list[Line], chosen: list[str], colors: dict[str, str]) -> None:
    """One panel per protocol x metric, one line per editor (line style: dataset / model)."""
    protocols = list(dict.fromkeys(line.protocol for line in curves))
    datas = sorted({line.data for line in curves})
    axes = fig.subplots(len(protocols), len(chosen), squeeze=False)
    legend: dict[str, Any] = {}
    for i, protocol in enumerate(protocols):
        for j, metric in enumerate(chosen):
            ax = axes[i][j]
            ax.set_title(f"{protocol}: {metric}")
            edits: set[int] = set()
            few_note = False
            for line in (x for x in curves if x.protocol == protocol):
                xs = sorted(e for e, at in line.points.items() if at.get(metric))
                if not xs:
                    continue
                edits.update(xs)
                values = [line.points[e][metric] for e in xs]
                stds = [_std(v) for v in values]
                label = line.label + (f" · {line.data}" if len(datas) > 1 else "")
                drawn = ax.errorbar(xs, [_mean(v) for v in values], yerr=stds if any(stds) else None,
                                    marker="o", markersize=3.5, linewidth=1.4, capsize=2,
                                    elinewidth=0.8, color=colors[line.label], label=label,
                                    linestyle=_STYLES[datas.index(line.data) % len(_STYLES)])
                drawn.lines[0].set_clip_on(False)  # a point at 100% stays whole on the edge
                legend.setdefault(label, drawn)
                thin = [e for e in xs if (e, metric) in line.few]
                if thin:  # as the tables' mark: the value rests on too few requests
                    ax.plot(thin, [_mean(line.points[e][metric]) for e in thin], linestyle="none",
                            marker="o", markersize=6, markerfacecolor="white",
                            markeredgecolor=colors[line.label], clip_on=False, zorder=3)
                    few_note = True
            if not edits:
                _not_reported(ax)
                continue
            _value_axis(ax, is_rate(metric) is True,
                        _percent([metric], [x for x in curves if x.protocol == protocol]))
            _edit_ticks(ax, edits)
            if few_note:
                ax.set_title(f"{protocol}: {metric}\n(hollow: fewer than {min_cases(metric)} requests)",
                             fontsize="small")
            if i == len(protocols) - 1:
                ax.set_xlabel("number of edits")
    _legend(fig, legend)


def _bar_groups(singles: list[Line]) -> dict[tuple[str, str, int], list[Line]]:
    """protocol x dataset/model x number of edits -> its lines, in a stable order."""
    protocols = list(dict.fromkeys(line.protocol for line in singles))
    groups: dict[tuple[str, str, int], list[Line]] = {}
    for line in sorted(singles, key=lambda x: (protocols.index(x.protocol), x.data,
                                               next(iter(x.points)), x.label)):
        groups.setdefault((line.protocol, line.data, next(iter(line.points))), []).append(line)
    return groups


def _bar_panel(ax: Any, members: list[Line], metrics: list[str], colors: dict[str, str],
               edits: int, rate: bool, percent: bool) -> None:
    """Grouped bars: one group per metric, one bar per editor (mean, error bar: std), each
    labelled with its mean as the tables print it (so a 0 reads as 0, not as missing)."""
    width = min(0.8 / len(members), 0.3)
    for i, line in enumerate(members):
        at = line.points[edits]
        shown = [(j, at[m]) for j, m in enumerate(metrics) if at.get(m)]
        offset = (i - (len(members) - 1) / 2) * width
        xs, means, stds = ([j + offset for j, _ in shown], [_mean(v) for _, v in shown],
                           [_std(v) for _, v in shown])
        ax.bar(xs, means, width * 0.9, yerr=stds if any(stds) else None, color=colors[line.label],
               label=line.label, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.2"})
        for x, mean, std in zip(xs, means, stds, strict=True):
            up = mean >= 0
            top = mean + std if up else mean - std
            ax.annotate(f"{100 * mean:.1f}" if percent else f"{mean:.3g}",
                        (x, min(top, 1.0) if rate else top), xytext=(0, 1.5 if up else -1.5),
                        textcoords="offset points", ha="center", va="bottom" if up else "top",
                        fontsize=6.5, color="0.15")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_xlim(-0.5, len(metrics) - 0.5)
    ax.axhline(0, color="0.2", linewidth=0.6)
    if not rate:
        ax.margins(y=0.15)  # room for the labels


def _draw_bars(fig: Any, singles: list[Line], chosen: list[str], colors: dict[str, str]) -> None:
    """One panel per leaderboard column (protocol x dataset/model x edits): the rates on one
    0-1 axis, each other metric beside it on its own scale."""
    groups = _bar_groups(singles)
    protocols = list(dict.fromkeys(key[0] for key in groups))
    columns = list(dict.fromkeys(key[1:] for key in groups))
    subs = fig.subfigures(len(protocols), len(columns), squeeze=False)
    legend: dict[str, Any] = {}
    for i, protocol in enumerate(protocols):
        for j, (data, edits) in enumerate(columns):
            sub, members = subs[i][j], groups.get((protocol, data, edits))
            if not members:
                continue
            sub.suptitle(f"{protocol} · {data} · {edits} edits", fontsize=9)
            present = [m for m in chosen if any(line.points[edits].get(m) for line in members)]
            rates = [m for m in present if is_rate(m) is True]
            panels = ([rates] if rates else []) + [[m] for m in present if m not in rates]
            if not panels:
                _not_reported(sub.subplots())
                continue
            axes = sub.subplots(1, len(panels), squeeze=False, width_ratios=[len(p) for p in panels])[0]
            for ax, metrics in zip(axes, panels, strict=True):
                rate = all(is_rate(m) is True for m in metrics)
                percent = _percent(metrics, [x for x in singles if x.protocol == protocol])
                _bar_panel(ax, members, metrics, colors, edits, rate, percent)
                _value_axis(ax, rate, percent)
            for h, lab in zip(*axes[0].get_legend_handles_labels(), strict=True):
                legend.setdefault(lab, h)
    _legend(fig, legend)


def _size(part: str, part_lines: list[Line], chosen: list[str]) -> tuple[float, float]:
    protocols = len({line.protocol for line in part_lines})
    if part == "curves":
        return max(2.7 * len(chosen), 5.0), 2.2 * protocols + 0.8
    groups = _bar_groups(part_lines)
    columns = len({key[1:] for key in groups})
    editors = max(len(m) for m in groups.values())
    rates = sum(is_rate(m) is True for m in chosen)
    others = len(chosen) - rates
    bars = 0.3 * min(editors, 3) + 0.35 * max(editors - 3, 0)  # inches a group of bars takes
    per_column = 0.6 + (bars + 0.4) * rates + (bars + 1.0) * others
    return max(columns * per_column, 5.0), 2.3 * protocols + 0.8


def figure(runs: Sequence[Run], metrics: Sequence[str] | str | None = None,
           part: str | None = None):
    """A matplotlib Figure (no pyplot, so no global figure state): the curves, the bars, or
    (``part=None``) every part the runs make, one above the other."""
    matplotlib = require("matplotlib", "plots")
    from matplotlib.figure import Figure

    all_lines = lines(runs)
    chosen = _choose(all_lines, metrics)
    split = {"curves": [x for x in all_lines if x.is_curve],
             "bars": [x for x in all_lines if not x.is_curve]}
    if part is not None and part not in PARTS:
        raise EditbenchError(f"plot part: expected one of {', '.join(PARTS)}, got {part!r}")
    wanted = [p for p in ([part] if part else PARTS) if split[p]]
    if not wanted:
        raise EditbenchError(f"no {part} to draw: every line has "
                             + ("a single point" if part == "curves" else "several points"))
    labels = sorted({line.label for line in all_lines})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    sizes = [_size(p, split[p], chosen) for p in wanted]
    draw = {"curves": _draw_curves, "bars": _draw_bars}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(max(w for w, _ in sizes), sum(h for _, h in sizes)), layout="constrained")
        if len(wanted) == 1:
            draw[wanted[0]](fig, split[wanted[0]], chosen, colors)
            return fig
        subs = fig.subfigures(len(wanted), 1, height_ratios=[h for _, h in sizes])
        for sub, p in zip(subs, wanted, strict=True):
            sub.suptitle(TITLES[p], fontsize=10, fontweight="bold")
            draw[p](sub, split[p], chosen, colors)
    return fig


def render(runs: Sequence[Run], fmt: str, metrics: Sequence[str] | str | None = None,
           part: str | None = None) -> bytes:
    """The figure as ``png``, ``svg`` or ``pdf`` bytes (no timestamps, so reruns are equal)."""
    matplotlib = require("matplotlib", "plots")
    if fmt not in ("png", "svg", "pdf"):
        raise EditbenchError(f"plot format: expected png, svg or pdf, got {fmt!r}")
    fig = figure(runs, metrics, part)
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format=fmt, dpi=150, metadata=meta)
    return buf.getvalue()


def plot(dirs: Sequence[str | Path], output: str | Path,
         metrics: Sequence[str] | str | None = None) -> Path:
    """``editbench plot``: write the figure of ``dirs`` to ``output`` (format from its suffix)."""
    out = Path(output)
    data = render(collect(dirs), out.suffix.lstrip(".").lower(), metrics)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out
