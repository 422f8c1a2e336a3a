"""Every metric declared once: name, protocols, definition, direction, scale, and the
function that scores one case record.

The evaluator builds a case record per request and protocol (what was generated or
predicted, see ``evaluator.py``); :func:`score_record` then asks every metric registered
for that protocol for its per-prompt values, which go into the record's ``scores`` and
are averaged by :class:`~editbench.evaluate.records.Accumulator` (mean over a case's
prompts, then over cases). The run summary, the leaderboard, the plots and ``editbench
tune`` read the same entries (direction for "best", rates on 0-1 axes and as percent,
default columns, tune columns), so adding a metric is one :func:`metric` decoration of
its scoring function::

    @metric("answer_words", protocols=("generation",), rate=False, higher_is_better=False,
            definition="words in the edit prompt's answer")
    def answer_words(record, pre):
        return [len(record["reliability"]["answer"].split())]

A scoring function gets the case record and the unedited model's record of the same case
under the same protocol (``pre``; None while the baseline itself is scored) and returns
the values of the case's prompts: floats, or ``(value, kind)`` pairs for a metric
declared with ``split=True`` (it then also reports ``<name>_<kind>`` per kind), or None
(or an empty list) where it does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from editbench.errors import EditbenchError, did_you_mean

Score = Callable[[dict[str, Any], "dict[str, Any] | None"], "Sequence[Any] | None"]
AGGREGATION = "mean over a case's prompts, then over the cases that have any"


@dataclass(frozen=True)
class Metric:
    """One metric: how to read it and, per protocol, how to score a case record."""

    name: str
    definition: str
    higher_is_better: bool = True
    rate: bool = True  # a share in [0, 1]: percent in tables, a 0-1 axis in plots
    signed: bool = False  # a difference of shares, in [-1, 1] (percent, a -1..1 axis)
    min_n: int | None = None  # a value over fewer cases is flagged in summaries and tables
    split: bool = False  # also reported per kind as <name>_<kind>
    column: bool = False  # a default leaderboard column
    tune: str | None = None  # the short label of its column in `editbench tune`'s table
    aggregation: str = AGGREGATION
    scores: dict[str, Score] = field(default_factory=dict)  # protocol -> scoring function

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.scores)


_METRICS: dict[str, Metric] = {}


def metric(name: str, *, protocols: Sequence[str], definition: str, **attrs: Any) -> Callable[[Score], Score]:
    """Register ``fn`` as the scoring function of ``name`` under ``protocols``; a name may
    be registered again for other protocols with the same attributes."""

    def register(fn: Score) -> Score:
        _ensure_standard()  # built-ins first, so they keep their place in every listing
        existing = _METRICS.get(name)
        entry = Metric(name, definition, **attrs)
        if existing is not None:
            if replace(existing, scores={}) != replace(entry, scores={}):
                raise EditbenchError(f"metric {name!r} registered twice with different attributes")
            entry = existing
        taken = [p for p in protocols if p in entry.scores]
        if taken:
            raise EditbenchError(f"metric {name!r} already has a scoring function for {taken}")
        _METRICS[name] = replace(entry, scores={**entry.scores, **{p: fn for p in protocols}})
        return fn

    return register


def unregister(name: str) -> None:
    """Remove a metric (tests that register a toy one)."""
    _METRICS.pop(name, None)


def _ensure_standard() -> None:
    """The built-in metrics register themselves when their module is imported."""
    import editbench.evaluate.standard  # noqa: F401


def metrics(protocol: str | None = None) -> list[Metric]:
    """The registered metrics (of ``protocol``), in registration order."""
    _ensure_standard()
    return [m for m in _METRICS.values() if protocol is None or protocol in m.scores]


def find(name: str) -> Metric | None:
    """The metric a reported name belongs to: itself, or the split metric with the longest
    name it extends (``locality_known_distant`` -> ``locality_known``, not ``locality``)."""
    _ensure_standard()
    if name in _METRICS:
        return _METRICS[name]
    owners = [m for m in _METRICS.values() if m.split and name.startswith(m.name + "_")]
    return max(owners, key=lambda m: len(m.name)) if owners else None


def reported_names(protocol: str, kinds: Iterable[str] = ()) -> list[str]:
    """Every name a protocol's results can hold, with ``<name>_<kind>`` for split metrics."""
    out = []
    for m in metrics(protocol):
        out.append(m.name)
        if m.split:
            out.extend(f"{m.name}_{k}" for k in kinds)
    return out


def check_name(name: str, protocol: str, what: str, kinds: Iterable[str] = ()) -> None:
    """One line naming ``what`` when ``name`` is no metric of ``protocol``."""
    known = reported_names(protocol, kinds)
    if name not in known:
        raise EditbenchError(f"{what}: unknown metric {name!r}{did_you_mean(name, known)}; "
                             f"expected one of {', '.join(known)}")


def higher_is_better(name: str) -> bool:
    m = find(name)
    return True if m is None else m.higher_is_better


def min_cases(name: str) -> int | None:
    """How many cases a value of ``name`` must rest on to be reported unflagged."""
    m = find(name)
    return None if m is None else m.min_n


def is_rate(name: str) -> bool | None:
    """Whether a reported name is a share in [0, 1] (None: not a registered metric)."""
    m = find(name)
    return None if m is None else m.rate


def default_columns() -> list[str]:
    _ensure_standard()
    return [m.name for m in _METRICS.values() if m.column]


def tune_columns() -> list[tuple[str, str]]:
    """(metric name, short label) of the columns of ``editbench tune``'s table."""
    _ensure_standard()
    return [(m.name, m.tune) for m in _METRICS.values() if m.tune]


def score_record(protocol: str, record: dict[str, Any], pre: dict[str, Any] | None) -> dict[str, list[float]]:
    """``metric -> values`` of one case record: every registered metric of ``protocol``
    that applies (no empty lists)."""
    scores: dict[str, list[float]] = {}
    for m in metrics(protocol):
        values = m.scores[protocol](record, pre)
        if not values:
            continue
        if not m.split:
            scores[m.name] = [float(v) for v in values]
            continue
        scores[m.name] = [float(v) for v, _ in values]
        for value, kind in values:
            if kind is not None:
                scores.setdefault(f"{m.name}_{kind}", []).append(float(value))
    return scores


def definitions(protocol: str) -> dict[str, str]:
    """``metric -> definition`` for the metrics of ``protocol`` (config.json)."""
    return {m.name: m.definition for m in metrics(protocol)}
