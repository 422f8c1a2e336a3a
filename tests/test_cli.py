"""The command line end to end on a tiny model saved to disk, and the run directory it writes."""

from __future__ import annotations

import json

import pytest

from conftest import RECORDS, SHARED_DATA, write_tiny_project
from editbench.api import EditbenchError
from editbench.cli import main
from editbench.files import atomic_write_json
from editbench.report.leaderboard import tables
from editbench.run.rundir import JsonlStream


@pytest.fixture
def setup(tmp_path, tiny_tokenizer):
    model_dir, data, hparams = write_tiny_project(tmp_path, tiny_tokenizer)
    return tmp_path, model_dir, data, hparams / "locft_bf" / "tiny-llama.yaml"


def run_cli(*args: str) -> int:
    return main(list(args))


def test_run_writes_a_complete_run_directory(setup, capsys):
    tmp, model_dir, data, hparams = setup
    out = tmp / "run"
    code = run_cli("run", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
                   "--dataset", str(data), "--device", "cpu", "--protocol", "both",
                   "--edits-per-step", "2", "--eval-every", "2", "--max-new-tokens", "6",
                   "--output", str(out), "--seed", "3")
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["seed"] == 3 and config["hparams"]["seed"] == 3
    assert config["hparams"]["modules"] == ["block@3"] and config["protocol"]["edits_per_step"] == 2
    assert config["dataset"]["num_edits"] == 4 and len(config["dataset"]["sha256"]) == 64
    assert config["versions"]["torch"] and "locality_definition" in config["protocol"]
    assert config["model"]["family"] == "llama"
    for protocol in ("generation", "teacher_forced"):
        res = metrics["results"][protocol]
        assert all(0.0 <= res[k] <= 1.0 for k in ("reliability", "generalization", "locality"))
    assert metrics["results"]["capability"] is None
    # The second step's requests were edited last: sequential editing keeps at least them.
    assert metrics["results"]["teacher_forced"]["reliability"] >= 0.5
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [m["size"] for m in steps] == [2, 2] and metrics["steps"]["count"] == 2
    cases = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 8  # 4 requests x 2 protocols
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["edits"] for p in curve] == [2, 4]
    assert not list(out.glob("*.part")) and not list(out.glob(".*tmp"))
    assert "run directory" in capsys.readouterr().out

    # A finished run is not overwritten by accident.
    code = run_cli("run", "--model", str(model_dir), "--hparams", str(hparams),
                   "--dataset", str(data), "--device", "cpu", "--output", str(out))
    assert code == 2 and "already holds a finished run" in capsys.readouterr().err

    table = tables([out])
    assert "### generation" in table and "### teacher_forced" in table and "locft_bf" in table


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--editor", "rom"], "unknown editor 'rom'"),
        (["--dataset", "zsre3k"], "did you mean 'zsre-3k'"),
        (["--model", "smolm2-135m"], "did you mean 'smollm2-135m'"),
        (["--set", "lrr=1"], "unknown key 'lrr'"),
        (["--set", "epochs=two"], "key 'epochs': expected an integer"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_result(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code = run_cli("run", *args, "--output", str(out), "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1 and err.startswith("editbench: error:")
    assert not (out / "metrics.json").exists()


def test_malformed_record_names_file_and_index(setup, capsys):
    tmp, model_dir, _, hparams = setup
    bad = tmp / "bad.json"
    bad.write_text(json.dumps([RECORDS[0], {**RECORDS[1], "target_new": 7}]))
    code = run_cli("run", "--model", str(model_dir), "--hparams", str(hparams), "--dataset", str(bad),
                   "--device", "cpu", "--output", str(tmp / "r"))
    err = capsys.readouterr().err
    assert code == 2 and "bad.json" in err and "target_new" in err


def test_list_and_hparams(capsys):
    assert run_cli("list", "editors") == 0
    assert {"ft_m", "locft_bf"} <= set(capsys.readouterr().out.split())
    assert run_cli("list", "models") == 0
    assert "smollm2-135m" in capsys.readouterr().out.split()
    assert run_cli("list", "datasets") == 0
    assert "zsre-3k" in capsys.readouterr().out.split()


def test_list_says_what_each_entry_is(capsys):
    assert run_cli("list", "datasets", "--json") == 0
    datasets = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    train = datasets["zsre-train"]
    assert train["records"] == 163196 and train["source"].endswith("zsre_mend_train.json")
    assert train["locality"] == "distant" and train["available"].startswith(("download", "local"))
    assert datasets["embedded"]["available"] == "bundled"
    assert "neighbourhood" in datasets["counterfact-3k"]["locality"]
    assert run_cli("list", "datasets", "--data-dir", str(SHARED_DATA)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("zsre-3k "))
    assert ("local (1.6 MB)" in line) == (SHARED_DATA / "zsre" / "zsre_3k.json").is_file()
    assert run_cli("list", "models", "--json") == 0
    models = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert models["smollm2-135m"]["layers"] == 30 and models["smollm2-135m"]["parameters"] == "135M"
    assert models["qwen2.5-7b"]["family"] == "qwen2"
    assert run_cli("list", "editors", "--json") == 0
    editors = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert editors["locft_bf"]["pipeline"].startswith("breadth_first")
    assert editors["ft_m"]["pipeline"] == "depth_first, steps of 1"
    assert "smollm2-135m" in editors["memit"]["hparams"]
    assert run_cli("hparams", "--editor", "locft_bf", "--model", "qwen2.5-7b", "--set", "lr=1e-4") == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["modules"] == ["mlp_down@6"] and resolved["lr"] == 1e-4


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]

    stream = JsonlStream(tmp_path / "cases.jsonl").open()
    stream.write({"x": 1})
    assert not (tmp_path / "cases.jsonl").exists()
    stream.commit()
    assert (tmp_path / "cases.jsonl").read_text() == '{"x": 1}\n'


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(setup, monkeypatch):
    """A run killed after its first step and resumed equals an uninterrupted run."""
    from editbench.run import RunSpec, run
    from editors.locft_bf import LocFTBFEditor

    tmp, model_dir, data, hparams = setup
    common = dict(editor="locft_bf", model=str(model_dir), hparams_file=str(hparams),
                  dataset=str(data), device="cpu", edits_per_step=1, eval_every=2,
                  max_new_tokens=6, protocols=("generation", "teacher_forced"))
    reference = run(RunSpec(**common, output=str(tmp / "ref"))).load()[1]

    calls = {"n": 0}
    original_edit = LocFTBFEditor.edit

    def flaky_edit(self, requests):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Interrupt
        return original_edit(self, requests)

    monkeypatch.setattr(LocFTBFEditor, "edit", flaky_edit)
    out = tmp / "resumed"
    with pytest.raises(_Interrupt):
        run(RunSpec(**common, output=str(out), checkpoint_every=2))
    assert (out / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
    monkeypatch.setattr(LocFTBFEditor, "edit", original_edit)

    with pytest.raises(EditbenchError, match="cannot resume: .*seed.* differ"):
        run(RunSpec(**{**common, "seed": 5}, output=str(out), resume=True))
    resumed = run(RunSpec(**common, output=str(out), resume=True)).load()[1]
    assert resumed["results"] == reference["results"]
    assert not (out / "checkpoint.pt").exists()
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["edits"] for p in curve] == [2, 4]
