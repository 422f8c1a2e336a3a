"""Grids and sweeps: expansion, validation before any model loads, resume, failures, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_tiny_project
from editbench.cli import main
from editbench.errors import EditbenchError
from editbench.registry import EDITORS
from editbench.report.page import report_html
from editbench.run import RunSpec
from editbench.run.grid import load_grid
from editbench.run.sweep import check_cluster, describe_cells, plan, sweep, sweep_state


@pytest.fixture
def project(tmp_path, tiny_tokenizer, monkeypatch):
    """A tiny model, data and hparams in the working directory, named by relative paths
    (grids refuse absolute paths)."""
    _, _, hparams = write_tiny_project(tmp_path, tiny_tokenizer)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDITBENCH_HPARAMS_DIR", str(hparams))
    return tmp_path


TINY = "model: tiny-llama\ndataset: facts.json\nmax_new_tokens: 4\n"


def write_grid(root: Path, text: str, name: str = "grid.yaml") -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_grid_expands_to_the_product_minus_excludes(project):
    grid = load_grid(write_grid(project, TINY + (
        "editor: [locft_bf, ft_m]\n"
        "num_edits: [2, 4]\n"
        "seed: [0, 1]\n"
        "protocols: [generation, teacher_forced]\n"  # one value of a sequence field: not an axis
        "set: {ft_m: {max_steps: 5}}\n"
        "exclude: [{editor: ft_m, num_edits: 4}]\n"
    )))
    names = [c.name for c in grid.cells]
    assert len(names) == 6 and len(set(names)) == 6
    assert "locft_bf-tiny-llama-facts-T4-s1" in names and "ft_m-tiny-llama-facts-T4-s0" not in names
    specs = [RunSpec(**c.values) for c in grid.cells]
    assert all(s.protocols == ("generation", "teacher_forced") for s in specs)
    assert {s.editor: s.overrides for s in specs} == {"locft_bf": {}, "ft_m": {"max_steps": 5}}


def test_axes_of_other_fields_get_distinct_names(project):
    grid = load_grid(write_grid(project, TINY + (
        "editor: locft_bf\nsample: [first, random]\noverrides: [{lr: 0.01}, {lr: 0.001}]\n"
        "protocols: [[generation], [teacher_forced]]\n")))
    names = [c.name for c in grid.cells]
    assert len(grid.cells) == 8 and len(set(names)) == 8
    assert {RunSpec(**c.values).protocols for c in grid.cells} == {("generation",), ("teacher_forced",)}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("editors: [locft_bf]\n", "unknown key 'editors'; did you mean 'editor'"),
        ("editor: [locft_bf, rom]\n", "key 'editor': unknown editor 'rom'; did you mean 'rome'"),
        ("editor: locft_bf\nnum_edits: ten\n", "key 'num_edits': expected int | None, got 'ten'"),
        ("editor: locft_bf\nsample: any\n", "key 'sample'"),
        ("editor: locft_bf\nprotocols: [generaton]\n", "did you mean 'generation'"),
        ("editor: locft_bf\noutput: runs/x\n", "key 'output' is chosen by the sweep"),
        ("editor: locft_bf\ndevice: cuda:1\n", "pass `editbench sweep --device`"),
        ("editor: locft_bf\nset: {ft_m: {lr: 1}}\n", "key 'set.ft_m': not one of the grid's editors"),
        ("editor: locft_bf\nset: {locft_bf: {lrr: 1}}\n", "unknown key 'lrr'"),
        ("editor: locft_bf\nresources: {num_gpu: 1}\n", "did you mean 'num_gpus'"),
        ("editor: locft_bf\nexclude: [{editr: ft_m}]\n", "exclude[0]"),
        ("editor: locft_bf\nexclude: [{editor: locft_bf}]\n", "expands to no cells"),
        ("editor: locft_bf\nseed: [0, 0]\n", "the same cell more than once"),
        ("editor: locft_bf\ncapability: defalt\n", "key 'capability': unknown capability suite 'defalt'"),
    ],
)
def test_bad_grids_fail_in_one_line_naming_file_and_key(project, text, needle):
    path = write_grid(project, TINY.replace("max_new_tokens: 4\n", "") + text, "bad.yaml")
    with pytest.raises(EditbenchError) as info:
        load_grid(path)
    message = str(info.value)
    assert needle in message and "bad.yaml" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: smolm2-135m\ndataset: embedded\n", "key 'model': unknown model 'smolm2-135m'"),
        ("model: smollm2-135m\ndataset: zsre3k\n", "key 'dataset': unknown dataset 'zsre3k'; did you mean 'zsre-3k'"),
        ("model: /abs/model\ndataset: embedded\n", "absolute paths"),
        ("model: qwen2.5-72b\ndataset: embedded\neditor: rome\n", "no hparams for editor 'rome'"),
    ],
)
def test_names_are_checked_before_any_model_loads(tmp_path, capsys, text, needle):
    path = write_grid(tmp_path, text, "names.yaml")
    assert main(["sweep", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "names.yaml" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_shipped_grids_load_by_name_and_expand(capsys):
    smoke = load_grid("smoke")
    assert sorted(RunSpec(**c.values).editor for c in smoke.cells) == EDITORS.names()
    assert {(s.model, s.dataset) for s in (RunSpec(**c.values) for c in smoke.cells)} == {
        ("smollm2-135m", "embedded")}

    paper = load_grid("paper-table3")
    specs = [RunSpec(**c.values) for c in paper.cells]
    assert len(specs) == 3 * 3 * 10
    assert {s.editor for s in specs} == {"ft_m", "locft_bf", "lora", "rome", "memit", "alphaedit",
                                         "emmet", "ultraedit", "grace", "wise"}
    assert {s.model for s in specs} == {"llama3-8b", "qwen2.5-7b", "mistral-7b"}
    assert {s.dataset for s in specs} == {"zsre-3k", "counterfact-3k", "wikibigedit-3k"}
    assert {(s.num_edits, s.protocols, s.capability) for s in specs} == {(3000, ("generation",), "paper")}
    assert paper.resources == {"num_gpus": 1}
    assert len({c.name for c in paper.cells}) == len(specs)

    assert main(["list", "grids"]) == 0
    assert {"smoke", "paper-table3"} <= {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert main(["sweep", "paper-table3", "--dry-run"]) == 0
    assert "90 cells" in capsys.readouterr().out


class _Crash(Exception):
    pass


def test_sweep_skips_finished_resumes_unfinished_and_records_failures(project, monkeypatch, capsys):
    from editors.locft_bf import LocFTBFEditor

    path = write_grid(project, TINY + (
        "editor: locft_bf\nnum_edits: [2, 9]\nedits_per_step: 1\ncheckpoint_every: 1\n"))
    out = project / "sweep"
    original = LocFTBFEditor.edit
    calls = {"n": 0}

    def crash_on_second_step(self, requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Crash("power cut")
        return original(self, requests)

    monkeypatch.setattr(LocFTBFEditor, "edit", crash_on_second_step)
    assert main(["sweep", str(path), "--output", str(out)]) == 1
    first = capsys.readouterr().out
    assert "2 cells: 0 finished (0 skipped because they had finished before), 2 failed, 0 not run" in first
    t2, t9 = out / "locft_bf-tiny-llama-facts-T2-s0", out / "locft_bf-tiny-llama-facts-T9-s0"
    assert (t2 / "checkpoint.pt").is_file() and not (t2 / "metrics.json").exists()
    assert (t2 / "error.txt").read_text().startswith("_Crash: power cut")
    # Asking for more requests than the file holds fails at run time, after validation.
    assert "4 requests, 9 were asked for" in (t9 / "error.txt").read_text()
    state = sweep_state(out)
    assert state["cells"][t9.name]["status"] == "failed" and "9 were asked" in state["cells"][t9.name]["error"]

    monkeypatch.setattr(LocFTBFEditor, "edit", original)
    grid = load_grid(path)
    spec, problem = plan(grid.cells[0], out, {})
    assert spec is not None and spec.resume and problem is None
    outcomes = sweep(grid, out)
    assert outcomes[t2.name].status == "done" and outcomes[t9.name].status == "failed"
    assert (t2 / "metrics.json").is_file() and not (t2 / "error.txt").exists()
    config = json.loads((t2 / "config.json").read_text())
    assert config["spec"]["resume"] is False  # resumed: the config of the first attempt is kept

    again = sweep(grid, out)
    assert again[t2.name].status == "skipped"
    page = report_html([out])  # the report lists every cell's outcome, errors included
    assert "2 cells: 1 finished (1 skipped because they had finished before), 1 failed, 0 not run" in page
    assert "4 requests, 9 were asked for" in page
    # A finished cell made with other settings is not silently taken for this grid's.
    changed = load_grid(write_grid(project, path.read_text().replace("max_new_tokens: 4", "max_new_tokens: 5")))
    outcome = sweep(changed, out)[t2.name]
    assert outcome.status == "failed" and "other settings (max_new_tokens)" in outcome.error
    # So is one whose hparams file was re-chosen since (no flag changed).
    yaml_path = project / "hparams" / "locft_bf" / "tiny-llama.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("epochs: 60", "epochs: 7"))
    outcome = sweep(grid, out)[t2.name]
    assert outcome.status == "failed" and "other settings (hparams epochs)" in outcome.error


def test_sweep_state_counts_finished_cells_whenever_they_finished():
    # Finished now ("done") and finished before ("skipped") both hold a finished run; a
    # cell the sweep never reached ("pending": it was interrupted) is not run.
    statuses = ["done", "skipped", "skipped", "failed", "pending"]
    assert describe_cells(statuses) == (
        "5 cells: 3 finished (2 skipped because they had finished before), 1 failed, 1 not run")
    assert describe_cells(["skipped"] * 4) == (
        "4 cells: 4 finished (4 skipped because they had finished before), 0 failed, 0 not run")


def test_ray_executor_gives_the_same_metrics_as_local(project):
    pytest.importorskip("ray", reason="Ray is the optional extra: pip install -e '.[ray]'")
    path = write_grid(project, TINY + "editor: [locft_bf, ft_m]\nnum_edits: 2\nresources: {num_cpus: 1}\n")
    grid = load_grid(path)
    local = sweep(grid, project / "local")
    # The CLI path: the sweep starts a local Ray instance and shuts it down.
    assert main(["sweep", str(path), "--executor", "ray", "--output", str(project / "ray")]) == 0
    assert {o.status for o in local.values()} == {"done"}
    assert {c["status"] for c in sweep_state(project / "ray")["cells"].values()} == {"done"}
    for cell in grid.cells:
        a = json.loads((project / "local" / cell.name / "metrics.json").read_text())
        b = json.loads((project / "ray" / cell.name / "metrics.json").read_text())
        # Ray sets OMP_NUM_THREADS to the task's num_cpus, so torch sums in another order:
        # discrete metrics agree exactly, continuous ones (locality_kl) to float precision.
        flat_a, flat_b = _flat(a["results"]), _flat(b["results"])
        # Absent parts (capability: None) must be absent in both; approx takes numbers only.
        assert {k for k, v in flat_a.items() if v is None} == {k for k, v in flat_b.items() if v is None}
        numbers_a = {k: v for k, v in flat_a.items() if v is not None}
        numbers_b = {k: v for k, v in flat_b.items() if v is not None}
        assert numbers_a == pytest.approx(numbers_b, rel=1e-6, abs=1e-9), cell.name
        assert a["results"]["generation"]["n"]["reliability"] == 2


def _flat(tree, prefix: str = "") -> dict:
    """Nested metrics as one {dotted.key: value} dict, for pytest.approx."""
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_a_grid_no_ray_node_can_run_fails_at_once():
    check_cluster({"num_gpus": 1, "num_cpus": 2}, {"CPU": 16.0, "GPU": 1.0})
    with pytest.raises(EditbenchError, match="asks for num_gpus 1 but the Ray cluster has 0"):
        check_cluster({"num_gpus": 1}, {"CPU": 2.0})


def test_a_grid_names_known_fact_slices_by_name(project, tmp_path, monkeypatch):
    """known-<model>-tune|eval is a dataset name once `editbench known-facts` built it, and a
    one-line 'not built yet' before."""
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    from editbench.data.known import known_dir

    text = "model: tiny-llama\ndataset: known-tiny-llama-eval\nmax_new_tokens: 4\neditor: locft_bf\n"
    with pytest.raises(EditbenchError, match="not built yet"):
        load_grid(write_grid(project, text))
    folder = known_dir("tiny-llama")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text((project / "facts.json").read_text())
    assert [RunSpec(**c.values).dataset for c in load_grid(write_grid(project, text)).cells] == [
        "known-tiny-llama-eval"]
