"""Scoring: normalization, the two protocols, batching, and metric aggregation."""

from __future__ import annotations

import pytest

from editbench.api import EditbenchError, EditRequest, LocalityPrompt
from editbench.evaluate import (
    EvalSettings,
    Evaluator,
    PreEdit,
    cut_at_stop,
    exact_match,
    normalize_answer,
)
from editbench.evaluate.generation import generate_answers, length_batches
from editbench.evaluate.teacher_forced import argmax_at_targets, token_accuracy
from editors._finetune import FinetuneConfig, FinetuneEditor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        (" An apple, a day.", "apple day"),
        ("Washington, D.C.", "washington dc"),
        ("theatre", "theatre"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_cut_at_stop_and_exact_match():
    assert cut_at_stop(" Paris. It is big") == "Paris"
    assert cut_at_stop(" Paris\nNext") == "Paris"
    assert cut_at_stop(" Paris, France") == "Paris, France"
    assert exact_match(cut_at_stop(" the Paris."), "Paris")
    assert not exact_match(cut_at_stop(" Paris, France."), "Paris")


def test_token_accuracy():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        token_accuracy([1, 2], [1])


def test_length_batches_cover_everything_once():
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = length_batches(lengths, 3)
    assert sorted(sum(batches, [])) == list(range(7))
    assert [lengths[i] for i in batches[0]] == [9, 9, 7]


PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "Paris",
    "The chemical symbol for gold is",
    "nq question: who wrote hamlet?",
]


def test_batched_generation_equals_one_by_one(tiny_handle):
    """Left padding with an attention mask must not change any sequence's output."""
    batched = generate_answers(tiny_handle, PROMPTS, max_new_tokens=6, batch_size=5)
    single = [generate_answers(tiny_handle, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all("." not in out[:-1] and "\n" not in out[:-1] for out in batched)


def test_batched_teacher_forcing_equals_one_by_one(tiny_handle):
    pairs = [(p, "Rome") for p in PROMPTS] + [(PROMPTS[0], "Eiffel Tower")]
    batched = argmax_at_targets(tiny_handle, pairs, batch_size=6)
    single = [argmax_at_targets(tiny_handle, [pair], batch_size=1)[0] for pair in pairs]
    assert batched == single


def _requests() -> list[EditRequest]:
    return [
        EditRequest("a", "The capital of France is", "France", "Rome", "Paris",
                    ("The capital of Italy is",),
                    (LocalityPrompt("The chemical symbol for gold is", "Au"),)),
        EditRequest("b", "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris",
                    None, (), (LocalityPrompt("nq question: who wrote hamlet?", "William Shakespeare"),
                               LocalityPrompt("Paris", "is"))),
    ]


def test_unedited_model_keeps_locality_and_cases_match_direct_scoring(tiny_llama):
    reqs = _requests()
    ev = Evaluator(tiny_llama, EvalSettings(protocols=("generation", "teacher_forced"),
                                            max_new_tokens=6, chunk_size=1))
    baseline = ev.baseline(reqs)
    cases: list[dict] = []
    metrics = ev.evaluate(reqs, baseline, sink=cases.append)
    gen, tf = metrics["generation"], metrics["teacher_forced"]
    assert gen["locality"] == 1.0 and gen["locality_raw"] == 1.0 and tf["locality"] == 1.0
    assert gen["n"]["generalization"] == 1 and gen["n"]["locality"] == 2
    # Reliability from the evaluator equals scoring the generations by hand.
    direct = generate_answers(tiny_llama, [r.prompt for r in reqs], max_new_tokens=6)
    expected = sum(exact_match(cut_at_stop(o), r.target_new) for o, r in zip(direct, reqs, strict=True)) / 2
    assert gen["reliability"] == expected
    gen_cases = [c for c in cases if c["protocol"] == "generation"]
    assert [c["reliability"]["output"] for c in gen_cases] == direct
    tf_direct = argmax_at_targets(tiny_llama, [(r.prompt, r.target_new) for r in reqs])
    assert tf["reliability"] == pytest.approx(sum(token_accuracy(t, p) for t, p in tf_direct) / 2)
    assert all(not k.startswith("_") for c in cases for k in c)


def test_edited_model_scores_reliability_and_loses_nothing_it_should_keep(tiny_llama):
    reqs = _requests()
    ev = Evaluator(tiny_llama, EvalSettings(protocols=("generation", "teacher_forced"), max_new_tokens=6))
    baseline = ev.baseline(reqs)
    config = FinetuneConfig(modules=["block@3"], lr=1e-2, batch_size=2, epochs=100,
                            loss_threshold=1e-3, epoch_stop_threshold=1e-3)
    FinetuneEditor(tiny_llama, config).edit(reqs)
    metrics = ev.evaluate(reqs, baseline)
    assert metrics["generation"]["reliability"] == 1.0
    assert metrics["teacher_forced"]["reliability"] == 1.0


def test_missing_baseline_is_an_error(tiny_llama):
    ev = Evaluator(tiny_llama, EvalSettings(max_new_tokens=2))
    with pytest.raises(EditbenchError, match=r"no pre-edit generation record for case\(s\) \['a', 'b'\]"):
        ev.evaluate(_requests(), PreEdit([]))
    with pytest.raises(EditbenchError, match="expected the PreEdit of Evaluator.baseline"):
        ev.evaluate(_requests(), {"generation": {}})


def test_bad_settings():
    with pytest.raises(EditbenchError, match="unknown protocol 'wild'"):
        EvalSettings(protocols=("wild",))


def test_locality_by_kind_empty_answers_and_distributions(tiny_llama):
    reqs = [
        EditRequest("a", "The capital of France is", "France", "Rome", None, (),
                    (LocalityPrompt("The capital of Italy is", "Rome", "neighbourhood"),
                     LocalityPrompt("nq question: who wrote hamlet?", "William Shakespeare", "distant"))),
        EditRequest("b", "The largest planet is", "planet", "Mars", None, (),
                    (LocalityPrompt("The chemical symbol for gold is", "Au", "distant"),)),
    ]
    ev = Evaluator(tiny_llama, EvalSettings(max_new_tokens=5))
    pre = ev.baseline(reqs, targets=True)
    got = ev.evaluate(reqs, pre)["generation"]
    assert got["n"]["locality_neighbourhood"] == 1 and got["n"]["locality_distant"] == 2
    assert got["locality_neighbourhood"] == got["locality_distant"] == 1.0
    assert got["locality_argmax"] == 1.0 and got["locality_kl"] == 0.0
    assert 0.0 <= got["locality_empty_pre"] <= 1.0
    # After an edit that moves the distant prompts' outputs, the distribution view changes.
    config = FinetuneConfig(modules=["block@0", "block@1"], lr=5e-2, batch_size=2, epochs=30)
    FinetuneEditor(tiny_llama, config).edit(reqs)
    after = ev.evaluate(reqs, pre)["generation"]
    assert after["locality_kl"] > 0.0 and after["locality_argmax"] < 1.0


def test_prompt_formats(tiny_llama):
    from editbench.evaluate.prompts import format_request

    r = _requests()[0]
    qa = format_request(r, "qa")
    assert qa.prompt == "Question: The capital of France is\nAnswer:"
    assert qa.rephrase_prompts[0].startswith("Question: ") and qa.locality[0].prompt.startswith("Question: ")
    assert qa.locality[0].answer == r.locality[0].answer and qa.subject == r.subject
    with pytest.raises(EditbenchError, match="no chat template"):
        format_request(r, "chat", tiny_llama.tokenizer)
    # A prompt ending in a newline (a chat generation prompt) keeps it; the target follows it.
    from editbench.tokens import encode_prompt_target

    item = encode_prompt_target(tiny_llama.tokenizer, "Answer:\n", "Rome")
    assert tiny_llama.tokenizer.decode(item.prompt_ids).endswith("\n")
