"""Answer normalization for exact match (SQuAD-style, as the LocFT-BF paper scores)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
STOP_CHARS = (".", "\n")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def cut_at_stop(text: str) -> str:
    """The answer part of a continuation: everything before the first '.' or newline."""
    for i, ch in enumerate(text):
        if ch in STOP_CHARS:
            return text[:i].strip()
    return text.strip()


def exact_match(prediction: str, target: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(target)
