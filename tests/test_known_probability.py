"""Known-fact locality (what the unedited model knows, and whether editing keeps it) and the
probability protocol (ROME / MEMIT's CounterFact scores), checked by hand on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from editbench.api import EditRequest, LocalityPrompt
from editbench.evaluate import EvalSettings, Evaluator
from editbench.evaluate.metrics import score_record
from editbench.evaluate.normalize import knows
from editbench.tokens import encode_prompt_target


@pytest.mark.parametrize(
    ("answer", "gold", "known"),
    [
        ("Japanese, with a significant minority of", "Japanese", True),  # begins with the gold
        ("Japanese", "Japanese", True),
        ("the Pacific Ocean", "Pacific Ocean", True),  # articles dropped
        ("Pacific", "Pacific Ocean", False),  # a multi-word gold needs all its words
        ("New York City", "New York", True),  # whole words at the boundary
        ("Newark", "New", False),  # not at a word boundary
        ("1990s", "1990", False),  # numbers: a longer token is another answer
        ("1990 and 1991", "1990", True),
        ("3,000", "3000", True),  # punctuation dropped
        ("Paris!", "Paris", True),
        ("", "Paris", False),  # an empty answer knows nothing
        ("U", "U.S.", False),  # a gold with '.' is never reachable
        ("a", "A", False),  # a gold that normalizes to '' is left out, as locality_gold does
        ("French", "Paris", False),
    ],
)
def test_knows(answer, gold, known):
    assert knows(answer, gold) is known


def _loc(answer: str, gold: str, kind: str) -> dict:
    return {"answer": answer, "gold": gold, "kind": kind, "unchanged": True,
            "unchanged_raw": True, "gold_match": None, "pre": answer}


def test_locality_known_counts_only_what_the_unedited_model_knew():
    pre = {"locality": [_loc("Rome", "Rome", "neighbourhood"), _loc("Tokyo, the", "Tokyo", "distant"),
                        _loc("", "Lima", "distant"), _loc("Oslo", "Bern", "neighbourhood")]}
    post = {"locality": [_loc("Abuja", "Rome", "neighbourhood"), _loc("Tokyo", "Tokyo", "distant"),
                         _loc("Lima", "Lima", "distant"), _loc("Bern", "Bern", "neighbourhood")]}
    scores = score_record("generation", post, pre)
    # Known before: Rome (lost) and Tokyo (kept); Lima and Bern were not known, so learning
    # them does not count.
    assert scores["locality_known"] == [0.0, 1.0]
    assert scores["locality_known_neighbourhood"] == [0.0] and scores["locality_known_distant"] == [1.0]
    assert scores["known_pre"] == [1.0, 1.0, 0.0, 0.0]
    # The baseline itself reports what is known, and no retention.
    base = score_record("generation", pre, None)
    assert base["known_pre"] == [1.0, 1.0, 0.0, 0.0] and "locality_known" not in base


def test_teacher_forced_known_is_all_gold_tokens_predicted():
    pre = {"locality": [{"gold_accuracy": 1.0, "kind": "distant", "unchanged": 1.0},
                        {"gold_accuracy": 0.5, "kind": "distant", "unchanged": 1.0}]}
    post = {"locality": [{"gold_accuracy": 0.25, "kind": "distant", "unchanged": 0.25},
                         {"gold_accuracy": 1.0, "kind": "distant", "unchanged": 0.5}]}
    scores = score_record("teacher_forced", post, pre)
    assert scores["locality_known"] == [0.25] and scores["known_pre"] == [1.0, 0.0]


def _hand_nll(handle, prompt: str, target: str) -> float:
    """Mean token NLL of ``target`` after ``prompt``: one full forward, log-softmax, by hand."""
    item = encode_prompt_target(handle.tokenizer, prompt, target)
    ids = torch.tensor([item.ids])
    with torch.no_grad():
        logits = handle.model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    start = len(item.prompt_ids)
    return -sum(float(logp[start + j - 1, t]) for j, t in enumerate(item.target_ids)) / len(item.target_ids)


def test_probability_scores_equal_hand_computed_values(tiny_llama):
    request = EditRequest(
        case_id="c0", prompt="The capital of France is", subject="France", target_new="Rome",
        target_true="Paris", rephrase_prompts=("France has its capital in", "Its capital is"),
        locality=(LocalityPrompt("The capital of Spain is", "Madrid", "neighbourhood"),
                  LocalityPrompt("Water boils at", "100", "distant")),
    )
    no_true = EditRequest(case_id="c1", prompt="A cat is a", subject="cat", target_new="dog")
    evaluator = Evaluator(tiny_llama, EvalSettings(protocols=("probability",), batch_size=2))
    pre = evaluator.baseline([request, no_true], targets=True)
    results = evaluator.evaluate([request, no_true], pre)["probability"]

    def nll(prompt, target):
        return _hand_nll(tiny_llama, prompt, target)

    edit = (nll(request.prompt, "Rome"), nll(request.prompt, "Paris"))
    paras = [(nll(p, "Rome"), nll(p, "Paris")) for p in request.rephrase_prompts]
    nbr = (nll("The capital of Spain is", "Rome"), nll("The capital of Spain is", "Paris"))
    assert results["efficacy_score"] == float(edit[0] < edit[1])
    assert results["efficacy_magnitude"] == pytest.approx(math.exp(-edit[0]) - math.exp(-edit[1]), abs=1e-6)
    assert results["paraphrase_score"] == pytest.approx(sum(a < b for a, b in paras) / 2)
    assert results["paraphrase_magnitude"] == pytest.approx(
        sum(math.exp(-a) - math.exp(-b) for a, b in paras) / 2, abs=1e-6)
    # Neighbourhood prompts: the true object should stay the likelier one; the distant
    # prompt is not a neighbourhood prompt and is not scored.
    assert results["neighbourhood_score"] == float(nbr[1] < nbr[0])
    assert results["neighbourhood_magnitude"] == pytest.approx(math.exp(-nbr[1]) - math.exp(-nbr[0]), abs=1e-6)
    # The request without target_true is left out of every score.
    assert results["n"]["efficacy_score"] == 1
    # An unchanged model scores what the baseline did.
    assert pre.metrics(["probability"])["probability"]["efficacy_magnitude"] == pytest.approx(
        results["efficacy_magnitude"], abs=1e-12)


def test_no_distribution_tokens_scores_locality_without_them(tiny_llama):
    """dist_tokens=0 switches locality_argmax / locality_kl off (it failed after the baseline)."""
    request = EditRequest(case_id="c0", prompt="The capital of France is", subject="France",
                          target_new="Rome", locality=(LocalityPrompt("Water boils at", "100", "distant"),))
    evaluator = Evaluator(tiny_llama, EvalSettings(dist_tokens=0, max_new_tokens=4))
    results = evaluator.evaluate([request], evaluator.baseline([request]))["generation"]
    assert results["locality"] == 1.0 and "locality_kl" not in results


def test_the_summary_shows_known_fact_locality_first_and_says_when_it_rests_on_few():
    from editbench.report.summary import summary

    config = {"editor": "e", "model": {"name": "m"}, "dataset": {"name": "d"},
              "protocol": {"evaluation": "after all edits", "definitions": {"generation": "g"}}}
    results = {"reliability": 1.0, "locality": 0.7, "locality_known": 0.5,
               "locality_known_distant": 0.4, "known_pre": 0.2,
               "n": {"reliability": 100, "locality": 100, "locality_known": 20,
                     "locality_known_distant": 20, "known_pre": 100}}
    metrics = {"results": {"generation": results}, "num_edits": 100, "edits_per_step": 100,
               "edit_time_s": 1.0, "edit_time_per_request_s": 0.01, "baseline_time_s": 1.0,
               "eval_time_s": 1.0}
    lines = summary(config, metrics, "RUN").splitlines()
    names = [line.split()[0] for line in lines if line.startswith("  ") and line.split()[0] in results]
    assert names.index("locality_known") < names.index("locality")
    assert names.index("locality_known_distant") < names.index("locality")
    assert any("locality_known rests on 20 requests" in line for line in lines)
    results["n"]["locality_known"] = 0
    del results["locality_known"], results["locality_known_distant"]
    assert "cannot be measured here" in summary(config, metrics, "RUN")
