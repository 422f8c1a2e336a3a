"""Consistency ("reference score"): TF-IDF cosine between what the model writes about the
subject and reference text about the new target, as ROME defines it.

For one request: ``cos(tfidf(" ".join(generations)), tfidf(" ".join(references)))`` with a
scikit-learn ``TfidfVectorizer`` at its defaults (lower-cased words of two or more word
characters, raw term counts, smoothed IDF ``ln((1 + N) / (1 + df)) + 1``, L2-normalized
vectors); the metric is the mean over requests. Where the generations hold no word of the
vocabulary the score is 0 (they share nothing with the reference); where the references
hold none, the request is not scored (None).

The IDF decides which words count. ROME ships an IDF fit on its Wikipedia attribute
snippets; here it is fit on a corpus given by path (:func:`corpus_idf`, cached in the
editbench cache by the corpus file's SHA-256), or, with no corpus, on the run's own
reference texts (:func:`references_idf`): two different definitions, recorded as such
(:attr:`Idf.source`) and never averaged together.

References: CounterFact's attribute snippets where the data has them (``EditRequest.
reference_texts``); for data without them, :class:`ReferenceIndex` can take corpus passages
that mention the new target (and not the subject) instead, a third, labelled definition.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from editbench.errors import EditbenchError
from editbench.extras import require
from editbench.files import atomic_write, read_jsonl, sha256_file
from editbench.resources import cache_dir

TFIDF_VERSION = "sklearn-tfidf-defaults-v1"
"""Part of every IDF cache key: bump it when the vectorizer settings change."""

CONSISTENCY_DEFINITION = (
    "ROME's reference score: cosine of the TF-IDF vectors (scikit-learn TfidfVectorizer "
    "defaults, IDF from idf.source) of a request's concatenated generations and its "
    "concatenated reference texts; 0 when the generations hold no vocabulary word; mean "
    "over the requests that have reference texts"
)


def _require_sklearn():
    return require("sklearn.feature_extraction.text", "the consistency metric").TfidfVectorizer


@dataclass(frozen=True, eq=False)
class Idf:
    """A fitted vocabulary and IDF, and what it was fitted on (goes into config.json)."""

    terms: tuple[str, ...]
    idf: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def vectorizer(self):
        vec = _require_sklearn()(vocabulary=list(self.terms))
        vec.idf_ = self.idf
        return vec

    def cosine(self, text_a: str, text_b: str) -> float | None:
        """TF-IDF cosine of two texts; None when ``text_b`` has no vocabulary word."""
        rows = self.vectorizer.transform([text_a, text_b]).tocsr()  # sparse: ~30K columns
        a, b = rows[0], rows[1]
        norm_a, norm_b = math.sqrt(a.multiply(a).sum()), math.sqrt(b.multiply(b).sum())
        if norm_b == 0.0:
            return None
        if norm_a == 0.0:
            return 0.0
        return float(a.multiply(b).sum() / (norm_a * norm_b))


def consistency(generations: Sequence[str], references: Sequence[str], idf: Idf) -> float | None:
    """One request's reference score (None: no generations or no usable reference)."""
    if not generations or not references:
        return None
    return idf.cosine(" ".join(generations), " ".join(references))


def fit_idf(documents: Iterable[str], source: dict[str, Any]) -> Idf:
    docs = [d for d in documents if d.strip()]
    if not docs:
        raise EditbenchError(f"TF-IDF: no text to fit the IDF on ({source})")
    vec = _require_sklearn()()
    try:
        vec.fit(docs)
    except ValueError as exc:  # e.g. "empty vocabulary"
        raise EditbenchError(f"TF-IDF: cannot fit the IDF on {source}: {exc}") from None
    terms = tuple(str(t) for t in vec.get_feature_names_out())
    return Idf(terms, np.asarray(vec.idf_, dtype=np.float64),
               {**source, "documents": len(docs), "vocabulary": len(terms)})


# -- corpora --------------------------------------------------------------------------


def corpus_documents(path: str | Path) -> list[str]:
    """The documents of a corpus file: JSON lines with a ``text`` field, or plain text
    with one document per line."""
    path = Path(path)
    if not path.is_file():
        raise EditbenchError(f"corpus {str(path)!r} not found (expected a .jsonl file with a "
                             "'text' field per line, or a text file with one document per line)")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        docs = []
        for lineno, rec in read_jsonl(path):
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise EditbenchError(f"{path}: line {lineno}: expected an object with a string "
                                     f"'text' field, got {type(rec).__name__}")
            docs.append(text)
        return docs
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise EditbenchError(f"{path}: cannot read as UTF-8 text: {exc}") from None


def corpus_idf(path: str | Path, *, use_cache: bool = True) -> Idf:
    """IDF fit on a corpus file, cached under ``cache_dir("tfidf")`` by its SHA-256."""
    path = Path(path)
    if not path.is_file():
        corpus_documents(path)  # raises the one-line error
    sha = sha256_file(path)
    source = {"kind": "corpus", "path": str(path), "sha256": sha, "settings": TFIDF_VERSION}
    cached = cache_dir("tfidf") / f"idf-{sha[:24]}-{TFIDF_VERSION}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as data:
                terms = tuple(str(t) for t in data["terms"])
                idf = np.asarray(data["idf"], dtype=np.float64)
                documents = int(data["documents"])
            if len(terms) == len(idf) and len(terms):
                return Idf(terms, idf, {**source, "documents": documents,
                                        "vocabulary": len(terms)})
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache is recomputed
    fitted = fit_idf(corpus_documents(path), source)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, terms=np.array(fitted.terms), idf=fitted.idf,
                     documents=np.int64(fitted.source["documents"]))

    if use_cache:
        atomic_write(cached, write)
    return fitted


def references_idf(reference_sets: Iterable[Sequence[str]]) -> Idf:
    """IDF fit on a run's own reference texts (each distinct text one document): the
    fallback without a corpus, ROME's own fit when the references are its snippets."""
    docs = sorted({t for refs in reference_sets for t in refs})
    digest = hashlib.sha256("\n\x00".join(docs).encode()).hexdigest()
    return fit_idf(docs, {"kind": "run_references", "sha256": digest, "settings": TFIDF_VERSION})


# -- references from a corpus ---------------------------------------------------------

_WORD = re.compile(r"\w+")


class ReferenceIndex:
    """Corpus passages that mention a target, for data without attribute snippets.

    ``lookup(target, subject)`` returns the first ``k`` passages (in corpus order) that
    contain the target as a whole phrase (case-sensitive) and do not contain the subject,
    so they talk about other things that have the target attribute, as ROME's snippets do.
    """

    def __init__(self, documents: Sequence[str], k: int = 10) -> None:
        if k < 1:
            raise EditbenchError(f"reference passages: k must be positive, got {k}")
        self.documents = list(documents)
        self.k = k
        self._by_word: dict[str, list[int]] = defaultdict(list)
        for i, doc in enumerate(self.documents):
            for word in set(_WORD.findall(doc)):
                self._by_word[word].append(i)

    def lookup(self, target: str, subject: str | None = None) -> tuple[str, ...]:
        words = _WORD.findall(target)
        if not words:
            return ()
        phrase = re.compile(r"(?<!\w)" + re.escape(target.strip()) + r"(?!\w)")
        # candidates: passages holding the target's rarest word
        candidates = min((self._by_word.get(w, []) for w in words), key=len)
        found: list[str] = []
        for i in candidates:
            doc = self.documents[i]
            if phrase.search(doc) and not (subject and subject in doc):
                found.append(doc)
                if len(found) == self.k:
                    break
        return tuple(found)
