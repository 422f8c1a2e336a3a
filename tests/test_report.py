"""Figures and the HTML report of real tiny-model runs; the report opened in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from editbench.cli import main
from editbench.evaluate.metrics import find, is_rate
from editbench.report.leaderboard import build, collect, to_json
from editbench.report.plots import TITLES, figure, lines, parts, render


def test_curves_join_curve_points_and_runs_of_other_sizes(tiny_sweep):
    runs = collect([tiny_sweep])
    (ft_m,) = [x for x in lines(runs) if x.protocol == "generation" and x.editor == "ft_m"]
    # T=4 runs have a point after 2 edits (curve.jsonl) and after 4; T=2 runs add to the first.
    assert sorted(ft_m.points) == [2, 4]
    assert len(ft_m.points[2]["reliability"]) == 4 and len(ft_m.points[4]["reliability"]) == 2
    assert len(ft_m.points[4]["capability"]) == 2  # from metrics.json, not from the curve


def test_plot_writes_png_and_svg(tiny_sweep, tmp_path):
    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    from PIL import Image

    png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
    assert main(["plot", str(tiny_sweep), "-o", str(png)]) == 0
    assert main(["plot", str(tiny_sweep), "-o", str(svg), "--columns", "reliability,locality_raw"]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300
        assert len(image.convert("RGB").getcolors(1 << 20)) > 20  # lines and text, not a blank canvas
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    assert "generation: locality_raw" in text and "teacher_forced: reliability" in text
    runs = collect([tiny_sweep])
    assert render(runs, "svg") == render(collect([tiny_sweep]), "svg")  # no timestamps
    assert render(runs, "png") == render(collect([tiny_sweep]), "png")


def _cells(sweep_dir: Path, *patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in sweep_dir.glob(pattern))


def _data_line(container) -> bool:
    """An errorbar container that draws a line through its points (a curve, not a bar's whiskers)."""
    return type(container).__name__ == "ErrorbarContainer" and container.lines[0] is not None


def _integer_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    return ticks


def test_lines_with_several_points_are_curves_on_fixed_rate_axes(tiny_sweep):
    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    runs = collect([tiny_sweep])
    assert parts(runs) == ["curves"]  # every line has points at 2 and 4 edits
    fig = figure(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"{p}: {m}" for p in ("generation", "teacher_forced")
                      for m in ("reliability", "generalization", "locality", "capability")]
    for ax in fig.axes:
        metric = ax.get_title().split(": ")[1]
        assert not ax.patches, "a curve panel holds no bars"
        assert any(_data_line(c) for c in ax.containers)
        if is_rate(metric):
            assert ax.get_ylim() == (0, 1) and ax.yaxis.get_major_formatter()(0.5, 0) == "50%"
            assert _integer_ticks(ax) == [2, 4]
            drawn = [c.lines[0] for c in ax.containers if _data_line(c)]
            assert max(len(line.get_xdata()) for line in drawn) == 2  # a curve, not a point
        else:  # capability is no registered metric: its axis follows its values
            assert is_rate(metric) is None and ax.get_autoscaley_on() and ax.get_ylim() != (0, 1)
            _integer_ticks(ax)


def test_single_point_lines_are_grouped_bars_labelled_as_the_tables_print_them(tiny_sweep):
    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    runs = collect(_cells(tiny_sweep, "*-T2-*"))  # one size: every line is a single point
    assert parts(runs) == ["bars"]
    fig = figure(runs)
    assert not any(_data_line(c) for ax in fig.axes for c in ax.containers), "no curve drawn"
    tables = {t["protocol"]: t for t in to_json(build(runs))["tables"]}
    panels = {}
    for ax in fig.axes:
        title = ax.figure.get_suptitle()
        protocol = title.split(" · ")[0]
        assert title == f"{protocol} · facts / tiny-llama · 2 edits"  # one panel per column
        names = [t.get_text() for t in ax.get_xticklabels()]
        panels.setdefault(protocol, []).append(names)
        bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
        assert sorted(b.get_label() for b in bars) == ["ft_m", "locft_bf"]  # a bar per editor
        assert all(0 < len(b.patches) <= len(names) for b in bars)
        rates = all(is_rate(m) for m in names)
        if rates:
            assert ax.get_ylim() == (0, 1)
        else:
            assert ax.get_autoscaley_on() and ax.get_ylim()[0] == 0  # bars start at zero
        # Each bar carries its mean as the leaderboard prints it (rates and the capability
        # score in percent, one decimal).
        (table,) = [tables[protocol]]
        expected = sorted(f"{100 * cell[m]['mean']:.1f}" for row in table["rows"]
                          for cell in row["cells"].values() for m in names)
        assert sorted(t.get_text() for t in ax.texts) == expected
    for protocol, names in panels.items():
        # The rates share one 0-1 panel; the capability score has its own scale beside it.
        assert names == [["reliability", "generalization", "locality"], ["capability"]], protocol


def test_curves_and_bars_share_one_figure_when_both_occur(tiny_sweep):
    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    # ft_m at 4 edits has a curve (--eval-every 2); locft_bf at 2 edits has one point.
    runs = collect(_cells(tiny_sweep, "ft_m-*-T4-*", "locft_bf-*-T2-*"))
    assert parts(runs) == ["curves", "bars"]
    fig = figure(runs)
    assert [sub.get_suptitle() for sub in fig.subfigs] == [TITLES["curves"], TITLES["bars"]]
    curve_axes, bar_axes = ([ax for ax in fig.axes if ax.figure in sub.subfigs or ax.figure is sub]
                            for sub in fig.subfigs)
    assert {c.get_label() for ax in curve_axes for c in ax.containers} == {"ft_m"}
    assert {c.get_label() for ax in bar_axes for c in ax.containers
            if type(c).__name__ == "BarContainer"} == {"locft_bf"}
    for part in ("curves", "bars"):  # the report embeds each part on its own
        assert render(runs, "png", part=part) == render(runs, "png", part=part)


def find_chromium() -> str:
    """Debian's chromium; installed here as .ci/run does when it is missing and we may."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    why = "not root or no apt-get"
    if shutil.which("apt-get") and os.geteuid() == 0:
        proc = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True, capture_output=True, text=True, timeout=900,
        )
        if path := shutil.which("chromium"):
            return path
        why = (proc.stderr.strip().splitlines() or ["apt-get failed"])[-1]
    pytest.skip(f"chromium is not installed and could not be installed ({why})")


def chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)


class Dom(HTMLParser):
    """The elements of Chromium's --dump-dom output (the page as the browser built it):
    tag, attributes, text and children, enough to read the report's parts back."""

    VOID = {"meta", "img", "br", "hr", "input", "link"}

    def __init__(self, page: str) -> None:
        super().__init__()
        self.stack: list[dict] = []
        self.elements: list[dict] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": [], "children": []}
        if self.stack:
            self.stack[-1]["children"].append(el)
        self.elements.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for el in self.stack:
            el["text"].append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag
                and (cls is None or cls in e["attrs"].get("class", "").split())]


def text(el: dict) -> str:
    return " ".join("".join(el["text"]).split())


def table_rows(table: dict) -> list[list[str]]:
    out = []
    for child in table["children"]:
        if child["tag"] == "tr":
            out.append([text(c) for c in child["children"] if c["tag"] in ("th", "td")])
        else:
            out.extend(table_rows(child))
    return out


def screenshot(exe: str, page: Path, shot: Path, profile: Path) -> np.ndarray:
    from PIL import Image

    proc = chromium(exe, profile, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    print(f"report screenshot: {shot}")
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def near(rgb: np.ndarray, ref: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(rgb - np.array(ref)) <= tol).all(axis=2)


def rows_with(mask: np.ndarray, least: int = 3) -> np.ndarray:
    return np.flatnonzero(mask.sum(axis=1) > least)


BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's C0 and C1: the two editors


def test_report_renders_in_headless_chromium(tiny_sweep, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    from editbench.run.grid import load_grid
    from editbench.run.sweep import sweep

    exe = find_chromium()
    # The sweep run a second time (a copy, so the shared fixture stays as it is): every
    # cell had finished before and is skipped, and they still count as finished.
    project = tmp_path / "project"
    shutil.copytree(tiny_sweep.parent, project)
    monkeypatch.chdir(project)
    monkeypatch.setenv("EDITBENCH_HPARAMS_DIR", str(project / "hparams"))
    again = sweep(load_grid("grid.yaml"), project / "sweep", machine={"device": "cpu"})
    assert {o.status for o in again.values()} == {"skipped"}

    page = tmp_path / "report.html"
    assert main(["report", str(project / "sweep"), "-o", str(page)]) == 0
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained
    dumped = chromium(exe, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)

    (state,) = dom.find("p", "sweep-state")
    assert text(state) == ("8 cells: 8 finished (8 skipped because they had finished before), "
                           "0 failed, 0 not run.")
    boards = dom.find("section", "leaderboard")
    assert [text(b.get("children")[0]) for b in boards] == ["generation", "teacher_forced"]
    doc = to_json(build(collect([project / "sweep"])))
    for board, table in zip(boards, doc["tables"], strict=True):
        (grid,) = [c for c in board["children"] if c["tag"] == "table"]
        rows = {r[0]: r[1:] for r in table_rows(grid)[2:]}  # two header rows
        for row in table["rows"]:
            cells = [row["cells"][c["id"]] for c in table["columns"]]
            shown = [r.split(" ")[0] for r in rows[row["label"]][::4]]  # reliability, per column
            assert shown == [f"{100 * cell['reliability']['mean']:.1f}" for cell in cells]

    # The protocol and the metrics: compact term -> definition tables, no bullet lists.
    assert not dom.find("ul") and not dom.find("li")
    protocol, metrics = (dict(table_rows(t)) for t in dom.find("table", "defs"))
    assert list(protocol)[:2] == ["generation", "teacher_forced"]
    assert protocol["dataset"] == "facts.json" and protocol["edit_target"] == "target_new"
    assert {"locality_definition", "evaluation", "capability"} <= set(protocol)
    assert "cells" not in protocol  # how to read a cell is the leaderboard's caption
    assert list(metrics) == ["reliability", "generalization", "locality", "capability"]
    assert metrics["reliability"] == (f"{find('reliability').definition}; a rate, in percent; "
                                      "higher is better")
    assert metrics["capability"].endswith("a score, in percent; higher is better")

    (fig,) = dom.find("figure")
    assert fig["attrs"]["class"] == "curves"  # every line has several points: no bars
    assert text(fig).startswith("Figure 1. Metrics vs number of edits.")
    assert 'id="run-0-' in dumped.stdout and "config.json" in text(dom.find("body")[0])

    rgb = screenshot(exe, page, tmp_path / "report.png", tmp_path / "profile-shot")
    plot_rows = np.intersect1d(rows_with(near(rgb, BLUE)), rows_with(near(rgb, ORANGE)))
    assert len(plot_rows) > 30, "the embedded plot did not render"
    text_rows = rows_with(rgb.max(axis=2) < 90)
    assert (text_rows < plot_rows[0]).sum() > 100, "the tables did not render above the plot"

    # Runs of which some make curves and some single points: both figures, one report.
    mixed = tmp_path / "mixed.html"
    cells = _cells(project / "sweep", "ft_m-*-T4-*", "locft_bf-*-T2-*")
    assert main(["report", *map(str, cells), "-o", str(mixed)]) == 0
    dumped = chromium(exe, tmp_path / "profile-dom-mixed", "--dump-dom", mixed.as_uri())
    dom = Dom(dumped.stdout)
    assert not dom.find("p", "sweep-state")  # run folders, no sweep
    assert [f["attrs"]["class"] for f in dom.find("figure")] == ["curves", "bars"]
    first, second = (text(f) for f in dom.find("figure"))
    assert first.startswith("Figure 1. Metrics vs number of edits.")
    assert second.startswith("Figure 2. Final metrics per editor.")
    rgb = screenshot(exe, mixed, tmp_path / "report-mixed.png", tmp_path / "profile-shot-mixed")
    # locft_bf (orange) is drawn only as bars: filled, so many rows hold a wide run of it.
    assert len(rows_with(near(rgb, ORANGE), least=25)) > 100, "the bars did not render"
    assert len(rows_with(near(rgb, BLUE))) > 30, "the curves did not render"


def test_values_on_too_few_requests_are_hollow_points_as_the_tables_mark_them(tiny_sweep, tmp_path):
    """A curve point whose ``locality_known`` rests on fewer requests than the metric asks for
    is flagged in the line (drawn hollow, with a note in the panel title) and marked † in the
    table; the same value on enough requests is neither."""
    import json

    from editbench.evaluate.metrics import min_cases

    pytest.importorskip("matplotlib", reason='plots need the plot extra: pip install -e ".[plot]"')
    src = next(p for p in sorted(tiny_sweep.iterdir()) if (p / "curve.jsonl").is_file()
               and json.loads((p / "metrics.json").read_text())["num_edits"] == 4)
    run = tmp_path / src.name
    shutil.copytree(src, run)
    least = min_cases("locality_known")
    points = [json.loads(x) for x in (run / "curve.jsonl").read_text().splitlines()]
    for point, n in zip(points, [least - 1] * len(points), strict=True):
        point["results"]["generation"].update(locality_known=0.5, n={"locality_known": n})
    (run / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["results"]["generation"].update(locality_known=0.5, n={"locality_known": least})
    (run / "metrics.json").write_text(json.dumps(metrics))

    (line,) = [x for x in lines(collect([run])) if x.protocol == "generation"]
    final = int(metrics["num_edits"])
    # The final point is metrics.json's (enough requests), the earlier ones the curve's.
    assert {(int(p["edits"]), "locality_known") for p in points} - {(final, "locality_known")} == line.few
    assert line.few and (final, "locality_known") not in line.few
    svg = render(collect([run]), "svg", metrics=["locality_known"]).decode()
    assert "hollow: fewer than" in svg
