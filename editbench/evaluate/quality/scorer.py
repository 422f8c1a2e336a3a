"""The quality metrics of one run, behind one object the evaluator calls.

``QualityScorer(handle, settings, requests)`` prepares everything that does not depend on
the model (generation prompts, references, the IDF); then, for the unedited model
(:meth:`QualityScorer.case_quality` before the first edit) and for the edited one (after
the last), it generates freely about each subject and scores fluency and consistency per
request, and scores semantic match for (answer, target) pairs the evaluator already has.
Every definition it used is in :meth:`QualityScorer.describe` (config.json) and the time
each part took in :attr:`QualityScorer.timings` (metrics.json). With no quality metric
switched on, the evaluator never builds one, so they cost nothing when off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from editbench.api import EditRequest
from editbench.errors import EditbenchError
from editbench.evaluate.quality.consistency import (
    CONSISTENCY_DEFINITION,
    Idf,
    ReferenceIndex,
    consistency,
    corpus_documents,
    corpus_idf,
    references_idf,
)
from editbench.evaluate.quality.fluency import AGGREGATES, FLUENCY_DEFINITION, fluency
from editbench.evaluate.quality.freegen import FreeGenConfig, free_generate, scored_text
from editbench.evaluate.quality.semantic import (
    DEFAULT_THRESHOLD,
    OFFLINE_MODEL,
    SEMANTIC_DEFINITION,
    SentenceEncoder,
)
from editbench.extras import check

if TYPE_CHECKING:
    from editbench.models import ModelHandle

METRICS = ("fluency", "consistency", "semantic", "portability")
# The optional library each metric needs (the `quality` extra).
LIBRARIES = {"consistency": "sklearn", "semantic": "sentence_transformers"}
FREE_GENERATION_METRICS = ("fluency", "consistency")
PROMPT_SOURCES = ("auto", "data", "template")
REFERENCE_SOURCES = ("data", "corpus")

PORTABILITY_DEFINITION = (
    "portability prompts (KnowEdit: one-hop reasoning, subject aliasing, logical "
    "generalization) scored like reliability under each protocol (generation: the answer cut "
    "and matched as for targets; teacher_forced: fraction of the answer's tokens predicted); "
    "mean over a request's prompts, then over requests that have any; portability_<kind> "
    "likewise per kind"
)

TEMPLATE_VERSION = "v1"
TEMPLATE_DEFINITION = (
    "template v1, for data without generation prompts: the edit prompt, each rephrase "
    "prompt, and '{subject} is', duplicates dropped, in that order"
)


def template_prompts(request: EditRequest) -> tuple[str, ...]:
    """Generation prompts about the subject built from the request itself (template v1)."""
    prompts = [request.prompt, *request.rephrase_prompts, f"{request.subject} is"]
    return tuple(dict.fromkeys(p.strip() for p in prompts if p.strip()))


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"fluency,semantic"`` (or a list) -> validated metric names, in METRICS order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise EditbenchError(f"--metrics: unknown {unknown}; expected a comma-separated subset "
                             f"of {list(METRICS)}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class QualitySettings:
    """Which quality metrics a run computes and how (all recorded in config.json)."""

    metrics: tuple[str, ...] = ()
    generation: FreeGenConfig = field(default_factory=FreeGenConfig)
    generation_prompts: str = "auto"  # data | template | auto (data if every request has them)
    max_generation_prompts: int | None = None  # None: all of a request's prompts (ROME: 10)
    corpus: str | None = None  # IDF corpus (.jsonl with "text", or one document per line)
    references: str = "data"  # data: EditRequest.reference_texts; corpus: passages naming the target
    reference_passages: int = 10  # with references="corpus": passages per target
    fluency_aggregate: str = "arith"
    semantic_model: str = OFFLINE_MODEL
    semantic_threshold: float = DEFAULT_THRESHOLD
    semantic_device: str | None = None  # None: the edited model's input device

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        if self.generation_prompts not in PROMPT_SOURCES:
            raise EditbenchError(f"generation_prompts: expected one of {list(PROMPT_SOURCES)}, "
                                 f"got {self.generation_prompts!r}")
        if self.references not in REFERENCE_SOURCES:
            raise EditbenchError(f"references: expected one of {list(REFERENCE_SOURCES)}, "
                                 f"got {self.references!r}")
        if self.references == "corpus" and not self.corpus:
            raise EditbenchError("--quality-references corpus needs a corpus: --quality-corpus FILE")
        if self.fluency_aggregate not in AGGREGATES:
            raise EditbenchError(f"fluency_aggregate: expected one of {list(AGGREGATES)}")
        if not -1.0 <= self.semantic_threshold <= 1.0:
            raise EditbenchError(f"semantic_threshold: expected a cosine in [-1, 1], got "
                                 f"{self.semantic_threshold}")
        if self.max_generation_prompts is not None and self.max_generation_prompts < 1:
            raise EditbenchError("max_generation_prompts: expected a positive integer or None")

    def check_libraries(self) -> None:
        """Stop before a model loads when a chosen metric's library is missing."""
        for name in self.metrics:
            if name in LIBRARIES:
                check(LIBRARIES[name], f"the {name} metric")

    @property
    def free_generation(self) -> bool:
        return any(m in self.metrics for m in FREE_GENERATION_METRICS)


class QualityScorer:
    """Free generations, fluency, consistency and semantic match for one run's requests."""

    def __init__(self, handle: ModelHandle, settings: QualitySettings, requests: Sequence[EditRequest]) -> None:
        self.handle = handle
        self.settings = settings
        self.timings: dict[str, float] = {}
        self.prompt_source = self._prompt_source(requests)
        self.idf: Idf | None = None
        self._index: ReferenceIndex | None = None
        self._encoder: SentenceEncoder | None = None
        if "consistency" in settings.metrics:
            with self.timed("idf"):
                self._prepare_consistency(requests)

    # -- preparation -------------------------------------------------------------------

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def _prompt_source(self, requests: Sequence[EditRequest]) -> str:
        if self.settings.generation_prompts != "auto":
            return self.settings.generation_prompts
        have = sum(1 for r in requests if r.generation_prompts)
        if have == len(requests):
            return "data"
        if have == 0:
            return "template"
        raise EditbenchError(
            f"{have} of {len(requests)} requests carry generation prompts: choose "
            "generation_prompts 'data' (score only those) or 'template' (the same template "
            "for all), so one run never mixes the two"
        )

    def _prepare_consistency(self, requests: Sequence[EditRequest]) -> None:
        s = self.settings
        if s.references == "corpus":
            self._index = ReferenceIndex(corpus_documents(s.corpus), k=s.reference_passages)
        if s.corpus:
            self.idf = corpus_idf(s.corpus)
        else:
            refs = [r.reference_texts for r in requests if r.reference_texts]
            if not refs:
                raise EditbenchError(
                    "consistency: no request carries reference texts and no corpus was given; "
                    "attach CounterFact's attribute snippets, or pass --quality-corpus FILE (and "
                    "--quality-references corpus for data without snippets)"
                )
            self.idf = references_idf(refs)

    def prompts_for(self, request: EditRequest) -> tuple[str, ...]:
        prompts = request.generation_prompts if self.prompt_source == "data" else template_prompts(request)
        limit = self.settings.max_generation_prompts
        return prompts[:limit] if limit else prompts

    def references_for(self, request: EditRequest) -> tuple[str, ...]:
        if self._index is not None:
            return self._index.lookup(request.target_new, request.subject)
        return request.reference_texts

    # -- scoring -----------------------------------------------------------------------

    def case_quality(self, requests: Sequence[EditRequest]) -> dict[str, dict[str, Any]]:
        """Per case: its free generations and their fluency and consistency.

        Each value holds ``generations`` ([{prompt, continuation}]), ``fluency``,
        ``consistency`` (None: not scored), ``references`` (how many texts), and the
        accumulator lists ``_fluency`` / ``_consistency`` (empty when not scored).
        """
        if not self.settings.free_generation:
            return {}
        jobs = [(r, i, p) for r in requests for i, p in enumerate(self.prompts_for(r))]
        with self.timed("free_generation"):
            texts = free_generate(self.handle, [p for _, _, p in jobs], self.settings.generation,
                                  keys=[f"{r.case_id}/{i}" for r, i, _ in jobs])
        per_case: dict[str, list[tuple[str, str]]] = {r.case_id: [] for r in requests}
        for (r, _, prompt), text in zip(jobs, texts, strict=True):
            per_case[r.case_id].append((prompt, text))
        out: dict[str, dict[str, Any]] = {}
        for r in requests:
            gens = per_case[r.case_id]
            scored = [scored_text(p, c) for p, c in gens]
            record: dict[str, Any] = {
                "generations": [{"prompt": p, "continuation": c} for p, c in gens],
            }
            if "fluency" in self.settings.metrics:
                with self.timed("fluency"):
                    value = fluency(scored, self.settings.fluency_aggregate)
                record["fluency"] = value
                record["_fluency"] = [] if value is None else [value]
            if "consistency" in self.settings.metrics:
                with self.timed("consistency"):
                    refs = self.references_for(r)
                    value = consistency(scored, refs, self.idf) if self.idf else None
                record.update(consistency=value, references=len(refs),
                              _consistency=[] if value is None else [value])
            out[r.case_id] = record
        return out

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            device = self.settings.semantic_device or str(self.handle.input_device)
            self._encoder = SentenceEncoder(self.settings.semantic_model, device=device)
        return self._encoder

    def semantic(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Similarity of each (answer, target) pair; see ``semantic.SEMANTIC_DEFINITION``."""
        if not self.encoder.loaded:
            with self.timed("semantic_load"):
                self.encoder.load()
        with self.timed("semantic"):
            return self.encoder.similarities(pairs)

    def is_match(self, similarity: float) -> bool:
        return similarity >= self.settings.semantic_threshold

    # -- what config.json records ------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"metrics": list(s.metrics)}
        if s.free_generation:
            out["free_generation"] = {
                **s.generation.describe(),
                "prompts": self.prompt_source,
                "prompts_definition": (
                    "the requests' own generation prompts (CounterFact generation_prompts)"
                    if self.prompt_source == "data" else TEMPLATE_DEFINITION),
                "max_prompts_per_request": s.max_generation_prompts,
                "timing": "once before the first edit (pre) and once after the last (post)",
            }
        if "fluency" in s.metrics:
            out["fluency"] = {"definition": FLUENCY_DEFINITION, "aggregate": s.fluency_aggregate,
                              "scale": "bits"}
        if "consistency" in s.metrics:
            out["consistency"] = {
                "definition": CONSISTENCY_DEFINITION,
                "idf": dict(self.idf.source) if self.idf else None,
                "references": s.references,
                "references_definition": (
                    "EditRequest.reference_texts (CounterFact attribute snippets for "
                    "(relation_id, target_new.id)); requests without them are not scored"
                    if s.references == "data" else
                    f"the first {s.reference_passages} corpus passages (corpus order) that "
                    "contain target_new as a whole phrase and not the subject; not ROME's "
                    "snippets"),
            }
        if "semantic" in s.metrics:
            out["semantic"] = {"definition": SEMANTIC_DEFINITION, **self.encoder.describe(),
                               "threshold": s.semantic_threshold}
        if "portability" in s.metrics:
            out["portability"] = {"definition": PORTABILITY_DEFINITION}
        return out

