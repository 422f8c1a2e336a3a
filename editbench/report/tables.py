"""Leaderboard tables: one per protocol, in the layout of the LocFT-BF paper's Table 3.

Rows are editors, column groups are dataset x model, cells are metrics. Two runs share a
column only when their comparability keys are equal (see ``runs.py``). Runs of one cell
(same editor, model, hparams and key) that differ only in seed are aggregated as mean +-
sample std over n runs; the best mean of each column is marked in the metric's own
direction (the metric registry says which).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from editbench.errors import EditbenchError, did_you_mean
from editbench.evaluate.metrics import higher_is_better, is_rate
from editbench.report.runs import (
    Run,
    comparability_key,
    dataset_label,
    default_metrics,
    default_metrics_for,
    editor_variants,
    few_cases,
    hparams_id,
    model_label,
    point_metrics,
    settings_digest,
    user_settings,
    variant_label,
)

# Key fields that say which data a column is about; columns of one table may differ in
# these (and in the model) under --strict, in nothing else.
_DATASET_FIELDS = ("dataset", "dataset_sha256", "edit_target")


@dataclass
class Stat:
    values: list[float]
    runs: list[str]
    best: bool = False
    few: bool = False  # some run's value rests on fewer cases than the metric asks for

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


@dataclass
class Column:
    id: str
    dataset: str
    model: str
    key: dict[str, Any]
    label: str = ""


@dataclass
class Row:
    id: str
    editor: str
    label: str


@dataclass
class Table:
    protocol: str
    columns: list[Column]
    rows: list[Row]
    metrics: list[str]  # shown, in order
    available: list[str]  # every metric the table's runs report
    cells: dict[tuple[str, str], dict[str, Stat]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # key fields equal in all columns
    percent: dict[str, bool] = field(default_factory=dict)

    def stat(self, row: Row, col: Column, metric: str) -> Stat | None:
        return self.cells.get((row.id, col.id), {}).get(metric)


def build(runs: Sequence[Run], metrics: Sequence[str] | str | None = None,
          strict: bool = False) -> list[Table]:
    """The tables, one per protocol; ``metrics``: names, ``"all"`` or None (the defaults)."""
    entries: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        for protocol in run.protocols:
            entries.setdefault(protocol, []).append((run, comparability_key(run.config, protocol)))
    tables = [_table(protocol, items) for protocol, items in entries.items()]
    _select_metrics(tables, metrics)
    if strict:
        for t in tables:
            _check_strict(t)
    return tables



def _table(protocol: str, items: list[tuple[Run, dict[str, Any]]]) -> Table:
    table = Table(protocol, [], [], [], [])
    columns: dict[str, Column] = {}
    placed = []  # (run, row base, column id)
    for run, key in items:
        cid = settings_digest([key, run.config["model"].get("identity") or run.config["model"]["name"]])
        columns.setdefault(cid, Column(cid, dataset_label(key), model_label(run.config), key))
        placed.append((run, (run.config["editor"], settings_digest(user_settings(run.config))), cid))
    # A cell whose runs disagree in resolved hparams (e.g. a YAML edited between runs)
    # splits its row rather than averaging different methods.
    hparams: dict[tuple[Any, str], set[str]] = {}
    for run, base, cid in placed:
        hparams.setdefault((base, cid), set()).add(hparams_id(run.config))
    split = {base for (base, _), ids in hparams.items() if len(ids) > 1}

    variants = editor_variants(run for run, _ in items)
    rows: dict[str, Row] = {}
    for run, base, cid in placed:
        editor = base[0]
        hp = hparams_id(run.config) if base in split else ""
        label = (editor + variant_label(user_settings(run.config), variants[editor])
                 + (f" [hparams {hp}]" if hp else ""))
        rid = settings_digest([*base, hp])
        rows.setdefault(rid, Row(rid, editor, label))
        cell = table.cells.setdefault((rid, cid), {})
        few = few_cases(run.metrics["results"], protocol)
        for name, value in point_metrics(run.metrics["results"], protocol).items():
            stat = cell.setdefault(name, Stat([], []))
            stat.values.append(value)
            stat.runs.append(str(run.path))
            stat.few = stat.few or name in few
    table.columns = list(columns.values())
    _label_columns(table.columns)
    table.rows = sorted(rows.values(), key=lambda r: (r.editor, r.label))

    names: list[str] = []
    for cell in table.cells.values():
        names.extend(n for n in cell if n not in names)
    defaults = default_metrics()
    table.available = [*(m for m in defaults if m in names), *(n for n in names if n not in defaults)]
    for name in table.available:
        values = [v for cell in table.cells.values() if name in cell for v in cell[name].values]
        table.percent[name] = in_percent(name, values)
    keys = [c.key for c in table.columns]
    table.shared = {k: v for k, v in keys[0].items() if all(other.get(k, object()) == v for other in keys)}
    for name, stats in _by_metric(table):
        means = [s.mean for s in stats]
        if len(means) > 1:
            best = max(means) if higher_is_better(name) else min(means)
            for s in stats:
                s.best = s.mean == best
    return table


def in_percent(name: str, values: Iterable[float]) -> bool:
    """Whether a metric is printed in percent: the registry's rates are; a name it does not
    know (e.g. the capability score) is when all its values lie in [-1, 1]."""
    rate = is_rate(name)
    return all(-1.0 <= v <= 1.0 for v in values) if rate is None else rate


def _by_metric(table: Table) -> Iterable[tuple[str, list[Stat]]]:
    """The stats of one metric in one column, across rows (the unit for 'best')."""
    for col in table.columns:
        for name in table.available:
            stats = [s for r in table.rows if (s := table.stat(r, col, name)) is not None]
            if stats:
                yield name, stats



def _label_columns(columns: list[Column]) -> None:
    """'dataset / model', and what else differs where two columns would read the same."""
    for col in columns:
        col.label = f"{col.dataset} / {col.model}"
    for label in {c.label for c in columns}:
        same = [c for c in columns if c.label == label]
        if len(same) < 2:
            continue
        differ = _differing(same)
        for c in same:
            c.label += " (" + ", ".join(f"{k}={_short(c.key.get(k))}" for k in differ) + ")"


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _select_metrics(tables: list[Table], metrics: Sequence[str] | str | None) -> None:
    available: list[str] = []
    for t in tables:
        available.extend(m for m in t.available if m not in available)
    if metrics is None:  # each table its own default columns
        for t in tables:
            t.metrics = default_metrics_for(t.available)
        return
    if metrics == "all":
        chosen = available
    else:
        chosen = list(metrics)
        for m in chosen:
            if m not in available:
                raise EditbenchError(
                    f"--columns: no run reports metric {m!r}{did_you_mean(m, available)}; "
                    f"available: {', '.join(available)}"
                )
    for t in tables:
        t.metrics = chosen


def _differing(columns: Sequence[Column]) -> list[str]:
    fields = sorted({k for c in columns for k in c.key})
    return [k for k in fields if len({json.dumps(c.key.get(k), sort_keys=True) for c in columns}) > 1]


def _check_strict(table: Table) -> None:
    """A table's columns may differ in their data and model only; two columns of the same
    data and model (a split) fail too."""
    by_data: dict[str, list[Column]] = {}
    for col in table.columns:
        by_data.setdefault(f"{col.dataset} / {col.model}", []).append(col)
    differ = [k for k in _differing(table.columns) if k not in _DATASET_FIELDS]
    split = [label for label, cols in by_data.items() if len(cols) > 1]
    for label in split:
        differ.extend(k for k in _differing(by_data[label]) if k not in differ)
    if differ:
        raise EditbenchError(
            f"runs are not comparable: {table.protocol} columns differ in {', '.join(differ)}"
            + (f" (split: {', '.join(split)})" if split else "")
            + "; drop --strict to show them as separate columns"
        )

