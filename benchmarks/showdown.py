"""The 10K-edit sequential showdown on smollm2-135m: which editor holds up over 10,000 edits.

Every editor edits the same seeded 10,000 of all the real requests in ``../shared/data``
(CounterFact and zsRE, one flat file; subjects of the known-fact tuning slice left out, so
no editor is scored on requests its hparams were chosen on) in its own ordinary run:

    --num-edits T --sample random --eval-every 1000 --eval-sample 500
    --capability default --checkpoint-every 1000

with the step each method's paper uses (``STEPS``). An editor is first measured on a short
run; when 10,000 edits would take longer than ``--budget-hours`` on this machine, its run
stops at the largest multiple of ``--eval-every`` that fits (none when not even one fits:
then the short run's measurement is all), and the projection for 10,000 is reported.
Each run resumes where it stopped (rerun the command). At the end: the
leaderboard (Markdown), the curves (``curves.png``) and ``showdown.json`` (seconds per
edit, peak memory, projections, the machine's load).

    EDITBENCH_PROGRESS=0 python benchmarks/showdown.py --data-dir ../shared/data \\
        --output runs/showdown --budget-hours 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scale import load_average, real_requests

# Requests per step as each paper runs its method in sequential editing.
STEPS = {
    "locft_bf": 1000,  # breadth-first within buffers of 1,000 (the paper edits all at once)
    "ft_m": 1,
    "memit": 100,  # AlphaEdit's sequential protocol: batches of 100
    "alphaedit": 100,
    "emmet": 100,
    "ultraedit": None,  # its hparams' turn size
    "grace": 1,
    "wise": 1,
}


def _cli(args: list[str], log: Path) -> int:
    env = {**os.environ, "EDITBENCH_PROGRESS": "0"}
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ editbench {' '.join(args)}\n")
        fh.flush()
        return subprocess.run([sys.executable, "-m", "editbench.cli", *args], stdout=fh,
                              stderr=subprocess.STDOUT, env=env).returncode


def _step_args(editor: str, point: int) -> list[str]:
    """The paper's step, at most one curve point (a point ends a step)."""
    step = STEPS.get(editor)
    return [] if step is None else ["--edits-per-step", str(min(step, point))]


def measure(editor: str, data: Path, out: Path, n: int, common: list[str]) -> tuple[float, int]:
    """Seconds per edit on a short run of ``n`` edits (no curve, a small evaluation), and
    the edits it made (an earlier call's run is reused, whatever its ``n``)."""
    run = out / f"measure-{editor}"
    if not (run / "metrics.json").is_file():
        code = _cli(["run", "--editor", editor, "--dataset", str(data), "--num-edits", str(n),
                     "--sample", "random", "--eval-sample", "20", *_step_args(editor, n),
                     *common, "--output", str(run), "--overwrite"], out / "showdown.log")
        if code != 0:
            raise SystemExit(f"{editor}: the measuring run failed; see {out / 'showdown.log'}")
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["edit_time_per_request_s"], metrics["num_edits"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--output", default="runs/showdown")
    p.add_argument("--editors", default=",".join(STEPS))
    p.add_argument("--edits", type=int, default=10_000)
    p.add_argument("--budget-hours", type=float, default=3.0)
    p.add_argument("--measure", type=int, default=200, help="edits of the measuring run")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--eval-every", type=int, default=1000, help="edits between curve points")
    p.add_argument("--eval-sample", type=int, default=500, help="requests scored at each point")
    p.add_argument("--cap", type=int, default=None,
                   help="edits per run at most in this call (projections still for --edits)")
    args = p.parse_args(argv)
    point = args.eval_every
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "requests.jsonl"
    if not data.is_file():
        real_requests(Path(args.data_dir), data, exclude_subjects=_tuning_subjects(args.model))
    common = ["--model", args.model, "--data-dir", args.data_dir, "--seed", "0"]
    # Editors measured by an earlier call (another --editors or --measure) stay in the summary.
    earlier = out / "showdown.json"
    kept = json.loads(earlier.read_text())["editors"] if earlier.is_file() else {}
    summary: dict = {"edits": args.edits, "budget_hours": args.budget_hours, "eval_every": point,
                     "eval_sample": args.eval_sample, "editors": {},
                     "load_average_start": load_average()}
    for editor in args.editors.split(","):
        s_per_edit, measured = measure(editor, data, out, args.measure, common)
        fits = int(args.budget_hours * 3600 / max(s_per_edit, 1e-9)) // point * point
        projected = round(s_per_edit * args.edits / 3600, 2)
        if fits < point:  # not one curve point within the budget: the measurement is all
            summary["editors"][editor] = {
                "edits": 0, "measured_s_per_edit": s_per_edit, "measured_edits": measured,
                "projected_hours_for_all": projected,
                "why": f"{point} edits would take {s_per_edit * point / 3600:.2f} h, over the budget"}
            continue
        edits = min(args.edits, fits, args.cap or args.edits)
        run = out / editor
        flags = ["run", "--editor", editor, "--dataset", str(data), "--num-edits", str(edits),
                 "--sample", "random", "--eval-every", str(point), "--eval-sample", str(args.eval_sample),
                 "--capability", "default", "--checkpoint-every", str(point), *_step_args(editor, point),
                 *common, "--output", str(run)]
        t0 = time.perf_counter()
        if not (run / "metrics.json").is_file():
            resume = ["--resume"] if (run / "config.json").is_file() else []
            if _cli([*flags, *resume], out / "showdown.log") != 0:
                summary["editors"][editor] = {"failed": True, "log": str(out / "showdown.log")}
                continue
        metrics = json.loads((run / "metrics.json").read_text())
        summary["editors"][editor] = {
            "edits": edits, "measured_s_per_edit": s_per_edit, "measured_edits": measured,
            "projected_hours_for_all": projected,
            "edit_time_per_request_s": metrics["edit_time_per_request_s"],
            "peak_rss_mb": max(ph["peak_rss_mb"] for ph in metrics["phases"].values()),
            "wall_s_this_call": round(time.perf_counter() - t0, 1),
            "results": metrics["results"],
        }
    summary["load_average_end"] = load_average()
    summary["editors"] = {**kept, **summary["editors"]}
    runs = [str(out / e) for e in summary["editors"] if (out / e / "metrics.json").is_file()]
    if runs:
        _cli(["leaderboard", *runs, "-o", str(out / "leaderboard.md")], out / "showdown.log")
        _cli(["plot", *runs, "-o", str(out / "curves.png")], out / "showdown.log")
    (out / "showdown.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({e: {k: v for k, v in s.items() if k != "results"}
                      for e, s in summary["editors"].items()}, indent=2))
    return 0


def _tuning_subjects(model: str) -> set[str]:
    """Subjects of the model's known-fact tuning slice (none when it was not built)."""
    from editbench.data.known import known_dir

    path = known_dir(model) / "tune.json"
    return {r["subject"] for r in json.loads(path.read_text())} if path.is_file() else set()


if __name__ == "__main__":
    sys.exit(main())
