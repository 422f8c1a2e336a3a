"""Scoring protocols and the unified evaluator."""

from editbench.evaluate.evaluator import (
    LOCALITY_DEFINITION,
    PROTOCOL_DEFINITIONS,
    PROTOCOLS,
    Baseline,
    EvalSettings,
    Evaluator,
)
from editbench.evaluate.normalize import cut_at_stop, exact_match, normalize_answer

__all__ = [
    "LOCALITY_DEFINITION", "PROTOCOL_DEFINITIONS", "PROTOCOLS", "Baseline", "EvalSettings",
    "Evaluator", "cut_at_stop", "exact_match", "normalize_answer",
]
