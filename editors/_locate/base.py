"""The editor skeleton shared by ROME, MEMIT and AlphaEdit: modules, templates, statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from editbench.api import BaseEditor, EditbenchError, EditRequest, EditStats
from editors._locate.config import LocateConfig
from editors._locate.keys import context_template_groups, read_at
from editors._locate.solve import weight_out_in
from editors._locate.stats import resolve_corpus, second_moments, stats_companions
from editors._locate.targets import describe, optimize_targets, template_items

if TYPE_CHECKING:
    from editbench.models import ModelHandle


class LocateEditor(BaseEditor):
    """Edits the MLP output matrices (``mlp_down``) of ``config.layers``."""

    config_class = LocateConfig
    config: LocateConfig
    needs_stats: bool = True
    # How a request's keys are averaged over its context templates (``average_keys``):
    # ROME's released code takes the plain mean; MEMIT / AlphaEdit choose by config.
    key_average: str = "uniform"

    def __init__(self, handle: ModelHandle, config: LocateConfig) -> None:
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
        self.template_groups = context_template_groups(
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

    @property
    def templates(self) -> list[str]:
        """Every context template, the bare prompt first."""
        return [t for group in self.template_groups for t in group]

    def template_keys(self, requests: Sequence[EditRequest], extra: dict[str, str] | None = None,
                      layer: int | None = None) -> dict[str, torch.Tensor]:
        """Keys at ``layer`` for every context template ([n, templates, in]) and, for each
        ``extra`` module, its input/output at the bare prompt ([n, d]); one pass."""
        n, t = len(requests), len(self.templates)
        items = template_items(self.handle.tokenizer, requests, self.templates, self.config.fact_token)
        specs: dict[str, str] = dict(extra or {})
        key = self.module_names[layer] if layer is not None else None
        if key is not None:
            specs[key] = "input"
        got = read_at(self.handle, items, specs)  # type: ignore[arg-type]
        return {name: t_.view(n, t, -1) if name == key else t_.view(n, t, -1)[:, 0]
                for name, t_ in got.items()}

    def average_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """[n, templates, in] -> [n, in]. ``uniform``: the mean over all templates (ROME's
        released code; the MEMIT paper's formula). ``grouped``: the mean of the groups'
        means (the bare prompt; each sampled length), as MEMIT's and AlphaEdit's released
        ``compute_ks``: with their five templates of one length the bare prompt weighs 1/2,
        not 1/6."""
        if self.key_average == "uniform":
            return keys.mean(1)
        sizes = [len(group) for group in self.template_groups]
        return torch.stack([part.mean(1) for part in keys.split(sizes, dim=1)], 1).mean(1)

    def mean_keys(self, requests: Sequence[EditRequest], extra: dict[str, str] | None = None,
                  layer: int | None = None) -> dict[str, torch.Tensor]:
        """``template_keys`` with the keys at ``layer`` averaged (``average_keys``): [n, in]."""
        got = self.template_keys(requests, extra, layer)
        if layer is not None:
            got[self.module_names[layer]] = self.average_keys(got[self.module_names[layer]])
        return got

    def targets(self, requests: Sequence[EditRequest], insert_module: str):
        return optimize_targets(self.handle, requests, self.templates, insert_module, self.config)

    @staticmethod
    def stats_out(requests: Sequence[EditRequest], info: dict[str, Any]) -> EditStats:
        return EditStats(num_requests=len(requests), info=info)


def target_info(targets) -> dict[str, Any]:
    return describe(targets)
