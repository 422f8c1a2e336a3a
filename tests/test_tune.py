"""`editbench tune` on a tiny model: coarse then fine points, the pick rule, the YAML, resume."""

from __future__ import annotations

import json

import pytest
import yaml

from editbench.cli import main
from editbench.errors import EditbenchError
from editbench.run.tune import objective_terms, pareto_front, parse_constraints, pick


def test_pick_rule_and_pareto_front():
    rows = [
        {"location": "a", "reliability": 1.0, "generalization": 0.5, "locality_neighbourhood": 0.6, "seconds": 1},
        {"location": "b", "reliability": 0.9, "generalization": 0.4, "locality_neighbourhood": 0.9, "seconds": 1},
        {"location": "c", "reliability": 0.8, "generalization": 0.3, "locality_neighbourhood": 0.85, "seconds": 1},
    ]
    cons = [("locality_neighbourhood", ">=", 0.8)]
    terms = ["reliability", "generalization"]
    assert pick(rows, terms, cons) == (rows[1], True)
    assert [r["location"] for r in pareto_front(rows, terms, cons)] == ["a", "b"]
    # No row meets 0.95: the closest on 50 requests (b, 2.5 requests short) wins over c (5 short).
    assert pick(rows, terms, [("locality_neighbourhood", ">=", 0.95)], 50) == (rows[1], False)
    # Within one request of the closest is a tie, broken by the objective: d is one request
    # (0.02 of 50) further from the bound than b and far better on the objective.
    d = {"location": "d", "reliability": 1.0, "generalization": 0.9, "locality_neighbourhood": 0.88, "seconds": 1}
    assert pick([*rows, d], terms, [("locality_neighbourhood", ">=", 0.95)], 50) == (d, False)
    # The number of requests a metric rests on comes from the row when it has it.
    d_few = {**d, "n": {"locality_neighbourhood": 10}}
    assert pick([*rows, d_few], terms, [("locality_neighbourhood", ">=", 0.95)], 50) == (d_few, False)
    far = {**d, "locality_neighbourhood": 0.5}
    assert pick([*rows, far], terms, [("locality_neighbourhood", ">=", 0.95)], 50) == (rows[1], False)


@pytest.mark.parametrize("call", [
    lambda: parse_constraints(("locality_neighborhood>=0.8",)),
    lambda: objective_terms("reliability+generalisation"),
])
def test_unknown_metric_in_the_rule_is_one_line_error(call):
    # A misspelt metric would otherwise be read as missing in every row: no point could
    # ever meet the rule and the fallback would pick silently.
    with pytest.raises(EditbenchError, match="unknown metric") as err:
        call()
    assert "\n" not in str(err.value)
    assert parse_constraints(("locality_argmax>=0.6",)) == [("locality_argmax", ">=", 0.6)]


def test_tune_sweeps_writes_yaml_and_resumes(tiny_run, capsys):
    tmp, model_dir, data, hparams = tiny_run
    out, written = tmp / "sweep", tmp / "tuned.yaml"
    args = ["tune", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
            "--dataset", str(data), "--num", "3", "--layers", "1,3", "--lr-factors", "2",
            "--constraint", "locality>=0.0", "--max-new-tokens", "4", "--device", "cpu",
            "--set", "epochs=3", "--output", str(out), "--write", str(written)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "tune.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"coarse", "fine"}
    assert {r["location"] for r in rows if r["stage"] == "coarse"} == {"mlp_down@1", "mlp_down@3"}
    assert "Pareto front:" in printed and "rule: maximize reliability+generalization" in printed
    text = written.read_text()
    # Settings and one line of provenance; the sweep itself in the sidecar beside the YAML.
    assert text.startswith("# locft_bf on") and sum(ln.startswith("#") for ln in text.splitlines()) == 1
    sidecar = json.loads((tmp / "tuned.tune.json").read_text())
    assert "tuned.tune.json" in text.splitlines()[0] and "<-" in sidecar["table"]
    chosen = next(r for r in rows if r["location"] == sidecar["chosen"])
    assert sidecar["points"] == rows and sidecar["meets_rule"] is True
    tuned = yaml.safe_load(text)
    for key, value in chosen["overrides"].items():
        assert tuned[key] == value
    assert tuned["epochs"] == 3 and "with --set epochs=3" in text  # what every point ran with
    # Run again: every point is read back, nothing is recomputed.
    assert main(args) == 0
    assert len((out / "tune.jsonl").read_text().splitlines()) == len(rows)
    # The same folder for a sweep on other prompts is refused, not mixed into this one.
    capsys.readouterr()
    assert main([*args, "--prompt-format", "qa"]) == 2
    err = capsys.readouterr().err
    assert "holds another sweep (prompt_format: 'raw', this one: 'qa')" in err and err.count("\n") == 1
    # The tune's own pick written over its base file: resuming from it is refused, since its
    # points ran from the settings the file held before.
    assert main([*args[:-1], str(hparams)]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ran from other settings than" in err and str(hparams) in err and err.count("\n") == 1


def test_tune_moves_a_single_module_editor_across_layers(tiny_run):
    # GRACE names one `module`, not `modules`: its sweep must still move it layer to layer
    # (it once asked the preset for a template '-' and stopped).
    tmp, model_dir, data, _ = tiny_run
    grace = tmp / "grace.yaml"
    grace.write_text("module: mlp_down@3\neps: 1.0\nn_iter: 5\n")
    out, written = tmp / "sweep-grace", tmp / "grace-tuned.yaml"
    assert main(["tune", "--editor", "grace", "--model", str(model_dir), "--hparams", str(grace),
                 "--dataset", str(data), "--num", "2", "--layers", "1,3", "--lr-factors", "2",
                 "--constraint", "locality>=0.0", "--max-new-tokens", "2", "--device", "cpu",
                 "--output", str(out), "--write", str(written)]) == 0
    rows = [json.loads(line) for line in (out / "tune.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rows if r["stage"] == "coarse"] == ["mlp_down@1", "mlp_down@3"]
    assert {r["location"] for r in rows if r["stage"] == "fine"} >= {"mlp_down@2"}
    text = written.read_text()
    assert yaml.safe_load(text)["module"].startswith("mlp_down@")
    assert "\nmodule: mlp_down@" in text and "\neps: 1.0\n" in text  # one key a line, as shipped


def test_tune_applies_the_prompt_format_to_every_prompt(tiny_run, capsys, monkeypatch):
    from editbench.run import loop as runner

    tmp, model_dir, data, hparams = tiny_run
    seen: list[str] = []
    real = runner.edit_and_evaluate

    def spy(editor, requests, *args, **kwargs):
        seen.extend([r.prompt for r in requests] + [p for r in requests for p in r.rephrase_prompts]
                    + [loc.prompt for r in requests for loc in r.locality])
        return real(editor, requests, *args, **kwargs)

    monkeypatch.setattr(runner, "edit_and_evaluate", spy)
    written = tmp / "qa.yaml"
    assert main(["tune", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
                 "--dataset", str(data), "--num", "2", "--layers", "2", "--lr-factors", "",
                 "--constraint", "locality>=0.0", "--max-new-tokens", "4", "--device", "cpu",
                 "--prompt-format", "qa", "--output", str(tmp / "qa-sweep"), "--write", str(written)]) == 0
    assert seen and all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in seen)
    assert json.loads((tmp / "qa.tune.json").read_text())["prompt_format"] == "qa"
