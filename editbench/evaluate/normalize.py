"""Answer normalization and cutting for exact match (SQuAD-style, as the LocFT-BF paper scores).

The generation protocol stops at '.', newline or EOS and keeps the text before the first
stop. Two kinds of reference answers would then score wrongly, so they are handled here
and counted at load time (:func:`answer_checks`):

- a target that itself holds a stop character ("J.R.R. Tolkien") could never be produced
  whole: for such targets generation does not stop at '.', and a continuation that begins
  with the target is cut at the first stop *after* it (:func:`cut_answer`);
- an answer that normalizes to "" (the article "A") would match an empty answer: targets
  like that are compared without dropping articles (:func:`answers_match`), and such gold
  locality answers (and gold answers with a stop character, which greedy generation cannot
  reach) are left out of ``locality_gold``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
STOP_CHARS = (".", "\n")


def normalize_answer(text: str, *, articles: bool = True) -> str:
    """Lowercase, drop punctuation and (unless ``articles=False``) English articles,
    collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    if articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def has_stop(text: str) -> bool:
    """Whether ``text`` (stripped) contains a character the generation protocol stops at."""
    return any(ch in text.strip() for ch in STOP_CHARS)


def _before_stop(text: str) -> str:
    for i, ch in enumerate(text):
        if ch in STOP_CHARS:
            return text[:i]
    return text


def cut_at_stop(text: str) -> str:
    """The answer part of a continuation: everything before the first '.' or newline."""
    return _before_stop(text).strip()


def cut_answer(text: str, target: str | None = None) -> str:
    """:func:`cut_at_stop`, except that a continuation beginning with a ``target`` that
    holds a stop character is cut at the first stop after the target."""
    if target is not None and has_stop(target):
        wanted, begun = target.strip(), text.lstrip()
        if begun.startswith(wanted):
            return (wanted + _before_stop(begun[len(wanted):])).strip()
    return cut_at_stop(text)


def answers_match(answer: str, target: str) -> bool:
    """Normalized exact match; a target that normalizes to "" (an article alone) is compared
    with articles kept, and an empty answer never matches."""
    wanted = normalize_answer(target)
    if not wanted:
        wanted, got = normalize_answer(target, articles=False), normalize_answer(answer, articles=False)
    else:
        got = normalize_answer(answer)
    return bool(wanted) and got == wanted


def knows(answer: str, gold: str) -> bool:
    """Whether a generated answer states the gold answer: equal to it after normalization,
    or beginning with it followed by more words ("Japanese, with a significant minority of"
    knows "Japanese"; "1990s" does not know "1990"). A gold answer that generation cannot
    reach (it holds '.' or a newline, or normalizes to "", as ``locality_gold`` leaves out)
    is never known, and an empty answer knows nothing."""
    if not gold_reachable(gold):
        return False
    wanted, got = normalize_answer(gold), normalize_answer(answer)
    return got == wanted or got.startswith(wanted + " ")


def exact_match(prediction: str, target: str) -> bool:
    return answers_match(prediction, target)


def gold_reachable(gold: str) -> bool:
    """Whether a gold locality answer can be matched at all under the generation protocol."""
    return not has_stop(gold) and normalize_answer(gold) != ""


def answer_checks(requests: Iterable[Any]) -> dict[str, int]:
    """Counts of the answers this module treats specially (see the module docstring)."""
    counts = {"targets_with_stop": 0, "targets_without_words": 0, "gold_unreachable": 0,
              "gold_total": 0}
    for r in requests:
        counts["targets_with_stop"] += has_stop(r.target_new)
        counts["targets_without_words"] += normalize_answer(r.target_new) == ""
        for loc in r.locality:
            counts["gold_total"] += 1
            counts["gold_unreachable"] += not gold_reachable(loc.answer)
    return counts
