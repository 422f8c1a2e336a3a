"""The metric registry: a metric declared once reaches the evaluator, the run summary, the
leaderboard and ``editbench tune``'s table."""

from __future__ import annotations

import pytest

from editbench.cli import main
from editbench.errors import EditbenchError
from editbench.evaluate import metrics as registry
from editbench.evaluate.metrics import metric, score_record
from editbench.report.leaderboard import render
from editbench.run.tune import format_table


@pytest.fixture
def toy_metric():
    """``answer_words``: words in the edit prompt's generated answer (not a rate; fewer is
    better), registered for the test only."""

    @metric("answer_words", protocols=("generation",), rate=False, higher_is_better=False,
            tune="words", definition="words in the edit prompt's generated answer")
    def answer_words(record, pre):
        rel = record.get("reliability")
        return None if rel is None else [len(rel["answer"].split())]

    yield answer_words
    registry.unregister("answer_words")


def test_a_toy_metric_reaches_summary_leaderboard_and_tune(toy_metric, tiny_run, capsys):
    tmp, model_dir, data, hparams = tiny_run
    out = tmp / "run"
    assert main(["run", "--model", str(model_dir), "--hparams", str(hparams), "--dataset", str(data),
                 "--device", "cpu", "--max-new-tokens", "3", "--output", str(out)]) == 0
    summary = capsys.readouterr().out
    line = next(line for line in summary.splitlines() if line.strip().startswith("answer_words"))
    assert len(line.split()) == 3  # name, before, after

    table = render([out], "md", ["reliability", "answer_words"])
    assert "answer_words" in table
    # not a rate: printed as the number itself, not x100
    import json

    value = json.loads((out / "metrics.json").read_text())["results"]["generation"]["answer_words"]
    assert f"{value:.3g}" in table

    rows = [{"location": "mlp_down@2", "seconds": 1.0, "reliability": 1.0, "answer_words": 2.0}]
    text = format_table(rows)
    assert text.splitlines()[0].split()[-2] == "words" and "2.00" in text.splitlines()[1]


def test_constraints_and_objective_accept_registered_names_only(toy_metric):
    from editbench.run.tune import objective_terms, parse_constraints

    assert parse_constraints(("answer_words<=3",)) == [("answer_words", "<=", 3.0)]
    assert objective_terms("reliability+answer_words") == ["reliability", "answer_words"]
    with pytest.raises(EditbenchError, match="unknown metric 'answer_wrds'.*did you mean 'answer_words'"):
        parse_constraints(("answer_wrds<=3",))


def test_split_metrics_report_each_kind_and_the_longest_name_owns_a_kind():
    record = {"locality": [
        {"unchanged": True, "unchanged_raw": True, "kind": "neighbourhood", "answer": "x",
         "pre": "x", "gold": "w", "gold_match": None},
        {"unchanged": False, "unchanged_raw": False, "kind": "distant", "answer": "y",
         "pre": "z", "gold": "y", "gold_match": True},
    ]}
    scores = score_record("generation", record, {"locality": record["locality"]})
    assert scores["locality"] == [1.0, 0.0]
    assert scores["locality_neighbourhood"] == [1.0] and scores["locality_distant"] == [0.0]
    assert scores["locality_gold"] == [1.0]
    assert registry.find("locality_distant").name == "locality"
    assert registry.find("locality_gold").name == "locality_gold"
    assert registry.find("no_such_metric") is None


def test_a_name_registered_twice_must_agree():
    @metric("toy_twice", protocols=("generation",), definition="a")
    def first(record, pre):
        return [1.0]

    try:
        with pytest.raises(EditbenchError, match="registered twice with different attributes"):
            metric("toy_twice", protocols=("teacher_forced",), definition="b")(first)
        with pytest.raises(EditbenchError, match="already has a scoring function"):
            metric("toy_twice", protocols=("generation",), definition="a")(first)
    finally:
        registry.unregister("toy_twice")
