"""benchmarks/gpu.py on a CPU with --quick (what CI runs so the GPU script cannot rot).

The script is run as the GPU machine runs it: its own process, from the checkout, writing
one JSON file. Tiny shapes of the three presets: the numbers are not measurements, but every
section (parity, build, LocFT-BF with and without the prefix cache, evaluation, MEMIT,
AlphaEdit) must run through the project's own code paths and report what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
MODELS = ["qwen2.5-7b", "llama3-8b", "smollm2-135m"]


def run_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["EDITBENCH_PROGRESS"] = "0"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick",
                           "--output", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.is_file(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


# The tests reading the module's one quick run stay on one pytest-xdist worker.
QUICK_GROUP = pytest.mark.xdist_group("gpu_bench_quick")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    return run_script(tmp_path_factory.mktemp("gpu-bench"))


def sections(report: dict) -> dict[tuple[str, str | None], dict]:
    return {(e["section"], e["model"]): e for e in report["sections"]}


@QUICK_GROUP
def test_every_section_runs_and_the_table_is_printed(quick):
    proc, report = quick
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["quick"] and report["device"]["device"] == "cpu" and report["dtype"] == "float32"
    assert report["wall_s"] < report["budget_s"]
    got = sections(report)
    expected = {("parity", None)} | {(s, m) for m in MODELS
                                     for s in ("build", "locft", "eval", "memit", "alphaedit")}
    assert set(got) == expected
    assert {e["status"] for e in got.values()} == {"ok"}, [
        (k, e.get("reason") or e.get("error")) for k, e in got.items() if e["status"] != "ok"]
    assert all(e["peak_memory_gb"] is None for e in got.values())  # no GPU, no GPU memory
    # One table row per recorded section (a model built again for a later section has two
    # build rows: one model is on the device at a time).
    rows = [[c.strip() for c in line.split("|")] for line in proc.stdout.splitlines() if " | " in line]
    assert rows[0] == ["section", "model", "status", "seconds", "peak GB", "result"]
    assert [r[:3] for r in rows[1:]] == [[e["section"], e["model"] or "-", e["status"]]
                                        for e in report["sections"]]


@QUICK_GROUP
def test_parity_compares_cpu_with_cpu_and_says_so(quick):
    parity = sections(quick[1])[("parity", None)]["result"]
    assert parity["device"] == "cpu" and "compares CPU against CPU" in parity["note"]
    assert parity["ok"]
    model = parity["models"]["qwen2.5-7b"]
    assert model["family"] == "qwen2" and model["taught_loss"] < 0.1
    for editor in ("locft_bf", "memit"):
        # float32 against itself: bit-identical runs; bfloat16 within the stated tolerance.
        assert model["float32"][editor]["max_relative_loss_diff"] == 0.0
        assert model["float32"][editor]["differences"] == {}
        assert model["bfloat16"][editor]["beyond_tolerance"] == {}
        assert model["reference"][editor]["losses"]
    # The edit the reference made took: LocFT-BF's requests are answered.
    assert model["reference"]["locft_bf"]["discrete"]["teacher_forced.reliability"] == 1.0


@QUICK_GROUP
def test_locft_reports_cached_and_uncached_epochs_of_the_shipped_hparams(quick):
    from editbench.config import load_hparams
    from editors.locft_bf import LocFTBFConfig

    got = sections(quick[1])
    for model in ("qwen2.5-7b", "llama3-8b", "smollm2-135m"):
        (module,) = load_hparams(LocFTBFConfig, "locft_bf", model)[0].modules  # as shipped
        r = got[("locft", model)]["result"]
        assert r["modules"] == [module] and r["requests"] == 40
        cached, uncached = r["cached"], r["uncached"]
        assert cached["prefix_cache"].startswith(f"layer {module.split('@')[1]},")
        assert uncached["prefix_cache"] == "off"
        assert cached["packing"] == uncached["packing"] == "on"
        for run in (cached, uncached):
            assert len(run["epoch_seconds"]) == 2 and run["seconds_per_epoch"] > 0
            assert run["projected_seconds_per_edit"] == pytest.approx(
                (max(run["first_epoch_extra_s"], 0) + 25 * run["seconds_per_epoch"]) / 40, rel=0.01)
        build = got[("build", model)]["result"]
        assert build["architecture"]["num_hidden_layers"] == {"qwen2.5-7b": 28, "llama3-8b": 32,
                                                              "smollm2-135m": 30}[model]


@QUICK_GROUP
def test_evaluation_and_locate_editors_report_throughput(quick):
    got = sections(quick[1])
    for model in MODELS:
        ev = got[("eval", model)]["result"]
        for protocol in ("generation", "teacher_forced"):
            case = ev[f"{protocol}@batch8"]
            assert case["prompts"] == 5 * case["requests"] > 0
            assert case["evaluate_prompts_per_s"] > 0 and case["baseline_prompts_per_s"] > 0
        memit, alpha = got[("memit", model)]["result"], got[("alphaedit", model)]["result"]
        assert memit["requests"] == alpha["requests"] == 2
        assert memit["seconds_per_edit"] > 0 and alpha["seconds_per_edit"] > 0
        # MEMIT computed the statistics (timed apart from the edit); AlphaEdit read them back.
        assert memit["stats"]["computed"] and memit["stats"]["seconds"] >= 0
        assert alpha["stats"]["computed"] == [] and alpha["stats"]["cached"] == sorted(memit["stats"]["computed"])


def test_a_section_that_would_overrun_the_budget_is_skipped_with_its_reason(tmp_path):
    proc, report = run_script(tmp_path, "--budget", "1", "--models", "smollm2-135m",
                              "--sections", "parity,locft")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = sections(report)
    assert set(got) == {("parity", None), ("build", "smollm2-135m")}
    for entry in got.values():
        assert entry["status"] == "skipped" and "s left" in entry["reason"]
