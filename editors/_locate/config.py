"""Hyperparameters shared by ROME, MEMIT and AlphaEdit (names follow the original configs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from editbench.api import EditorConfig

FactToken = Literal["subject_last", "subject_first", "last"]


@dataclass
class LocateConfig(EditorConfig):
    """Fields every locate-then-edit editor reads.

    ``stats_corpus``: ``self`` (text sampled from the model itself: the offline fallback),
    ``hf:<name>[:<config>[:<split>]]`` (a Hugging Face dataset's ``text`` column), or the
    path of a local ``.jsonl`` (``{"text": ...}`` per line) / text file: relative to the
    data directory (``--data-dir`` / ``$EDITBENCH_DATA_DIR``), else to the working directory;
    absolute paths only from the command line (``--set``).
    """

    layers: list[int] = field(default_factory=lambda: [5])
    fact_token: FactToken = "subject_last"
    # Context templates: for every length, that many prefixes sampled from the model
    # (seeded), each followed by ". {prompt}"; the bare prompt is always the first one.
    context_template_lengths: list[int] = field(default_factory=lambda: [10])
    context_templates_per_length: int = 5
    # Target-vector optimisation.
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_loss_threshold: float = 5e-2
    v_batch_size: int = 16
    # What follows the target in the optimised continuation: "eos" or "period" teach the
    # model to stop after the answer (the generation protocol needs a stop); "none" is the
    # original papers' objective.
    target_suffix: Literal["eos", "period", "none"] = "eos"
    # Layer statistics.
    stats_corpus: str = field(default="self", metadata={"data_path": True})
    stats_tokens: int = 100_000
    stats_seq_len: int = 256
    stats_batch_size: int = 16
    stats_dtype: Literal["float32", "float64"] = "float32"
    # Which layers a statistics pass covers: the edited ones, every layer's mlp_down input
    # (so ROME, MEMIT and AlphaEdit at any layers find theirs in the cache after one pass),
    # or "auto": every layer when all matrices together take at most stats_all_layers_mb.
    stats_layers: Literal["edited", "all", "auto"] = "auto"
    stats_all_layers_mb: int = 2048

    def tuning_location(self, layer: int, template: str) -> dict[str, Any] | None:
        """The edited layers: a window ending at ``layer``, as wide as configured (one layer
        for ROME)."""
        width = len(self.layers)
        return {"layers": list(range(max(0, layer - width + 1), layer + 1))}

    def validate(self) -> None:
        super().validate()
        if not self.layers:
            raise ValueError("layers: expected at least one layer index")
        if sorted(set(self.layers)) != list(self.layers):
            raise ValueError(f"layers: expected strictly ascending layer indices, got {self.layers}")
        for key in ("v_num_grad_steps", "v_batch_size", "stats_tokens", "stats_seq_len",
                    "stats_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        if self.stats_all_layers_mb < 0:
            raise ValueError(f"stats_all_layers_mb: expected a number of MB >= 0 (0: only the edited "
                             f"layers), got {self.stats_all_layers_mb}")
        if self.context_templates_per_length < 0 or any(n < 1 for n in self.context_template_lengths):
            raise ValueError("context_template_lengths / context_templates_per_length: expected positive lengths and a count >= 0")
        if not self.v_lr > 0:
            raise ValueError(f"v_lr: expected a positive number, got {self.v_lr}")
        if not self.clamp_norm_factor > 0:
            raise ValueError(f"clamp_norm_factor: expected a positive number, got {self.clamp_norm_factor}")
