"""Finished run directories as the tables and plots see them: each run's protocols, its
comparability key per protocol, its metrics as plain numbers, and the labels of its
editor variant, model and dataset.

Two runs share a column only when their comparability keys are equal:
``config["comparability"]`` (written by the runner: everything besides editor, model,
hparams and seed that changes a number) narrowed to the protocol. Metric names are read
from the runs (every number in ``metrics.json["results"][protocol]``, plus capability), so
a metric the evaluator adds later is a selectable column at once; how to show it (percent,
direction) comes from the metric registry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError
from editbench.evaluate.metrics import default_columns, min_cases
from editbench.files import json_digest
from editbench.run.rundir import RunDir


def default_metrics() -> tuple[str, ...]:
    """The default choice and order of columns (every metric a run reports is selectable)."""
    return (*default_columns(), "capability")


# A default column and the older definition shown where no run reports it (runs written
# before known-fact locality existed).
_FALLBACK = {"locality_known": "locality"}


def default_metrics_for(available: Sequence[str]) -> list[str]:
    """The default columns among ``available`` (all of them when none is a default)."""
    chosen = [m if m in available or _FALLBACK.get(m) not in available else _FALLBACK[m]
              for m in default_metrics()]
    return [m for m in chosen if m in available] or list(available)


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def protocols(self) -> list[str]:
        return [p for p, r in self.metrics["results"].items() if p != "capability" and r]


def expand(dirs: Sequence[str | Path]) -> list[Path]:
    """Run folders: each argument is a run or a sweep folder (its finished cells)."""
    from editbench.run.sweep import finished_cells

    out: list[Path] = []
    for d in dirs:
        cells = None if (Path(d) / "metrics.json").exists() else finished_cells(d)
        out.extend([Path(d)] if cells is None else cells)
    return out


def collect(dirs: Sequence[str | Path]) -> list[Run]:
    if not dirs:
        raise EditbenchError("no run directories given")
    runs = []
    for d in expand(dirs):
        config, metrics = RunDir(d).load()
        _check_run(Path(d), config, metrics)
        runs.append(Run(Path(d), config, metrics))
    if not runs:
        raise EditbenchError(f"no finished runs in {', '.join(map(str, dirs))}")
    return runs


class _MissingSetting(Exception):
    """An older run's config.json lacks a setting its comparability key is rebuilt from."""


def _setting(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _MissingSetting(dotted)
        value = value[part]
    return value


def _check_run(path: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """One line naming the run, file and key when a run folder is not a finished run."""
    results = metrics.get("results")
    if not isinstance(results, dict):
        raise EditbenchError(f"{path}: metrics.json: key 'results': expected an object of "
                             f"protocol -> metrics, got {type(results).__name__}")
    for protocol, values in results.items():
        if values is not None and not isinstance(values, dict):
            raise EditbenchError(f"{path}: metrics.json: key 'results.{protocol}': expected an "
                                 f"object of metric -> number, got {type(values).__name__}")
    # The key is what tables need: building it now names what an older run lacks.
    for protocol in results:
        try:
            comparability_key(config, protocol)
        except _MissingSetting as missing:
            raise EditbenchError(
                f"{path}: config.json: no 'comparability' and key '{missing}' is missing: "
                "expected the config.json of an editbench run") from None


def comparability_key(config: dict[str, Any], protocol: str) -> dict[str, Any]:
    """What must be equal for two runs' ``protocol`` numbers to share a column."""
    comp = config.get("comparability")
    if isinstance(comp, dict):
        key = dict(comp)
        definitions = key.get("protocol_definitions") or {}
        key["protocol_definitions"] = {protocol: definitions.get(protocol)}
        return {"protocol": protocol, **key}
    # Runs written before config.json held a comparability dict.
    locality = _setting(config, "protocol.locality_definition")
    evaluation = _setting(config, "protocol.evaluation")
    key = {
        "protocol": protocol,
        "dataset": _setting(config, "dataset.name"),
        "dataset_sha256": _setting(config, "dataset.sha256")[:12],
        "edit_target": _setting(config, "dataset.target"),
        "num_edits": _setting(config, "dataset.num_edits"),
        "locality": locality,
        "evaluation": evaluation.split(",")[0],
    }
    if protocol == "generation":
        key["max_new_tokens"] = _setting(config, "protocol.max_new_tokens")
    if config.get("capability"):
        limit = (_setting(config, "capability.settings") or {}).get("limit")
        key["capability"] = (f"{_setting(config, 'capability.suite')} "
                             f"({_setting(config, 'capability.suite_hash')[:12]}"
                             + (f", limit {limit}" if limit is not None else "") + ")")
    return key


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def few_cases(results: dict[str, Any], protocol: str) -> set[str]:
    """The metrics of a result whose value rests on fewer requests than the metric asks for
    (``locality_known`` on data the model barely knows): tables mark them, plots hollow them."""
    counts = (results.get(protocol) or {}).get("n") or {}
    return {name for name, count in counts.items()
            if isinstance(count, int) and (least := min_cases(name)) is not None and count < least}


def point_metrics(results: dict[str, Any], protocol: str) -> dict[str, float]:
    """Every number a result holds for ``protocol`` (``n`` is the count dict), and the
    capability scores (``capability`` = post-edit, ``capability_pre``, ``capability_delta``)."""
    out: dict[str, float] = {}
    for name, value in (results.get(protocol) or {}).items():
        if name == "n":
            continue
        if _number(value):
            out[name] = value
        elif isinstance(value, dict):  # e.g. a metric broken down by kind
            out.update({f"{name}.{k}": v for k, v in value.items() if _number(v)})
    cap = results.get("capability")
    if isinstance(cap, dict):
        for name, (part, _) in CAPABILITY_SCORES.items():
            if _number(cap.get(part)):
                out[name] = cap[part]
    return out


# The names point_metrics gives the capability suite's scores (metrics.json
# results.capability): not case metrics, so not in the metric registry.
CAPABILITY_SCORES = {
    "capability": ("post", "the capability suite's score after editing"),
    "capability_pre": ("pre", "the capability suite's score of the unedited model"),
    "capability_delta": ("delta", "capability after editing minus before"),
}


def settings_digest(obj: Any) -> str:
    """A short digest that names a column, row or cell."""
    return json_digest(obj, 8, default=str)


def user_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the user chose besides the defaults for this editor and model (seed aside)."""
    spec = config.get("spec") or {}
    out = {k: v for k, v in sorted((spec.get("overrides") or {}).items()) if k != "seed"}
    if spec.get("hparams_file"):
        out["hparams"] = Path(spec["hparams_file"]).name
    if spec.get("edits_per_step"):
        out["edits/step"] = spec["edits_per_step"]
    return out


def hparams_id(config: dict[str, Any]) -> str:
    hp = {k: v for k, v in (config.get("hparams") or {}).items() if k != "seed"}
    return settings_digest([hp, config.get("protocol", {}).get("edits_per_step")])


def model_label(config: dict[str, Any]) -> str:
    return Path(config["model"]["name"]).name


def dataset_label(key: dict[str, Any]) -> str:
    name = str(key.get("dataset", "?"))
    return Path(name).stem if "/" in name or name.endswith((".json", ".jsonl")) else name


def editor_variants(runs: Iterable[Run]) -> dict[str, list[dict[str, Any]]]:
    """Editor -> the distinct settings the user chose for its runs (labels show the
    difference only where an editor has several)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        settings = user_settings(run.config)
        if settings not in out.setdefault(run.config["editor"], []):
            out[run.config["editor"]].append(settings)
    return out


def variant_label(variant: dict[str, Any], all_variants: list[dict[str, Any]]) -> str:
    if len(all_variants) < 2:
        return ""
    keys = sorted({k for v in all_variants for k in v})
    differ = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in all_variants}) > 1]
    parts = [f"{k}={json.dumps(variant[k]) if not isinstance(variant[k], str) else variant[k]}"
             for k in differ if k in variant]
    return f" ({', '.join(parts) or 'defaults'})"

