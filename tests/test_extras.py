"""Optional features without their extra, and messages that name flags.

Each optional feature is run with its package's import blocked (``sys.modules[name] =
None`` makes ``import name`` fail as on a machine without it): it either degrades as
documented or stops with one line naming the extra to install.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_flags, write_tiny_project
from editbench.cli import main


def _block(monkeypatch, *modules: str) -> None:
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_naming(err: str, extra: str) -> None:
    assert err.count("\n") == 1, err
    assert f"editbench[{extra}]" in err, err


@pytest.fixture
def finished_run(tiny_run):
    tmp, model_dir, data, hparams = tiny_run
    out = tmp / "run"
    assert main(["run", "--model", str(model_dir), "--hparams", str(hparams), "--dataset", str(data),
                 "--device", "cpu", "--max-new-tokens", "3", "--output", str(out)]) == 0
    return out


def test_plot_without_matplotlib_names_the_extra(finished_run, monkeypatch, capsys, tmp_path):
    _block(monkeypatch, "matplotlib")
    capsys.readouterr()
    assert main(["plot", str(finished_run), "-o", str(tmp_path / "c.png")]) == 2
    _one_line_naming(capsys.readouterr().err, "plot")
    assert not (tmp_path / "c.png").exists()


def test_report_without_matplotlib_leaves_the_plots_out(finished_run, monkeypatch, capsys, tmp_path):
    _block(monkeypatch, "matplotlib")
    out = tmp_path / "report.html"
    assert main(["report", str(finished_run), "-o", str(out)]) == 0
    page = out.read_text()
    assert "<table" in page and "editbench[plot]" in page and "data:image/png" not in page


def test_ray_sweep_without_ray_names_the_extra(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    _, _, hparams = write_tiny_project(tmp_path, tiny_tokenizer)
    monkeypatch.chdir(tmp_path)  # grids name files by relative paths
    monkeypatch.setenv("EDITBENCH_HPARAMS_DIR", str(hparams))
    grid = tmp_path / "grid.yaml"
    grid.write_text("editor: locft_bf\nmodel: tiny-llama\ndataset: facts.json\nnum_edits: 2\n")
    _block(monkeypatch, "ray")
    capsys.readouterr()
    assert main(["sweep", str(grid), "--executor", "ray", "--output", "sw"]) == 2
    _one_line_naming(capsys.readouterr().err, "ray")


@pytest.mark.parametrize(("metric", "module"), [("consistency", "sklearn"),
                                                 ("semantic", "sentence_transformers")])
def test_quality_metric_without_its_library_stops_before_loading(tiny_run, monkeypatch, capsys,
                                                                  metric, module):
    tmp, model_dir, data, hparams = tiny_run
    _block(monkeypatch, module)
    import editbench.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing library was noticed")

    monkeypatch.setattr(editbench.models, "load_model", no_load)
    capsys.readouterr()
    assert main(["run", "--model", str(model_dir), "--hparams", str(hparams), "--dataset", str(data),
                 "--device", "cpu", "--metrics", metric, "--output", str(tmp / metric)]) == 2
    _one_line_naming(capsys.readouterr().err, "quality")


def test_lm_eval_backend_without_lm_eval_names_the_extra(monkeypatch):
    from editbench.capability import harness
    from editbench.errors import EditbenchError

    _block(monkeypatch, "lm_eval")
    with pytest.raises(EditbenchError, match=re.escape("editbench[lm-eval]")):
        harness._import()


# -- every flag a message names exists ---------------------------------------------------


# Flags of other programs that messages quote on purpose.
_FOREIGN = {"--no-deps"}


def test_every_flag_named_in_the_code_exists():
    known = cli_flags() | _FOREIGN
    pattern = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
    unknown = []
    for folder in ("editbench", "editors"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                # A constant that is one flag alone is an argv element (git's --porcelain),
                # not a message.
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and not pattern.fullmatch(node.value.strip().split("=")[0]):
                    for flag in pattern.findall(node.value):
                        if flag not in known:
                            unknown.append(f"{Path(path).relative_to(REPO)}:{node.lineno} {flag}")
    assert not unknown, "messages name flags that do not exist:\n" + "\n".join(unknown)
