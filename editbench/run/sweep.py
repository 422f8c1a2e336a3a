"""Sweeps: the cells of a grid (``grid.py``) run as ordinary runs under one folder.

Each cell is an ordinary run directory ``SWEEP_DIR/<cell>``; ``SWEEP_DIR/sweep.json``
records what happened to every cell. Cells run one after another (``local``) or as Ray
tasks; a finished cell is skipped, an interrupted one resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError
from editbench.extras import require
from editbench.files import atomic_write_json, atomic_write_text, dumps
from editbench.run.grid import MACHINE_KEYS, SWEEP_KEYS, Cell, Grid
from editbench.run.spec import RunSpec

STATE_FILE = "sweep.json"
# Spec fields a finished cell may differ in and still count as this grid's cell.
_NOT_SETTINGS = SWEEP_KEYS | MACHINE_KEYS | {"checkpoint_every"}


@dataclass
class Outcome:
    status: str  # "done" | "failed" | "skipped"
    error: str | None = None
    seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, EditbenchError) else f"{type(exc).__name__}: {text}"


def run_cell(spec: RunSpec) -> Outcome:
    """Run one cell; a failure is recorded in ``error.txt`` instead of stopping the sweep."""
    from editbench.run import run

    out = Path(spec.output)
    t0 = time.perf_counter()
    (out / "error.txt").unlink(missing_ok=True)
    try:
        run(spec)
    except Exception as exc:  # noqa: BLE001 - every cell failure is recorded, the sweep goes on
        message = _one_line(exc)
        out.mkdir(parents=True, exist_ok=True)
        detail = "" if isinstance(exc, EditbenchError) else "\n\n" + traceback.format_exc()
        atomic_write_text(out / "error.txt", message + "\n" + detail)
        return Outcome("failed", message, time.perf_counter() - t0)
    return Outcome("done", None, time.perf_counter() - t0)


def _ray_cell(spec: RunSpec, cwd: str) -> Outcome:
    # Relative grid paths (datasets, model folders) mean the driver's working directory;
    # on a cluster that folder is on the shared filesystem.
    os.chdir(cwd)
    return run_cell(spec)


def plan(cell: Cell, sweep_dir: Path, machine: dict[str, Any]) -> tuple[RunSpec | None, str | None]:
    """(spec to run, None), or (None, why it is skipped / why it cannot run)."""
    out = sweep_dir / cell.name
    if (out / "metrics.json").is_file():
        spec = cell.spec(sweep_dir, machine)
        differ = _differing_settings(spec, out)
        if differ:
            return None, (f"{out} holds a finished run with other settings ({', '.join(differ)}); "
                          "delete it or choose another --output")
        return None, None
    if (out / "checkpoint.pt").is_file():
        return cell.spec(sweep_dir, machine, resume=True), None
    return cell.spec(sweep_dir, machine, overwrite=True), None


def _differing_settings(spec: RunSpec, out: Path) -> list[str]:
    """The flags, and the hparams values, in which a finished cell differs from ``spec``: a
    YAML re-chosen since the cell ran changes no flag, and a table of skipped cells would
    silently report the old values under the new file."""
    from editbench.run.plan import resolve_hparams

    try:
        config = json.loads((out / "config.json").read_text())
        previous, previous_hparams = config["spec"], config["hparams"]
    except (OSError, KeyError, ValueError, TypeError):
        return ["config.json unreadable"]
    current = json.loads(json.dumps(dataclasses.asdict(spec), default=list))
    differ = sorted(k for k, v in current.items()
                    if k not in _NOT_SETTINGS and previous.get(k, v) != v)
    hparams, previous_hparams = json.loads(dumps(resolve_hparams(spec)[1])), previous_hparams or {}
    differ += sorted(f"hparams {k}" for k in set(hparams) | set(previous_hparams)
                     if previous_hparams.get(k) != hparams.get(k))
    return differ


def sweep(
    grid: Grid,
    sweep_dir: str | os.PathLike[str],
    executor: str = "local",
    machine: dict[str, Any] | None = None,
    ray_address: str | None = None,
) -> dict[str, Outcome]:
    """Run every cell that is not finished; returns each cell's outcome (also in sweep.json)."""
    from editbench.progress import bar

    if executor not in EXECUTORS:
        raise EditbenchError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    root = Path(sweep_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "grid.yaml", grid.text)
    machine = {k: v for k, v in (machine or {}).items() if v is not None}
    state = {"grid": grid.source, "description": grid.description, "executor": executor,
             "started": _now(), "finished": None, "cells": {}}
    outcomes: dict[str, Outcome] = {}
    todo: list[tuple[Cell, RunSpec]] = []
    for cell in grid.cells:
        spec, problem = plan(cell, root, machine)
        if spec is None:
            outcomes[cell.name] = Outcome("failed", problem) if problem else Outcome("skipped")
        else:
            todo.append((cell, spec))

    def write_state() -> None:
        state["cells"] = {c.name: _state_entry(outcomes.get(c.name)) for c in grid.cells}
        atomic_write_json(root / STATE_FILE, state)

    write_state()
    progress = bar("sweep", total=len(grid.cells), unit="cell")
    progress.update(len(grid.cells) - len(todo))
    try:
        for name, outcome in EXECUTORS[executor](todo, grid.resources, ray_address):
            outcomes[name] = outcome
            write_state()
            progress.update(1)
    finally:
        progress.close()
    state["finished"] = _now()
    write_state()
    return {c.name: outcomes[c.name] for c in grid.cells}


def _state_entry(outcome: Outcome | None) -> dict[str, Any]:
    outcome = outcome or Outcome("pending")
    return {"status": outcome.status, "error": outcome.error, "seconds": round(outcome.seconds, 1)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _local(todo: Sequence[tuple[Cell, RunSpec]], resources: dict[str, Any],
           address: str | None) -> Iterable[tuple[str, Outcome]]:
    for cell, spec in todo:
        yield cell.name, run_cell(spec)


def _ray(todo: Sequence[tuple[Cell, RunSpec]], resources: dict[str, Any],
         address: str | None) -> Iterable[tuple[str, Outcome]]:
    """Each cell a Ray task asking for the grid's resources; results as they finish."""
    ray = require("ray", "--executor ray")
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        ray.init(**({"address": address} if address else {"include_dashboard": False}))
    try:
        check_cluster(resources, ray.cluster_resources())
        task = ray.remote(**{"num_cpus": 1, **resources})(_ray_cell)
        cwd = os.getcwd()
        pending = {task.remote(spec, cwd): cell.name for cell, spec in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker fails its cell only
                    outcome = Outcome("failed", _one_line(exc))
                yield name, outcome
    finally:
        if started:
            ray.shutdown()


def check_cluster(resources: dict[str, Any], available: dict[str, float]) -> None:
    """Fail at once when no node could ever run a cell (Ray would wait forever)."""
    for key, ray_key in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        want = resources.get(key, 0)
        if want and available.get(ray_key, 0) < want:
            raise EditbenchError(
                f"each cell asks for {key} {want:g} but the Ray cluster has "
                f"{available.get(ray_key, 0):g}; lower 'resources' in the grid or join a larger "
                "cluster with --ray-address"
            )


EXECUTORS: dict[str, Callable[..., Iterable[tuple[str, Outcome]]]] = {"local": _local, "ray": _ray}


# A cell's status in sweep.json, as a reader says it: "done" ran now, "skipped" had
# finished before, "pending" was never reached (the sweep stopped first).
STATUS_WORDS = {"done": "finished", "skipped": "finished before (skipped)", "failed": "failed",
                "pending": "not run"}


def count_cells(statuses: Iterable[str]) -> dict[str, int]:
    """A sweep's state: finished cells (run now or skipped because they had finished
    before: both hold a finished run), of which skipped, failed, and not run."""
    statuses = list(statuses)
    finished = sum(s in ("done", "skipped") for s in statuses)
    failed = sum(s == "failed" for s in statuses)
    return {"cells": len(statuses), "finished": finished, "skipped": statuses.count("skipped"),
            "failed": failed, "not_run": len(statuses) - finished - failed}


def describe_cells(statuses: Iterable[str]) -> str:
    """'4 cells: 4 finished (4 skipped because they had finished before), 0 failed, 0 not run'."""
    c = count_cells(statuses)
    return (f"{c['cells']} cells: {c['finished']} finished ({c['skipped']} skipped because they "
            f"had finished before), {c['failed']} failed, {c['not_run']} not run")


def summary(outcomes: dict[str, Outcome], sweep_dir: str | os.PathLike[str]) -> str:
    lines = [f"sweep {sweep_dir}: {describe_cells(o.status for o in outcomes.values())}"]
    lines += [f"  failed {name}: {o.error}" for name, o in outcomes.items() if o.status == "failed"]
    return "\n".join(lines)


def sweep_state(sweep_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sweep's ``sweep.json`` (None if ``sweep_dir`` is not a sweep folder)."""
    path = Path(sweep_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EditbenchError(f"{path}: unreadable ({exc})") from exc


def finished_cells(sweep_dir: str | os.PathLike[str]) -> list[Path] | None:
    """The finished run folders of a sweep, in grid order (None if ``sweep_dir`` is no sweep)."""
    state = sweep_state(sweep_dir)
    if state is None:
        return None
    root = Path(sweep_dir)
    return [root / name for name in state["cells"] if (root / name / "metrics.json").is_file()]
