"""Fault injection: SIGKILL a real run at many points, resume it, compare with an unbroken run.

Points (``editbench/faults.py``): inside the pre-edit baseline, after an edit step, at an
editor's boundary inside a breadth-first step (an epoch's end), while a checkpoint is being
written (written, not yet renamed), inside the final evaluation, right before metrics.json;
plus kills at random times. After ``--resume`` every run must equal the uninterrupted one:
results, the pre-edit results, each case exactly once in ``cases.jsonl``, the curve and the
step records. ``EDITBENCH_FAULT_TRIALS`` sets the number of trials (CI: the default).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from editbench.results import RunDir

TRIALS = int(os.environ.get("EDITBENCH_FAULT_TRIALS", "8"))
# (point, how many times a run reaches it): 6 requests, 2 protocols, steps of 2 requests,
# 3 epochs per step, chunks of 2 requests.
POINTS = [("baseline-record", 12), ("step", 3), ("boundary", 9), ("checkpoint-write", 10),
          ("case-record", 12), ("metrics", 1)]


def _args(tiny_run, out: Path) -> list[str]:
    tmp, model_dir, data, hparams = tiny_run
    hparams.write_text("modules: [block@3]\nlr: 1.0e-2\nbatch_size: 1\nepochs: 3\n"
                       "epoch_stop_threshold: 0.0\n")
    return ["run", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
            "--dataset", str(data), "--device", "cpu", "--protocol", "both",
            "--max-new-tokens", "4", "--edits-per-step", "2", "--eval-every", "2",
            "--checkpoint-every", "2", "--eval-batch-size", "1", "--eval-chunk-size", "2",
            "--output", str(out)]


def _cli(args: list[str], fault: str | None = None, kill_after: float | None = None) -> int:
    env = {**os.environ, "EDITBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("EDITBENCH_FAULT", None)
    if fault:
        env["EDITBENCH_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "editbench.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _outcome(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    curve = [{k: v for k, v in p.items() if k != "edit_time_s"} for p in _lines(out / "curve.jsonl")]
    return {"results": metrics["results"], "pre": metrics["results_pre"],
            "cases": _lines(out / "cases.jsonl"), "curve": curve,
            "steps": _lines(out / "steps.jsonl"), "pre_records": _lines(out / "pre_edit.jsonl")}


def _trials() -> list[tuple[str, int]]:
    rng = random.Random(1234)
    picks = [(name, rng.randint(1, n)) for name, n in POINTS]  # every kind once
    while len(picks) < TRIALS:
        name, n = rng.choice(POINTS)
        picks.append((name, rng.randint(1, n)))
    return picks[:TRIALS] if len(POINTS) <= TRIALS else picks


def test_killed_runs_resume_to_the_uninterrupted_result(tiny_run):
    tmp = tiny_run[0]
    ref_dir = tmp / "reference"
    t0 = time.perf_counter()
    assert _cli(_args(tiny_run, ref_dir)) == 0
    wall = time.perf_counter() - t0
    reference = _outcome(ref_dir)
    cases = [(c["case_id"], c["protocol"]) for c in reference["cases"]]
    assert len(cases) == len(set(cases)) == 12

    rng = random.Random(99)
    trials = [(f"{p}:{n}", None) for p, n in _trials()]
    trials += [(None, rng.uniform(0.3, 0.95) * wall) for _ in range(max(1, TRIALS // 4))]
    killed = 0
    for i, (fault, delay) in enumerate(trials):
        out = tmp / f"trial-{i}"
        code = _cli(_args(tiny_run, out), fault=fault, kill_after=delay)
        killed += code != 0
        if code != 0:
            assert not (out / "metrics.json").exists()
            if (out / "checkpoint.pt").exists():  # whatever checkpoint a kill left loads
                assert RunDir(out).load_checkpoint()["format"] == 2
            resume = ["--resume"] if (out / "config.json").exists() else []
            assert _cli(_args(tiny_run, out) + resume) == 0, (fault, delay)
        got = _outcome(out)
        for key in reference:
            assert got[key] == reference[key], (fault, delay, key)
        assert not list(out.glob("*.part")) and not (out / "checkpoint.pt").exists()
    assert killed >= len(POINTS) - 1  # the injected kills did happen
