"""The built-in metrics: what each reads from a case record (see ``metrics.py``).

Generation records hold answer items (``match``: normalized exact match with the target)
and locality items (``answer``, ``gold_match``; after editing also ``pre``,
``unchanged``, ``unchanged_raw``, ``argmax_agreement``, ``kl``); teacher-forced records
hold token accuracies. The protocols themselves are defined in ``evaluator.py``.
"""

from __future__ import annotations

import math
from typing import Any

from editbench.evaluate.metrics import metric
from editbench.evaluate.normalize import knows, normalize_answer

Record = dict[str, Any]
BOTH = ("generation", "teacher_forced")


def _gen(record: Record, key: str) -> list[dict[str, Any]]:
    value = record.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# -- edit and paraphrase prompts ---------------------------------------------------------


@metric("reliability", protocols=("generation",), column=True, tune="rel",
        definition="the edit prompt is answered with the new target")
def _reliability_generation(record: Record, pre: Record | None) -> list[float]:
    return [float(x["match"]) for x in _gen(record, "reliability")]


@metric("reliability", protocols=("teacher_forced",), column=True, tune="rel",
        definition="the edit prompt is answered with the new target")
def _reliability_teacher_forced(record: Record, pre: Record | None) -> list[float]:
    return [] if record.get("reliability") is None else [record["reliability"]]


@metric("generalization", protocols=("generation",), column=True, tune="gen",
        definition="paraphrases of the edit prompt are answered with the new target")
def _generalization_generation(record: Record, pre: Record | None) -> list[float]:
    return [float(x["match"]) for x in record.get("generalization") or []]


@metric("generalization", protocols=("teacher_forced",), column=True, tune="gen",
        definition="paraphrases of the edit prompt are answered with the new target")
def _generalization_teacher_forced(record: Record, pre: Record | None) -> list[float]:
    return list(record.get("generalization") or [])


@metric("portability", protocols=("generation",), split=True,
        definition="KnowEdit portability prompts (reasoning, subject aliasing, logical "
        "generalization) answered like reliability; portability_<kind> per kind")
def _portability_generation(record: Record, pre: Record | None) -> list[tuple[float, str]]:
    return [(float(x["match"]), x["kind"]) for x in record.get("portability") or []]


@metric("portability", protocols=("teacher_forced",), split=True,
        definition="KnowEdit portability prompts (reasoning, subject aliasing, logical "
        "generalization) answered like reliability; portability_<kind> per kind")
def _portability_teacher_forced(record: Record, pre: Record | None) -> list[tuple[float, str]]:
    return [(float(x["accuracy"]), x["kind"]) for x in record.get("portability") or []]


def _similarities(record: Record, key: str, field: str) -> list[float]:
    return [float(x[field]) for x in _gen(record, key) if field in x]


@metric("reliability_similarity", protocols=("generation",),
        definition="cosine similarity of sentence embeddings of the edit prompt's answer and "
        "the target")
def _reliability_similarity(record: Record, pre: Record | None) -> list[float]:
    return _similarities(record, "reliability", "similarity")


@metric("reliability_semantic", protocols=("generation",),
        definition="the edit prompt's answer is semantically the target (similarity at or "
        "above the threshold)")
def _reliability_semantic(record: Record, pre: Record | None) -> list[float]:
    return _similarities(record, "reliability", "semantic_match")


@metric("generalization_similarity", protocols=("generation",),
        definition="cosine similarity of sentence embeddings of a paraphrase's answer and "
        "the target")
def _generalization_similarity(record: Record, pre: Record | None) -> list[float]:
    return _similarities(record, "generalization", "similarity")


@metric("generalization_semantic", protocols=("generation",),
        definition="a paraphrase's answer is semantically the target")
def _generalization_semantic(record: Record, pre: Record | None) -> list[float]:
    return _similarities(record, "generalization", "semantic_match")


# -- free generations --------------------------------------------------------------------


def _quality(record: Record, key: str) -> list[float]:
    value = (record.get("quality") or {}).get(key)
    return [] if value is None else [value]


@metric("fluency", protocols=("generation",), rate=False,
        definition="ROME's weighted bigram/trigram entropy of the free generations, in bits")
def _fluency(record: Record, pre: Record | None) -> list[float]:
    return _quality(record, "fluency")


@metric("consistency", protocols=("generation",),
        definition="TF-IDF cosine of the free generations and reference texts about the "
        "new target")
def _consistency(record: Record, pre: Record | None) -> list[float]:
    return _quality(record, "consistency")


# -- locality ----------------------------------------------------------------------------


def _locality(record: Record) -> list[dict[str, Any]]:
    return record.get("locality") or []


MIN_KNOWN = 50
"""Cases with a known locality prompt that ``locality_known`` must rest on to be reported
unflagged: at 50 the standard error of a share is at most 0.07 (95% interval +-0.14),
about the gap that separates editors in the tables."""

_KNOWN = ("locality prompts the unedited model knows (its answer equals the gold answer "
          "after normalization, or begins with it followed by more words) still answered with "
          "the gold after editing; locality_known_<kind> per kind")


def _known_before(pre: Record | None, record: Record) -> list[bool]:
    """Per locality prompt: did the unedited model know its gold answer?"""
    items = _locality(pre if pre is not None else record)
    return [knows(x["answer"], x["gold"]) for x in items]


@metric("locality_known", protocols=("generation",), split=True, column=True, tune="known",
        min_n=MIN_KNOWN, definition=_KNOWN)
def _locality_known(record: Record, pre: Record | None) -> list[tuple[float, str | None]]:
    if pre is None:
        return []
    return [(float(knows(x["answer"], x["gold"])), x["kind"])
            for x, known in zip(_locality(record), _known_before(pre, record), strict=True) if known]


@metric("known_pre", protocols=("generation",), tune="kn_pre",
        definition="locality prompts the unedited model knows (see locality_known)")
def _known_pre(record: Record, pre: Record | None) -> list[float]:
    return [float(k) for k in _known_before(pre, record)]


def _tf_known_before(pre: Record | None, record: Record) -> list[bool]:
    return [x["gold_accuracy"] == 1.0 for x in _locality(pre if pre is not None else record)]


@metric("locality_known", protocols=("teacher_forced",), split=True, column=True, tune="known",
        min_n=MIN_KNOWN, definition=_KNOWN)
def _locality_known_teacher_forced(record: Record, pre: Record | None) -> list[tuple[float, str | None]]:
    # Known: every gold token was the unedited model's argmax; kept: the share still is.
    if pre is None:
        return []
    return [(x["gold_accuracy"], x["kind"])
            for x, known in zip(_locality(record), _tf_known_before(pre, record), strict=True) if known]


@metric("known_pre", protocols=("teacher_forced",), tune="kn_pre",
        definition="locality prompts the unedited model knows (see locality_known)")
def _known_pre_teacher_forced(record: Record, pre: Record | None) -> list[float]:
    return [float(k) for k in _tf_known_before(pre, record)]


@metric("locality", protocols=("generation",), split=True, tune="loc",
        definition="locality prompts that keep their pre-edit behaviour (generation: the same "
        "normalized answer; teacher-forced: the share of pre-edit predicted tokens predicted "
        "again); locality_<kind> per kind")
def _locality_generation(record: Record, pre: Record | None) -> list[tuple[float, str | None]]:
    if pre is None:
        return []
    return [(float(x["unchanged"]), x["kind"]) for x in _locality(record)]


@metric("locality", protocols=("teacher_forced",), split=True, tune="loc",
        definition="locality prompts that keep their pre-edit behaviour (generation: the same "
        "normalized answer; teacher-forced: the share of pre-edit predicted tokens predicted "
        "again); locality_<kind> per kind")
def _locality_teacher_forced(record: Record, pre: Record | None) -> list[tuple[float, str | None]]:
    if pre is None:
        return []
    return [(float(x["unchanged"]), x["kind"]) for x in _locality(record)]


@metric("locality_raw", protocols=("generation",),
        definition="locality prompts whose post-edit continuation equals the pre-edit one "
        "character for character")
def _locality_raw(record: Record, pre: Record | None) -> list[float]:
    return [] if pre is None else [float(x["unchanged_raw"]) for x in _locality(record)]


@metric("locality_gold", protocols=("generation",), tune="loc_g",
        definition="locality prompts answered with their gold answer (gold answers holding "
        "'.'/newline or normalizing to '' left out)")
def _locality_gold_generation(record: Record, pre: Record | None) -> list[float]:
    return [float(x["gold_match"]) for x in _locality(record) if x["gold_match"] is not None]


@metric("locality_gold", protocols=("teacher_forced",), tune="loc_g",
        definition="locality prompts answered with their gold answer (gold answers holding "
        "'.'/newline or normalizing to '' left out)")
def _locality_gold_teacher_forced(record: Record, pre: Record | None) -> list[float]:
    return [x["gold_accuracy"] for x in _locality(record)]


@metric("locality_empty", protocols=("generation",), higher_is_better=False,
        definition="locality prompts with an empty answer (scored before editing)")
def _locality_empty(record: Record, pre: Record | None) -> list[float]:
    if pre is not None:
        return []
    return [float(normalize_answer(x["answer"]) == "") for x in _locality(record)]


@metric("locality_empty_pre", protocols=("generation",), higher_is_better=False,
        definition="locality prompts whose pre-edit answer is empty")
def _locality_empty_pre(record: Record, pre: Record | None) -> list[float]:
    return [] if pre is None else [float(normalize_answer(x["pre"]) == "") for x in _locality(record)]


@metric("locality_nonempty", protocols=("generation",),
        definition="locality over the prompts whose pre-edit answer is not empty")
def _locality_nonempty(record: Record, pre: Record | None) -> list[float]:
    if pre is None:
        return []
    return [float(x["unchanged"]) for x in _locality(record) if normalize_answer(x["pre"]) != ""]


@metric("locality_argmax", protocols=("generation",), tune="loc_am",
        definition="teacher-forced over the first dist_tokens tokens of the pre-edit "
        "continuation: agreement of the post-edit argmax with the pre-edit one")
def _locality_argmax(record: Record, pre: Record | None) -> list[float]:
    return [x["argmax_agreement"] for x in _locality(record) if "argmax_agreement" in x]


@metric("locality_kl", protocols=("generation",), higher_is_better=False, rate=False,
        definition="KL(pre || post) over the pre-edit top dist_top tokens and the rest of "
        "the vocabulary as one bucket, at the first dist_tokens continuation positions")
def _locality_kl(record: Record, pre: Record | None) -> list[float]:
    return [x["kl"] for x in _locality(record) if "kl" in x]


# -- the probability protocol (ROME / MEMIT CounterFact scores) ---------------------------


def _better(items: list[dict[str, Any]], first: str, second: str) -> list[float]:
    return [float(x[first] < x[second]) for x in items]


def _margin(items: list[dict[str, Any]], first: str, second: str) -> list[float]:
    return [math.exp(-x[first]) - math.exp(-x[second]) for x in items]


@metric("efficacy_score", protocols=("probability",), column=True,
        definition="edit prompts with P(target_new) > P(target_true) (ROME's ES)")
def _efficacy_score(record: Record, pre: Record | None) -> list[float]:
    return _better(record.get("efficacy") or [], "nll_new", "nll_true")


@metric("efficacy_magnitude", protocols=("probability",), signed=True,
        definition="mean P(target_new) - P(target_true) on edit prompts (ROME's EM)")
def _efficacy_magnitude(record: Record, pre: Record | None) -> list[float]:
    return _margin(record.get("efficacy") or [], "nll_new", "nll_true")


@metric("paraphrase_score", protocols=("probability",), column=True,
        definition="paraphrases with P(target_new) > P(target_true) (ROME's PS)")
def _paraphrase_score(record: Record, pre: Record | None) -> list[float]:
    return _better(record.get("paraphrase") or [], "nll_new", "nll_true")


@metric("paraphrase_magnitude", protocols=("probability",), signed=True,
        definition="mean P(target_new) - P(target_true) on paraphrases (ROME's PM)")
def _paraphrase_magnitude(record: Record, pre: Record | None) -> list[float]:
    return _margin(record.get("paraphrase") or [], "nll_new", "nll_true")


@metric("neighbourhood_score", protocols=("probability",), column=True,
        definition="neighbourhood prompts with P(target_true) > P(target_new) (ROME's NS)")
def _neighbourhood_score(record: Record, pre: Record | None) -> list[float]:
    return _better(record.get("neighbourhood") or [], "nll_true", "nll_new")


@metric("neighbourhood_magnitude", protocols=("probability",), signed=True,
        definition="mean P(target_true) - P(target_new) on neighbourhood prompts (ROME's NM)")
def _neighbourhood_magnitude(record: Record, pre: Record | None) -> list[float]:
    return _margin(record.get("neighbourhood") or [], "nll_true", "nll_new")
