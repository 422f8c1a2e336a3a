"""The wheel carries editors/, hparams/ and datasets/ and works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed: {proc.stderr[-2000:]}")
    (path,) = out.glob("editbench-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "editors/locft_bf.py",
        "editors/_finetune.py",
        "editbench/presets/families.yaml",
        "editbench/_bundled/hparams/locft_bf/qwen2.5-7b.yaml",
        "editbench/_bundled/hparams/locft_bf/smollm2-135m.yaml",
        "editbench/_bundled/datasets/embedded/facts.json",
        "editbench/capability/suites/default.yaml",
        "editbench/capability/tasks/default_knowledge.yaml",
        "editbench/_bundled/datasets/capability/default/general_knowledge.jsonl",
        "editbench/run/grids/smoke.yaml",
        "editbench/run/grids/paper-table3.yaml",
        "editbench/report/schemas/leaderboard.schema.json",
    ):
        assert required in names, required
    assert not any(n.startswith("datasets/") for n in names), "would shadow HF datasets"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "locft_bf = editors.locft_bf" in text and "editbench = editbench.cli:main" in text


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    # Only the installed copy is importable: the checkout is not on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import editbench, editors, json;"
        "from editbench.cli import main;"
        f"assert editbench.__file__.startswith({str(target)!r}), editbench.__file__;"
        "main(['hparams', '--editor', 'locft_bf', '--model', 'smollm2-135m']);"
        "from editbench.data import load_dataset;"
        "from editbench.run.grid import load_grid;"
        "print(len(load_grid('smoke').cells), len(load_grid('paper-table3').cells));"
        "print(len(load_dataset('embedded').requests))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"modules"' in proc.stdout and proc.stdout.strip().endswith("11 90\n53")


def test_installed_wheel_finds_capability_suites(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = (
        "from editbench.capability import load_suite;"
        "from editbench.capability.spec import read_records;"
        "s = load_suite('default'); t = s.tasks[0];"
        "records, source = read_records(t, s.task_files[t.name], None);"
        f"assert source.startswith({str(target)!r}), source;"
        "print(len(records))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "104"
