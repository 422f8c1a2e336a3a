"""What the edited model says beyond the target: fluency, consistency, semantic match and
portability. Each metric is optional and says exactly how it was computed."""

from editbench.evaluate.quality.consistency import (
    CONSISTENCY_DEFINITION,
    Idf,
    ReferenceIndex,
    consistency,
    corpus_idf,
    fit_idf,
    references_idf,
)
from editbench.evaluate.quality.fluency import (
    FLUENCY_DEFINITION,
    fluency,
    ngram_entropy_bits,
    text_entropy,
    word_tokens,
)
from editbench.evaluate.quality.freegen import FreeGenConfig, free_generate, scored_text
from editbench.evaluate.quality.scorer import (
    METRICS,
    PORTABILITY_DEFINITION,
    QualityScorer,
    QualitySettings,
    parse_metrics,
    template_prompts,
)
from editbench.evaluate.quality.semantic import (
    DEFAULT_THRESHOLD,
    OFFLINE_MODEL,
    SEMANTIC_DEFINITION,
    SentenceEncoder,
)

__all__ = [
    "CONSISTENCY_DEFINITION", "DEFAULT_THRESHOLD", "FLUENCY_DEFINITION", "METRICS",
    "OFFLINE_MODEL", "PORTABILITY_DEFINITION", "SEMANTIC_DEFINITION", "FreeGenConfig", "Idf",
    "QualityScorer", "QualitySettings", "ReferenceIndex", "SentenceEncoder", "consistency",
    "corpus_idf", "fit_idf", "fluency", "free_generate", "ngram_entropy_bits",
    "parse_metrics", "references_idf", "scored_text", "template_prompts", "text_entropy",
    "word_tokens",
]
