"""Markdown tables from run directories, one protocol per table.

Runs are put in the same table only when their numbers are comparable: same protocol
and protocol settings, same dataset file and edit target, same number of edits, same
locality definition and evaluation timing, and (when capability was scored) the same
capability suite content and settings. Otherwise they go into separate tables whose
headings say what differs; ``strict=True`` refuses instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from editbench.errors import EditbenchError
from editbench.results import RunDir

METRIC_COLUMNS = ("reliability", "generalization", "locality")


def comparability_key(config: dict[str, Any], protocol: str) -> dict[str, Any]:
    p = config["protocol"]
    d = config["dataset"]
    key = {
        "protocol": protocol,
        "dataset": d["name"],
        "dataset_sha256": d["sha256"][:12],
        "edit_target": d["target"],
        "num_edits": d["num_edits"],
        "locality": p["locality_definition"],
        "evaluation": p["evaluation"].split(",")[0],
    }
    if protocol == "generation":
        key["max_new_tokens"] = p["max_new_tokens"]
    # The capability column is only comparable between runs scored on the same suite
    # (same task files, by content hash) with the same settings.
    cap = config.get("capability")
    if cap:
        limit = (cap.get("settings") or {}).get("limit")
        key["capability"] = (f"{cap['suite']} ({cap['suite_hash'][:12]}"
                             + (f", limit {limit}" if limit is not None else "") + ")")
    return key


def collect(run_dirs: Sequence[str | Path]) -> list[tuple[dict[str, Any], dict[str, Any], Path]]:
    runs = []
    for d in run_dirs:
        config, metrics = RunDir(d).load()
        runs.append((config, metrics, Path(d)))
    if not runs:
        raise EditbenchError("no run directories given")
    return runs


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def tables(run_dirs: Sequence[str | Path], strict: bool = False) -> str:
    """Markdown: one table per (protocol, comparability key)."""
    groups: dict[str, tuple[dict[str, Any], list[list[str]]]] = {}
    for config, metrics, path in collect(run_dirs):
        for protocol, result in metrics["results"].items():
            if protocol == "capability" or result is None:
                continue
            key = comparability_key(config, protocol)
            row = [
                config["editor"],
                config["model"]["name"],
                *(_pct(result.get(m)) for m in METRIC_COLUMNS),
                _pct(_capability_post(metrics)),
                f"{metrics['edit_time_per_request_s']:.3f}",
                str(metrics["edits_per_step"]),
                path.name,
            ]
            groups.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(row)
    if strict:
        protocols = [k["protocol"] for k, _ in groups.values()]
        if len(protocols) != len(set(protocols)):
            raise EditbenchError(
                "runs are not comparable (different dataset, target, edit count, locality "
                "definition, capability suite or protocol settings); drop --strict to print "
                "separate tables"
            )
    headers = ["editor", "model", "reliability", "generalization", "locality",
               "capability", "s/edit", "edits/step", "run"]
    out = []
    for key, rows in groups.values():
        title = (
            f"### {key['protocol']} | {key['dataset']} ({key['edit_target']}, "
            f"sha256 {key['dataset_sha256']}) | {key['num_edits']} edits"
            + (f" | max {key['max_new_tokens']} new tokens" if "max_new_tokens" in key else "")
        )
        note = f"Locality: {key['locality']}. Evaluated {key['evaluation']}."
        if "capability" in key:
            note += f" Capability suite: {key['capability']}."
        out.append(f"{title}\n\n{note}\n\n{tabulate(rows, headers, tablefmt='github', disable_numparse=True)}\n")
    return "\n".join(out)


def _capability_post(metrics: dict[str, Any]) -> float | None:
    cap = metrics["results"].get("capability")
    return cap.get("post") if isinstance(cap, dict) else None
