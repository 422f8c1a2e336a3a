"""FT-M: depth-first fine-tuning of one MLP output matrix with a target-only loss.

Each request in turn gets up to ``max_steps`` Adam steps (batch 1) until its loss is
below ``loss_threshold``; then the next one. The traditional editing pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from editbench.registry import register_editor
from editors._finetune import FinetuneConfig, FinetuneEditor


@dataclass
class FTMConfig(FinetuneConfig):
    pipeline: Literal["depth_first", "breadth_first"] = "depth_first"
    edits_per_step: int | None = 1
    batch_size: int = 1
    max_steps: int = 25


@register_editor("ft_m")
class FTMEditor(FinetuneEditor):
    config_class = FTMConfig
