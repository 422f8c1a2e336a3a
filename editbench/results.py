"""The run directory: ``config.json``, ``cases.jsonl``, ``metrics.json``, ``curve.jsonl``.

Every file is written atomically (temp file + rename) or, for streams, to a ``.part``
file renamed when complete, so a crashed or interrupted run never leaves a file that
looks finished. ``metrics.json`` is written last: its presence marks a complete run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from editbench.errors import EditbenchError
from editbench.files import atomic_write, atomic_write_json, atomic_write_text, dumps, read_jsonl

METRICS_SCHEMA_VERSION = 1


class JsonlStream:
    """Appends records to ``<name>.part``; :meth:`commit` renames it to ``<name>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._fh: IO[str] | None = None

    def open(self, append: bool = False) -> JsonlStream:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.part.open("a" if append else "w", encoding="utf-8")
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise RuntimeError("stream not open")
        self._fh.write(dumps(record) + "\n")

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop records written after a checkpoint (resume), keeping those ``keep`` accepts."""
        if self.part.is_file():
            kept = [rec for _, rec in read_jsonl(self.part) if keep(rec)]
            atomic_write_text(self.part, "".join(dumps(rec) + "\n" for rec in kept))

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def commit(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
        os.replace(self.part, self.path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def git_revision() -> str | None:
    """The revision of the editbench checkout (None for an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("editbench", "torch", "transformers", "accelerate", "peft", "datasets", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class RunDir:
    """A run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def prepare(self, overwrite: bool = False) -> None:
        if self.metrics_path.exists() and not overwrite:
            raise EditbenchError(
                f"{self.path} already holds a finished run (metrics.json); "
                "choose another --output or pass --overwrite"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.json", "cases.jsonl", "curve.jsonl"):
            (self.path / stale).unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, config)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_path, {"schema_version": METRICS_SCHEMA_VERSION, **metrics})

    def stream(self, name: str) -> JsonlStream:
        return JsonlStream(self.path / name)

    # Resume support: the pre-edit baseline and, every --checkpoint-every edits, the edited
    # tensors with the editor's state.
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def save_baseline(self, baseline: dict[str, Any]) -> None:
        atomic_write_json(self.path / "pre_edit.json", baseline)

    def load_baseline(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "pre_edit.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EditbenchError(f"{self.path}: cannot resume, pre_edit.json is unreadable") from exc

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        import torch

        if self.metrics_path.exists():
            raise EditbenchError(f"{self.path}: the run is finished; nothing to resume")
        if not self.checkpoint_path.is_file():
            raise EditbenchError(
                f"{self.path}: no checkpoint.pt to resume from (run with --checkpoint-every K)"
            )
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def remove_checkpoint(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, metrics) of a finished run."""
        if not self.metrics_path.is_file():
            raise EditbenchError(f"{self.path}: not a finished run (no metrics.json)")
        try:
            config = json.loads(self.config_path.read_text())
            metrics = json.loads(self.metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EditbenchError(f"{self.path}: unreadable run files ({exc})") from exc
        return config, metrics


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
