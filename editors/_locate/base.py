"""The editor skeleton shared by ROME, MEMIT and AlphaEdit: modules, templates, statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from editbench.api import BaseEditor, EditbenchError, EditRequest, EditStats
from editors._locate.config import LocateConfig
from editors._locate.keys import context_templates, read_at
from editors._locate.solve import weight_out_in
from editors._locate.stats import resolve_corpus, second_moments, stats_companions
from editors._locate.targets import describe, optimize_targets, template_items


class LocateEditor(BaseEditor):
    """Edits the MLP output matrices (``mlp_down``) of ``config.layers``."""

    config_class = LocateConfig
    config: LocateConfig
    needs_stats: bool = True

    def __init__(self, handle, config: LocateConfig) -> None:
        super().__init__(handle, config)
        n = handle.num_layers
        bad = [layer for layer in config.layers if not 0 <= layer < n]
        if bad:
            raise EditbenchError(
                f"{self.name}: layers {bad} out of range for {handle.preset.name!r} ({n} layers)"
            )
        self.layout = handle.preset.weight_layout
        self.module_names = {layer: handle.module_name("mlp_down", layer) for layer in config.layers}
        self.modules = {layer: handle.model.get_submodule(m) for layer, m in self.module_names.items()}
        self.templates = context_templates(
            handle, config.context_template_lengths, config.context_templates_per_length, config.seed
        )
        # Statistics of the unedited model: computed (or loaded) now, before any edit.
        self.stats: dict[int, torch.Tensor] = {}
        self.stats_info: dict[str, Any] = {}
        if self.needs_stats:
            corpus = resolve_corpus(config.stats_corpus, config.seed)
            mats, self.stats_info = second_moments(
                handle, list(self.module_names.values()), corpus, config.stats_tokens,
                config.stats_seq_len, config.stats_batch_size, config.stats_dtype,
                companions=stats_companions(handle, config),
            )
            self.stats = {layer: mats[m] for layer, m in self.module_names.items()}

    def weight(self, layer: int) -> torch.Tensor:
        return weight_out_in(self.modules[layer], self.layout)

    def edited_parameters(self) -> list[str]:
        return [f"{m}.weight" for m in self.module_names.values()]

    def mean_keys(self, requests: Sequence[EditRequest], extra: dict[str, str] | None = None,
                  layer: int | None = None) -> dict[str, torch.Tensor]:
        """Keys at ``layer`` averaged over the context templates ([n, in]) and, for each
        ``extra`` module, its input/output at the bare prompt ([n, d]); one pass."""
        n, t = len(requests), len(self.templates)
        items = template_items(self.handle.tokenizer, requests, self.templates, self.config.fact_token)
        specs: dict[str, str] = dict(extra or {})
        if layer is not None:
            specs[self.module_names[layer]] = "input"
        got = read_at(self.handle, items, specs)  # type: ignore[arg-type]
        out = {}
        for name, t_ in got.items():
            view = t_.view(n, t, -1)
            out[name] = view.mean(1) if layer is not None and name == self.module_names[layer] else view[:, 0]
        return out

    def targets(self, requests: Sequence[EditRequest], insert_module: str):
        return optimize_targets(self.handle, requests, self.templates, insert_module, self.config)

    @staticmethod
    def stats_out(requests: Sequence[EditRequest], info: dict[str, Any]) -> EditStats:
        return EditStats(num_requests=len(requests), info=info)


def target_info(targets) -> dict[str, Any]:
    return describe(targets)
