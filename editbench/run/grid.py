"""Grids: one YAML file -> the cells of a sweep, validated before any model loads.

A grid's keys are :class:`~editbench.run.RunSpec` fields (so a flag added to ``editbench
run`` is a grid key at once) plus ``description``, ``set`` (per-editor ``--set``
overrides), ``exclude`` and ``resources`` (what a Ray task asks for). A value that has the
field's type is the same for every cell; a list of such values is an axis, and the cells
are the product of the axes. Everything is validated, names included, before any model
loads.
"""

from __future__ import annotations

import itertools
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from editbench.config import ConfigError, check_value, refuse_absolute_paths
from editbench.data.known import resolve_known
from editbench.errors import EditbenchError, did_you_mean
from editbench.files import json_digest
from editbench.run.spec import RunSpec

GRID_DIR = Path(__file__).resolve().parent / "grids"
META_KEYS = ("description", "set", "exclude", "resources")
# Chosen by the sweep for every cell, never by the grid.
SWEEP_KEYS = frozenset({"output", "resume", "overwrite"})
# Where things are on this machine: `editbench sweep` flags, not grid keys (a grid describes
# the experiment and must run unchanged on a laptop and on a cluster).
MACHINE_KEYS = frozenset({"device", "data_dir", "capability_data_dir"})
RESOURCE_KEYS = {"num_cpus": float, "num_gpus": float, "memory": int}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its folder name and the RunSpec fields the grid gives it."""

    name: str
    values: dict[str, Any]

    def spec(self, sweep_dir: Path, machine: dict[str, Any] | None = None, **flags: Any) -> RunSpec:
        return RunSpec(**self.values, **(machine or {}), output=str(sweep_dir / self.name), **flags)


@dataclass
class Grid:
    source: str
    text: str
    description: str
    cells: list[Cell]
    resources: dict[str, Any] = field(default_factory=dict)


def grid_names() -> list[str]:
    """The grids shipped inside the package (usable by name from an installed wheel)."""
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def grid_descriptions() -> dict[str, str]:
    """Shipped grid name -> the first line of its description (``editbench list grids``)."""
    out = {}
    for name in grid_names():
        raw = yaml.safe_load((GRID_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        out[name] = str(raw.get("description") or "").strip().split("\n")[0]
    return out


def resolve_grid(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = GRID_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    text = os.fspath(name_or_path)
    raise EditbenchError(
        f"grid {text!r}: no such file and no shipped grid of that name"
        f"{did_you_mean(text, grid_names())}; shipped grids: {', '.join(grid_names())}"
    )


def load_grid(name_or_path: str | os.PathLike[str]) -> Grid:
    """Parse, expand and validate a grid; every error names the file and the key."""
    path = resolve_grid(name_or_path)
    where = str(path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EditbenchError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise EditbenchError(f"{where}: expected a mapping of RunSpec fields at the top level")
    hints = typing.get_type_hints(RunSpec)
    axes: dict[str, list[Any]] = {}
    refuse_absolute_paths({k: v for k, v in raw.items() if k not in META_KEYS}, where, "a grid")
    for key, value in raw.items():
        if key in META_KEYS:
            continue
        _check_key(key, hints, where)
        axes[key] = _axis(value, hints[key], f"{where}: key {key!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise EditbenchError(f"{where}: key 'description': expected a string")
    per_editor = _per_editor_overrides(raw.get("set"), axes, where)
    excludes = _excludes(raw.get("exclude"), hints, where)
    resources = _resources(raw.get("resources"), where)

    keys = list(axes)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]
    expanded = []
    for combo in combos:
        editor = combo.get("editor", RunSpec.editor)
        variants = per_editor.get(editor, [{}])
        for extra in variants:
            values = dict(combo)
            if extra:
                values["overrides"] = {**values.get("overrides", {}), **extra}
            if not any(_matches(values, rule) for rule in excludes):
                expanded.append(values)
    if not expanded:
        raise EditbenchError(f"{where}: the grid expands to no cells (check 'exclude')")
    cells = _name_cells(expanded, where)
    _validate_cells(cells, where)
    return Grid(source=where, text=text, description=description, cells=cells, resources=resources)


def _check_key(key: Any, hints: dict[str, Any], where: str) -> None:
    if key in SWEEP_KEYS:
        raise EditbenchError(f"{where}: key {key!r} is chosen by the sweep for each cell; remove it")
    if key in MACHINE_KEYS:
        flag = "--" + str(key).replace("_", "-")
        raise EditbenchError(
            f"{where}: key {key!r} says where things are on one machine; pass `editbench sweep {flag}`"
        )
    if key not in hints:
        known = [*META_KEYS, *(k for k in hints if k not in SWEEP_KEYS | MACHINE_KEYS)]
        raise EditbenchError(
            f"{where}: unknown key {key!r}{did_you_mean(str(key), known)}; expected RunSpec fields "
            f"({', '.join(known)})"
        )


def _axis(value: Any, tp: Any, where: str) -> list[Any]:
    """A value of the field's type is one setting; a list of such values is an axis."""
    try:
        return [check_value(value, tp, where)]
    except ConfigError:
        if not isinstance(value, list):
            raise
    if not value:
        raise EditbenchError(f"{where}: an empty list gives no cells")
    return [check_value(v, tp, f"{where}[{i}]") for i, v in enumerate(value)]


def _section(raw: Any, where: str, name: str, expected: str, known: Sequence[str], what: str) -> dict:
    """A top-level mapping of the grid (absent: empty) whose keys must be ``known``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EditbenchError(f"{where}: key {name!r}: expected {expected}")
    for key in raw:
        if key not in known:
            raise EditbenchError(
                f"{where}: key '{name}.{key}': not {what}{did_you_mean(str(key), known)}; "
                f"expected some of {', '.join(known)}"
            )
    return raw


def _per_editor_overrides(raw: Any, axes: dict[str, list[Any]], where: str) -> dict[str, list[dict]]:
    """``set: {editor: {key: value}}`` (or a list of such mappings: an axis for that editor)."""
    editors = axes.get("editor", [RunSpec.editor])
    section = _section(raw, where, "set", "a mapping of editor name to --set overrides", editors,
                       "one of the grid's editors")
    return {editor: _axis(value, dict[str, Any], f"{where}: key 'set.{editor}'")
            for editor, value in section.items()}


def _excludes(raw: Any, hints: dict[str, Any], where: str) -> list[dict[str, list[Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(rule, dict) and rule for rule in raw):
        raise EditbenchError(f"{where}: key 'exclude': expected a list of mappings of RunSpec fields")
    rules = []
    for i, rule in enumerate(raw):
        checked = {}
        for key, value in rule.items():
            _check_key(key, hints, f"{where}: key 'exclude[{i}]'")
            checked[key] = _axis(value, hints[key], f"{where}: key 'exclude[{i}].{key}'")
        rules.append(checked)
    return rules


def _matches(values: dict[str, Any], rule: dict[str, list[Any]]) -> bool:
    defaults = vars(RunSpec())
    return all(values.get(key, defaults.get(key)) in allowed for key, allowed in rule.items())


def _resources(raw: Any, where: str) -> dict[str, Any]:
    section = _section(raw, where, "resources", "a mapping like {num_gpus: 1}", list(RESOURCE_KEYS),
                       "a resource a Ray task can ask for")
    out = {}
    for key, value in section.items():
        checked = check_value(value, RESOURCE_KEYS[key], f"{where}: key 'resources.{key}'")
        if checked < 0:
            raise EditbenchError(f"{where}: key 'resources.{key}': expected a number >= 0, got {value!r}")
        out[key] = checked
    return out


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(value)).strip("_") or "_"


def _digest(obj: Any) -> str:
    return json_digest(obj, 8, default=list)


def _name_cells(expanded: list[dict[str, Any]], where: str) -> list[Cell]:
    """Readable, stable folder names: ``editor-model-dataset-T<edits>-s<seed>``, and where
    cells share that, what else tells them apart (so a re-run finds the same folders)."""
    defaults = vars(RunSpec())
    full = [{**defaults, **values} for values in expanded]
    bases = []
    for v in full:
        edits = "all" if v["num_edits"] is None else v["num_edits"]
        parts = [v["editor"], Path(v["model"]).name, Path(v["dataset"]).stem, f"T{edits}", f"s{v['seed']}"]
        bases.append("-".join(_slug(p) for p in parts))
    names = list(bases)
    for base in {b for b in bases if bases.count(b) > 1}:
        group = [i for i, b in enumerate(bases) if b == base]
        differ = [k for k in defaults if len({_digest(full[i][k]) for i in group}) > 1]
        for i in group:
            rest = {k: full[i][k] for k in differ}
            simple = all(isinstance(x, str | int | float | bool) for x in rest.values())
            text = "-".join(f"{k}={x}" for k, x in rest.items())
            names[i] = f"{base}-{_slug(text) if simple and len(text) <= 40 else _digest(rest)}"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EditbenchError(f"{where}: the grid lists the same cell more than once ({duplicates[0]})")
    return [Cell(name=n, values=v) for n, v in zip(names, expanded, strict=True)]


def _validate_cells(cells: Sequence[Cell], where: str) -> None:
    """Names and hparams of every cell, without loading a model or a dataset file."""
    from editbench.data import dataset_names
    from editbench.evaluate import PROTOCOLS
    from editbench.models import get_preset
    from editbench.registry import EDITORS
    from editbench.run.plan import resolve_hparams

    datasets = dataset_names()
    seen: set[Any] = set()

    def once(key: Any, check: Callable[[], None], what: str) -> None:
        if key in seen:
            return
        seen.add(key)
        try:
            check()
        except EditbenchError as exc:
            raise EditbenchError(f"{where}: {what}: {exc}") from exc

    for cell in cells:
        spec = RunSpec(**cell.values)
        once(("editor", spec.editor), lambda s=spec: EDITORS.get(s.editor), "key 'editor'")
        once(("model", spec.model), lambda s=spec: get_preset(s.model), "key 'model'")

        def check_dataset(s: RunSpec = spec) -> None:
            if resolve_known(s.dataset) is not None:  # a built known-fact slice (else: why not)
                return
            if s.dataset not in datasets and not Path(s.dataset).is_file():
                raise EditbenchError(
                    f"unknown dataset {s.dataset!r}{did_you_mean(s.dataset, datasets)} and no such "
                    f"file (known: {', '.join(datasets)})"
                )

        once(("dataset", spec.dataset), check_dataset, "key 'dataset'")
        for p in spec.protocols:
            if p not in PROTOCOLS:
                raise EditbenchError(
                    f"{where}: key 'protocols': unknown protocol {p!r}{did_you_mean(p, PROTOCOLS)}; "
                    f"expected some of {', '.join(PROTOCOLS)}"
                )
        if spec.capability is not None:
            from editbench.capability import load_suite

            once(("capability", spec.capability), lambda s=spec: load_suite(s.capability),
                 "key 'capability'")

        once(("hparams", spec.editor, spec.model, spec.hparams_file, _digest(spec.overrides)),
             lambda s=spec: resolve_hparams(s), f"cell {cell.name} (editor {spec.editor!r} x model {spec.model!r})")


# --- running -------------------------------------------------------------------------
