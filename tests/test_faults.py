"""Fault injection: SIGKILL a real run at many points, resume it, compare with an unbroken run.

Points (``editbench/faults.py``): inside the pre-edit baseline, after a training batch, after
an edit step, at an editor's boundary inside a breadth-first step (an epoch's end), while a
checkpoint is being written (written, not yet renamed), inside the final evaluation, right
before metrics.json; plus kills at random times. After ``--resume`` every run must equal the
uninterrupted one: results, the pre-edit results, each case exactly once in ``cases.jsonl``
(whose per-prompt KL divergences, full float precision, differ if the edited weights do),
the curve and the step records. ``EDITBENCH_FAULT_TRIALS`` sets the number of trials of
each test (CI: the defaults).

Each run is a real process: forked from a forkserver that has imported torch, transformers
and editbench once (a fresh interpreter spends most of a tiny run importing them), killed
by SIGKILL, from outside or from inside through the fault points.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from editbench.run.rundir import RunDir

TRIALS = int(os.environ.get("EDITBENCH_FAULT_TRIALS", "8"))
# (point, how many times a run reaches it): 6 requests, 2 protocols, steps of 2 requests,
# 3 epochs per step (two in-step checkpoints and one at the step's end), chunks of 2 requests.
POINTS = [("baseline-record", 12), ("step", 3), ("boundary", 9), ("checkpoint-write", 9),
          ("case-record", 12), ("metrics", 1)]
# The one-step run: 6 requests in one breadth-first step, batches of 1, 4 epochs, a
# checkpoint after each of the first three epochs and one before the final evaluation.
# Listed as often as each should be drawn: kills inside the step most.
ONE_STEP_POINTS = [("train-batch", 24)] * 3 + [("boundary", 4), ("checkpoint-write", 4)] + [
    ("case-record", 12)] * 2
_PRELOAD = ["editbench.cli", "editbench.run", "editbench.models", "editbench.evaluate",
            "editors.locft_bf", "transformers.modeling_utils",
            "transformers.models.llama.modeling_llama", "transformers.tokenization_utils_fast"]


@functools.cache
def _processes():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _child(args: list[str], fault: str | None, log: str) -> None:
    """The CLI in a forked process, its output in ``log``."""
    os.environ["EDITBENCH_PROGRESS"] = "0"
    os.environ.pop("EDITBENCH_FAULT", None)
    if fault:
        os.environ["EDITBENCH_FAULT"] = fault
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    from editbench.cli import main

    sys.exit(main(args))


def _cli(args: list[str], fault: str | None = None, kill_after: float | None = None) -> int:
    log = Path(args[args.index("--output") + 1] + ".log")
    proc = _processes().Process(target=_child, args=(args, fault, str(log)))
    proc.start()
    proc.join(kill_after)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert proc.exitcode in (0, -signal.SIGKILL), log.read_text()
    return proc.exitcode


def _args(tiny_run, out: Path) -> list[str]:
    tmp, model_dir, data, hparams = tiny_run
    hparams.write_text("modules: [block@3]\nlr: 1.0e-2\nbatch_size: 1\nepochs: 3\n"
                       "epoch_stop_threshold: 0.0\n")
    return ["run", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
            "--dataset", str(data), "--device", "cpu", "--protocol", "both",
            "--max-new-tokens", "4", "--edits-per-step", "2", "--eval-every", "2",
            "--checkpoint-every", "2", "--eval-batch-size", "1", "--eval-chunk-size", "2",
            "--output", str(out)]


def _one_step_args(tiny_run, out: Path) -> list[str]:
    tmp, model_dir, data, _ = tiny_run
    hparams = tmp / "one-step.yaml"
    hparams.write_text("modules: [block@2]\nlr: 1.0e-2\nbatch_size: 1\nepochs: 4\n"
                       "epoch_stop_threshold: 0.0\n")
    return ["run", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(hparams),
            "--dataset", str(data), "--device", "cpu", "--protocol", "both",
            "--max-new-tokens", "4", "--checkpoint-every", "6", "--eval-batch-size", "1",
            "--eval-chunk-size", "2", "--output", str(out)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _outcome(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    curve = [{k: v for k, v in p.items() if k != "edit_time_s"} for p in _lines(out / "curve.jsonl")]
    return {"results": metrics["results"], "pre": metrics["results_pre"],
            "cases": _lines(out / "cases.jsonl"), "curve": curve,
            "steps": _lines(out / "steps.jsonl"), "pre_records": _lines(out / "pre_edit.jsonl")}


def _trials(points: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    picks = [(name, rng.randint(1, count)) for name, count in points]  # every kind once
    while len(picks) < n:
        name, count = rng.choice(points)
        picks.append((name, rng.randint(1, count)))
    return picks


def _reference(args, out: Path) -> tuple[dict, float]:
    t0 = time.perf_counter()
    assert _cli(args(out)) == 0
    wall = time.perf_counter() - t0
    reference = _outcome(out)
    cases = [(c["case_id"], c["protocol"]) for c in reference["cases"]]
    assert len(cases) == len(set(cases)) == 12
    return reference, wall


def _kill_and_resume(args, out: Path, reference: dict, fault: str | None,
                     delay: float | None) -> tuple[bool, dict | None]:
    """One trial; returns whether it was killed and the checkpoint the kill left."""
    code = _cli(args(out), fault=fault, kill_after=delay)
    checkpoint = None
    if code != 0:
        assert not (out / "metrics.json").exists()
        if (out / "checkpoint.pt").exists():  # whatever checkpoint a kill left loads
            checkpoint = RunDir(out).load_checkpoint()
            assert checkpoint["format"] == 2
        resume = ["--resume"] if (out / "config.json").exists() else []
        assert _cli(args(out) + resume) == 0, (fault, delay)
    got = _outcome(out)
    for key in reference:
        assert got[key] == reference[key], (fault, delay, key)
    assert not list(out.glob("*.part")) and not (out / "checkpoint.pt").exists()
    return code != 0, checkpoint


def test_killed_runs_resume_to_the_uninterrupted_result(tiny_run):
    tmp = tiny_run[0]

    def args(out: Path) -> list[str]:
        return _args(tiny_run, out)

    reference, wall = _reference(args, tmp / "reference")
    rng = random.Random(99)
    trials = [(f"{p}:{n}", None) for p, n in _trials(POINTS, TRIALS, 1234)]
    trials += [(None, rng.uniform(0.3, 0.95) * wall) for _ in range(max(1, TRIALS // 4))]
    killed = 0
    for i, (fault, delay) in enumerate(trials):
        killed += _kill_and_resume(args, tmp / f"trial-{i}", reference, fault, delay)[0]
    assert killed >= len(POINTS) - 1  # the injected kills did happen


def test_one_step_run_killed_inside_its_step_or_evaluation_resumes_exactly(tiny_run):
    """The 100K-edit setting in small: LocFT-BF's single breadth-first step, killed after
    a random training batch, at an epoch boundary, while a checkpoint is written or inside
    the final evaluation; the resumed run continues from the last epoch's checkpoint (not
    from the step's start) or the evaluated chunks, and ends where the unbroken run does."""
    tmp = tiny_run[0]

    def args(out: Path) -> list[str]:
        return _one_step_args(tiny_run, out)

    reference, wall = _reference(args, tmp / "one-step-reference")
    assert [s["epochs_run"] for s in reference["steps"]] == [4]
    trials = [(f"{p}:{n}", None) for p, n in _trials(ONE_STEP_POINTS, TRIALS - 1, 2024)]
    trials.append((None, random.Random(7).uniform(0.3, 0.95) * wall))
    in_step = 0
    for i, (fault, delay) in enumerate(trials):
        _, checkpoint = _kill_and_resume(args, tmp / f"one-step-{i}", reference, fault, delay)
        point, _, count = (fault or "").partition(":")
        if point == "train-batch" and int(count) > 6:
            # Killed in epoch e > 1: resumed from the checkpoint after epoch e - 1.
            assert checkpoint is not None and checkpoint["in_step"] and checkpoint["stage"] == "editing"
            assert checkpoint["editor_state"]["in_step"]["epoch"] == (int(count) - 1) // 6
            in_step += 1
        if point == "case-record":
            assert checkpoint is not None and checkpoint["stage"] == "evaluating"
    assert in_step >= 1  # a kill inside the step did resume from inside it


def test_depth_first_one_step_run_resumes_from_inside_its_step(tiny_run):
    """FT-M with every request in one step: each batch's end is a boundary, so
    ``--checkpoint-every 2`` checkpoints after every second request and a run killed after
    request k resumes from the last such checkpoint, ending where the unbroken run does."""
    tmp, model_dir, data, _ = tiny_run
    hparams = tmp / "one-step-df.yaml"
    hparams.write_text("modules: [block@2]\nlr: 1.0e-2\nbatch_size: 1\nmax_steps: 3\nloss_threshold: 0.0\n")

    def args(out: Path) -> list[str]:
        return ["run", "--editor", "ft_m", "--model", str(model_dir), "--hparams", str(hparams),
                "--dataset", str(data), "--device", "cpu", "--protocol", "both",
                "--max-new-tokens", "4", "--edits-per-step", "6", "--checkpoint-every", "2",
                "--eval-batch-size", "1", "--output", str(out)]

    reference, _ = _reference(args, tmp / "df-reference")
    assert len(reference["steps"]) == 1
    for k in random.Random(5).sample(range(3, 7), 2):
        _, checkpoint = _kill_and_resume(args, tmp / f"df-{k}", reference, f"train-batch:{k}", None)
        assert checkpoint is not None and checkpoint["in_step"]
        assert checkpoint["editor_state"]["in_step"]["next"] == 2 * ((k - 1) // 2)
