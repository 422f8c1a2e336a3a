"""LocFT-BF: breadth-first localized fine-tuning ("Fine-tuning Done Right in Model Editing").

All requests of an edit step form one training set, trained for up to ``epochs`` epochs
of seeded-shuffled mini-batches, with only the chosen tensor (e.g. one layer's MLP
down-projection) trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from editbench.registry import register_editor
from editors._finetune import FinetuneConfig, FinetuneEditor


@dataclass
class LocFTBFConfig(FinetuneConfig):
    pipeline: Literal["depth_first", "breadth_first"] = "breadth_first"
    edits_per_step: int | None = None
    batch_size: int = 100
    epochs: int = 25


@register_editor("locft_bf")
class LocFTBFEditor(FinetuneEditor):
    config_class = LocFTBFConfig
