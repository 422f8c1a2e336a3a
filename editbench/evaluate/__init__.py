"""Scoring protocols and the unified evaluator."""

from editbench.evaluate.evaluator import (
    LOCALITY_DEFINITION,
    PROTOCOL_DEFINITIONS,
    PROTOCOLS,
    EvalSettings,
    Evaluator,
    Resumed,
)
from editbench.evaluate.normalize import answer_checks, cut_at_stop, exact_match, normalize_answer
from editbench.evaluate.records import Accumulator, PreEdit

__all__ = [
    "LOCALITY_DEFINITION", "PROTOCOL_DEFINITIONS", "PROTOCOLS", "Accumulator", "EvalSettings",
    "Evaluator", "PreEdit", "Resumed", "answer_checks", "cut_at_stop", "exact_match",
    "normalize_answer",
]
