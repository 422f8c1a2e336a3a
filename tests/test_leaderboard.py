"""Leaderboard tables from real tiny-model runs: seed aggregation, the formats (Markdown,
LaTeX, CSV, JSON, HTML) and comparability (incomparable runs never share a column)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from editbench.cli import main
from editbench.errors import EditbenchError
from editbench.evaluate.metrics import higher_is_better
from editbench.report.leaderboard import JSON_SCHEMA, Table, build, collect, render, tables
from editbench.run.rundir import RunDir


def metrics_of(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def file_value(path: Path, protocol: str, metric: str) -> float:
    """A metric read straight from a run's metrics.json (independently of the leaderboard)."""
    results = metrics_of(path)["results"]
    if metric.startswith("capability"):
        return results["capability"]["post" if metric == "capability" else metric.split("_")[1]]
    return results[protocol][metric]


def column_of(table: Table, path: Path) -> str:
    (col,) = {cid for (_, cid), cell in table.cells.items()
              for stat in cell.values() if str(path) in stat.runs}
    return col


def test_seeds_aggregate_per_cell_and_the_best_is_marked(tiny_sweep):
    runs = collect([tiny_sweep])
    assert len(runs) == 8
    gen, tf = build(runs)
    assert (gen.protocol, tf.protocol) == ("generation", "teacher_forced")
    assert sorted(c.label for c in gen.columns) == [
        "facts / tiny-llama (num_edits=2)", "facts / tiny-llama (num_edits=4)"]
    assert [r.label for r in gen.rows] == ["ft_m", "locft_bf"]
    assert gen.metrics == ["reliability", "generalization", "locality", "capability"]
    assert {"locality_raw", "locality_gold", "capability_pre", "capability_delta"} <= set(gen.available)
    for table in (gen, tf):
        for col in table.columns:
            num_edits = col.key["num_edits"]
            for row in table.rows:
                paths = sorted(tiny_sweep.glob(f"{row.editor}-*-T{num_edits}-s*"))
                assert len(paths) == 2
                for metric in table.available:
                    stat = table.stat(row, col, metric)
                    expected = [file_value(p, table.protocol, metric) for p in paths]
                    assert stat.n == 2 and sorted(stat.values) == sorted(expected)
                    assert stat.mean == pytest.approx(statistics.mean(expected), abs=1e-12)
                    assert stat.std == pytest.approx(statistics.stdev(expected), abs=1e-12)
            for metric in table.available:
                means = [table.stat(r, col, metric).mean for r in table.rows]
                # The best in the metric's own direction: locality_kl is better lower.
                best = max(means) if higher_is_better(metric) else min(means)
                assert [table.stat(r, col, metric).best for r in table.rows] == [m == best for m in means]
    assert not higher_is_better("locality_kl") and higher_is_better("locality_distant")
    md = render([tiny_sweep], "md")
    assert md.count("### ") == 2 and "(n=2)" in md and "**" in md and "| ft_m |" in md


def test_latex_is_a_booktabs_table(tiny_sweep, tmp_path):
    tex = render([tiny_sweep], "latex")
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 2
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 2
    for block in tex.split(r"\begin{table}")[1:]:
        (spec,) = re.findall(r"\\begin\{tabular\}\{([lc]+)\}", block)
        body = block.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        assert len(body) == 2  # one row per editor
        for line in [*body, block.split(r"\toprule")[1].split(r"\midrule")[0].strip().splitlines()[-1]]:
            assert line.endswith(r"\\") and len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1
    text = re.sub(r"\$[^$]*\$", "", tex)  # outside math, specials must be escaped
    assert not re.search(r"(?<!\\)[_%#]", text) and "ft\\_m" in text
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")

    engine = next((e for e in ("pdflatex", "lualatex", "xelatex") if shutil.which(e)), None)
    if engine is None:
        return  # the structural checks above are what a machine without TeX can do
    doc = tmp_path / "table.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,"
                   "landscape]{geometry}\n\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000


def test_csv_is_tidy_and_round_trips(tiny_sweep):
    rows = list(csv.DictReader(io.StringIO(render([tiny_sweep], "csv"))))
    runs = collect([tiny_sweep])
    gen, tf = build(runs)
    assert len(rows) == sum(len(t.available) for t in (gen, tf)) * len(runs)
    seen = set()
    for row in rows:
        path = Path(row["run"])
        assert float(row["value"]) == file_value(path, row["protocol"], row["metric"])
        assert int(row["seed"]) == json.loads((path / "config.json").read_text())["seed"]
        seen.add((row["run"], row["protocol"], row["metric"]))
    assert len(seen) == len(rows)  # one row per run x protocol x metric


def test_json_validates_against_the_documented_schema(tiny_sweep):
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(render([tiny_sweep], "json"))
    schema = json.loads(JSON_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)
    table = doc["tables"][0]
    assert table["protocol"] == "generation"
    for row in table["rows"]:
        for cell in row["cells"].values():
            rel = cell["reliability"]
            assert rel["n"] == 2 and rel["mean"] == pytest.approx(statistics.mean(rel["values"]))
            assert rel["values"] == [file_value(Path(p), "generation", "reliability") for p in rel["runs"]]
    bad = json.loads(json.dumps(doc))
    bad["tables"][0]["rows"][0]["cells"] = {"x": {"reliability": {"mean": "high"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _variant(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["comparability"].update(changes)
    RunDir(dst).write_config(config)
    return dst


@pytest.mark.parametrize(
    "changes",
    [
        {"dataset_sha256": "0" * 64},  # another data file of the same name
        {"num_edits": 3},
        {"locality_definition": "share of locality prompts answered with the gold answer"},
        {"max_new_tokens": 50},
        {"eval_sample": {"mode": "random", "size": 2, "seed": 1}},  # a field the leaderboard has never heard of
    ],
)
def test_incomparable_runs_never_share_a_column(tiny_sweep, tmp_path, changes):
    original = tiny_sweep / "ft_m-tiny-llama-facts-T4-s0"
    twin = _variant(original, tmp_path / "twin")
    other = _variant(original, tmp_path / "other", **changes)
    (same,) = [t for t in build(collect([original, twin])) if t.protocol == "generation"]
    assert column_of(same, original) == column_of(same, twin) and len(same.columns) == 1
    tables(([original, twin]), strict=True)

    (split,) = [t for t in build(collect([original, other])) if t.protocol == "generation"]
    assert column_of(split, original) != column_of(split, other)
    field = next(iter(changes))
    assert all(field in c.label for c in split.columns)  # the heading says what differs
    with pytest.raises(EditbenchError, match=f"not comparable: generation columns differ in {field}"):
        build(collect([original, other]), strict=True)


def test_protocols_never_share_a_table(tiny_sweep):
    for table in build(collect([tiny_sweep])):
        for cell in table.cells.values():
            for metric, stat in cell.items():
                for value, path in zip(stat.values, stat.runs, strict=True):
                    assert value == file_value(Path(path), table.protocol, metric)


def test_columns_are_selectable_from_what_the_runs_report(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "lb.md"
    assert main(["leaderboard", str(tiny_sweep), "--columns", "locality_gold,capability_delta",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert "| locality_gold | capability_delta |" in text and "| reliability |" not in text
    assert "locality_raw" in render([tiny_sweep], "md", metrics="all")
    assert main(["leaderboard", str(tiny_sweep), "--columns", "relability"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'reliability'" in err and err.count("\n") == 1
    assert main(["leaderboard", str(tiny_sweep), "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 2


def _legacy_run(root: Path, name: str, num_edits: int, suite: str | None = None) -> Path:
    """A run directory as editbench wrote it before config.json held a comparability dict."""
    d = RunDir(root / name)
    d.path.mkdir()
    d.write_config({
        "editor": "e", "model": {"name": "m"},
        "dataset": {"name": "zsre", "sha256": "ab" * 32, "target": "alt", "num_edits": num_edits},
        "protocol": {"locality_definition": "x", "evaluation": "after all edits",
                     "max_new_tokens": 32},
        "capability": None if suite is None else {
            "suite": suite, "suite_hash": suite * 8, "settings": {"limit": None}},
    })
    capability = None if suite is None else {"pre": 0.5, "post": 0.375}
    d.write_metrics({"results": {"generation": {"reliability": 0.5, "generalization": 0.25,
                                                "locality": 1.0}, "capability": capability},
                     "edit_time_per_request_s": 0.1, "edits_per_step": 1, "num_edits": num_edits})
    return d.path


def test_older_runs_fall_back_to_a_key_from_their_settings(tmp_path, tiny_sweep):
    a = _legacy_run(tmp_path, "a", 100, "default")
    b = _legacy_run(tmp_path, "b", 100, "default")
    c = _legacy_run(tmp_path, "c", 100, "shared")
    d = _legacy_run(tmp_path, "d", 1000)
    (same,) = build(collect([a, b]))
    assert len(same.columns) == 1 and "capability: default" in tables([a, b])
    assert "| 50.0 ± 0.0 (n=2) |" in tables([a, b]) and "| 37.5 ± 0.0 (n=2) |" in tables([a, b])
    assert len(build(collect([a, c]))[0].columns) == 2
    with pytest.raises(EditbenchError, match="differ in capability"):
        tables([a, c], strict=True)
    with pytest.raises(EditbenchError, match="differ in .*num_edits"):
        tables([a, d], strict=True)
    # An older run and a new one never share a column (their keys have different fields).
    new = tiny_sweep / "ft_m-tiny-llama-facts-T4-s0"
    (gen,) = [t for t in build(collect([a, new])) if t.protocol == "generation"]
    assert column_of(gen, a) != column_of(gen, new)
    with pytest.raises(EditbenchError, match="not a finished run"):
        tables([tmp_path])


@pytest.mark.parametrize(
    ("config", "metrics", "message"),
    [
        ({}, "{\"results\": ", "metrics.json is unreadable"),
        ({}, "[1, 2]", "metrics.json is not an object"),
        ({}, "{\"num_edits\": 3}", "key 'results': expected an object"),
        ({}, "{\"results\": {\"generation\": 3}}", "key 'results.generation'"),
        ({"editor": "ft_m"}, "{\"results\": {\"generation\": {\"reliability\": 1.0}}}",
         "key 'protocol.locality_definition' is missing"),
        ({"protocol": {"locality_definition": "x", "evaluation": "generation"}, "dataset": {}},
         "{\"results\": {\"generation\": {\"reliability\": 1.0}}}", "key 'dataset.name' is missing"),
        # Every setting the rebuilt key reads is checked, the generation-only one too.
        ({"protocol": {"locality_definition": "x", "evaluation": "generation"},
          "dataset": {"name": "zsre", "sha256": "ab" * 32, "target": "alt", "num_edits": 1}},
         "{\"results\": {\"generation\": {\"reliability\": 1.0}}}",
         "key 'protocol.max_new_tokens' is missing"),
    ],
)
def test_malformed_or_older_runs_fail_in_one_line(tmp_path, capsys, config, metrics, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(metrics)
    assert main(["leaderboard", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run) in err and message in err, err
