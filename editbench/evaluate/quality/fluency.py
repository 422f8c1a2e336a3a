"""Fluency: ROME's weighted bi-/tri-gram entropy of free generations.

Definition (ROME/MEMIT ``compute_n_gram_entropy``, also EasyEdit's fluency):

* split a generation into words with :func:`word_tokens`;
* for n = 2 and n = 3, take the frequency distribution of the word n-grams and its
  Shannon entropy in bits, ``H_n = -sum_g p(g) log2 p(g)`` (an empty distribution, a text of
  fewer than n words, has entropy 0, as in ROME's arithmetic);
* weight them 2/3 and 4/3 and average the two: ``(2/3 H_2 + 4/3 H_3) / 2``;
* a request's fluency is the mean over its generations (arithmetic by default, geometric
  on request), and the metric is the mean over requests.

Scale: bits, as computed (a 100-token text scores about 5-6). Tables that print ~550-600
multiplied it by 100. Degenerate text (the same phrase repeated) has few distinct n-grams
and scores low; that is the drop the metric exists to show.

The word tokenizer is editbench's own, made to give the tokens NLTK's ``word_tokenize``
(Punkt sentence splitting, then the Treebank word rules) gives on ordinary English prose,
without NLTK or its downloaded Punkt data: sentences end at '.', '?' or '!' before
whitespace unless the word is a known abbreviation or an initial, and each sentence is
split by the Treebank rules (quotes, punctuation, brackets, dashes, clitics). The tests
compare it with NLTK's Treebank tokenizer sentence by sentence where NLTK is installed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)
AGGREGATES = ("arith", "geom")

FLUENCY_DEFINITION = (
    "ROME's weighted n-gram entropy: words by editbench's NLTK-compatible word tokenizer, "
    "Shannon entropy in bits of the bigram and trigram frequency distributions, weighted "
    "2/3 and 4/3 and averaged; per request the mean over its generations, then the mean "
    "over requests; in bits (not multiplied by 100)"
)

# -- sentences ------------------------------------------------------------------------

# Abbreviations after which a period does not end a sentence (lower case, no final
# period): the common ones of Punkt's English model. Single letters (initials) too.
_ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "corp",
    "lt", "sgt", "capt", "rev", "hon", "vol", "e.g", "i.e", "u.s", "u.k", "a.m", "p.m",
    "jan", "feb", "mar", "apr", "aug", "sept", "oct", "nov", "dec", "mt", "ft",
))
_CLOSERS = "\"')]}»”’"
# A sentence ends after [.?!] (and closing quotes/brackets) that a space follows.
_BOUNDARY = re.compile(rf"[.?!][{re.escape(_CLOSERS)}]*(?=\s)")


def sentences(text: str) -> list[str]:
    """Split prose into sentences the way Punkt does on ordinary English."""
    out: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        if text[match.start()] == ".":
            word = text[start : match.start()].split()[-1:] or [""]
            stem = word[0].lstrip("\"'([{«“‘„`").lower()
            if stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha()) or stem.endswith("."):
                continue  # "Dr. Smith", "J. R. R. Tolkien", "wait... what"
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


# -- words (Treebank rules, one sentence at a time) -----------------------------------

_Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> tuple[_Rule, ...]:
    return tuple((re.compile(pattern), repl) for pattern, repl in pairs)


_OPENING = _rules(
    (r"([«“‘„]|`+)", r" \1 "),  # typographic opening quotes and backtick runs
    (r'^"', "``"),  # a straight double quote opening the sentence
    (r"(``)", r" \1 "),
    (r"""([ (\[{<])("|'')""", r"\1 `` "),  # ... or opening after a space or bracket
    # a single quote opening a word that is not a clitic ('tis stays for _CLITICS_3)
    (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),
)
_FINAL = r"""([^.])(\.)([\])}>"'»”’]*)\s*$"""  # the sentence's own final period
_PUNCTUATION = _rules(
    (_FINAL, r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),  # 3,000 and 10:30 stay whole
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),  # ellipses
    (r"[;@#$%&]", r" \g<0> "),
    (r"[\u2012-\u2015]", r" \g<0> "),  # figure, en and em dashes, horizontal bar
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),  # a closing single quote
    (r"[*]", r" \g<0> "),
    (r"[\][(){}<>]", r" \g<0> "),  # brackets
    (r"--", r" -- "),
)
_CLOSING = _rules(
    (r"([»”’])", r" \1 "),
    (r"''", " '' "),
    (r'"', " '' "),
    (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),  # clitics: 's 'm 'd and a lone '
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
)
# Fused words Treebank splits in two (MacIntyre's list): cannot -> can not, ...
_CLITICS = _rules(
    *((rf"(?i)\b({a})({b})\b", r" \1 \2 ") for a, b in (
        ("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"),
        ("lem", "me"), ("more", "'n"))),
    (r"(?i)\b(wan)(na)(?=\s)", r" \1 \2 "),
    (r"(?i) ('t)(is)\b", r" \1 \2 "),
    (r"(?i) ('t)(was)\b", r" \1 \2 "),
)


def _sentence_words(sentence: str) -> list[str]:
    text = sentence
    for rules in (_OPENING, _PUNCTUATION):
        for pattern, repl in rules:
            text = pattern.sub(repl, text)
    text = " " + text + " "  # clitic rules look for a space on either side
    for rules in (_CLOSING, _CLITICS):
        for pattern, repl in rules:
            text = pattern.sub(repl, text)
    return text.split()


def word_tokens(text: str) -> list[str]:
    """Words of ``text`` as NLTK's ``word_tokenize`` gives them on ordinary English."""
    return [w for s in sentences(text) for w in _sentence_words(s)]


# -- entropy --------------------------------------------------------------------------


def ngram_entropy_bits(tokens: Sequence[str], n: int) -> float:
    """Shannon entropy (bits) of the frequency distribution of ``tokens``' n-grams."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    if not total:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def _mean(values: Sequence[float], aggregate: str) -> float:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: expected one of {list(AGGREGATES)}, got {aggregate!r}")
    if aggregate == "arith":
        return sum(values) / len(values)
    if any(v <= 0 for v in values):
        return 0.0  # a geometric mean with a zero factor
    return math.exp(sum(math.log(v) for v in values) / len(values))


def text_entropy(text: str) -> float:
    """ROME's ``compute_n_gram_entropy`` of one text: weighted 2-/3-gram entropy, bits."""
    tokens = word_tokens(text)
    weighted = [w * ngram_entropy_bits(tokens, n) for n, w in zip(NGRAM_ORDERS, NGRAM_WEIGHTS, strict=True)]
    return sum(weighted) / len(weighted)


def fluency(texts: Sequence[str], aggregate: str = "arith") -> float | None:
    """One request's fluency: the mean entropy of its generations (None: no generations)."""
    if not texts:
        return None
    return _mean([text_entropy(t) for t in texts], aggregate)
