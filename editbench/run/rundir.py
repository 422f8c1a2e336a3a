"""The run directory and everything written into it.

```
config.json        what the run is (written first)
pre_edit.jsonl     the unedited model's case records (the locality baseline)
steps.jsonl        one record per edit step (editor infos)
curve.jsonl        metrics at curve points (--eval-every)
cases.jsonl        the final evaluation's case records
checkpoint.pt      edited tensors, editor state and RNG states (removed when done)
metrics.json       the results (written last: its presence marks a finished run)
.lock              held (flock) by the one process writing the directory
```

Every file is written atomically (temp file + rename) or, for streams, appended to a
``.part`` file renamed when complete, so an interrupted run never leaves a file that looks
finished. Streams are append-only and ordered, so a resumed run cuts a ``.part`` back to
what its checkpoint covers (:meth:`JsonlStream.truncate_at`) instead of rewriting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from editbench import faults
from editbench.errors import EditbenchError
from editbench.files import atomic_write, atomic_write_json, dumps

METRICS_SCHEMA_VERSION = 2
RUN_FILES = ("config.json", "metrics.json", "pre_edit.jsonl", "steps.jsonl", "curve.jsonl",
             "cases.jsonl", "checkpoint.pt")
"""Every file a run writes (streams also as ``<name>.part``); a fresh run removes them all,
so nothing of an earlier run in the same directory can be resumed or mixed in."""


def _lines_with_offsets(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """(start offset, end offset, record or None if the line is not valid JSON)."""
    offset = 0
    with path.open("rb") as fh:
        for raw in fh:  # binary lines split on b"\n" only
            end = offset + len(raw)
            record = None
            if raw.endswith(b"\n"):  # a last line without "\n" was cut mid-write
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
            if raw.strip() or record is not None:
                yield offset, end, record
            offset = end


class JsonlStream:
    """Appends records to ``<name>.part``; :meth:`commit` renames it to ``<name>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._fh: IO[str] | None = None

    def open(self, append: bool = False) -> JsonlStream:
        try:
            self._fh = self.part.open("a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise EditbenchError(f"{self.part}: cannot write: {exc.strerror or exc}") from None
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise RuntimeError("stream not open")
        try:
            self._fh.write(dumps(record) + "\n")
        except OSError as exc:
            raise EditbenchError(f"{self.part}: cannot write: {exc.strerror or exc}") from None

    def uncommit(self) -> None:
        """Turn a committed file back into ``.part`` (a run resumed after its streams were
        committed, e.g. killed just before metrics.json)."""
        if self.path.is_file():
            os.replace(self.path, self.part)

    def truncate_at(self, stop: Callable[[dict[str, Any]], bool]) -> None:
        """Cut the ``.part`` file before the first record ``stop`` accepts (or the first
        damaged line): the records after a checkpoint, or a line cut by a kill."""
        if not self.part.is_file():
            return
        for start, _, record in _lines_with_offsets(self.part):
            if record is None or stop(record):
                os.truncate(self.part, start)
                return

    def complete_chunks(self, expected: Callable[[int], int]) -> int:
        """Cut the ``.part`` file of a chunked evaluation back to its complete chunks and
        return how many there are (records carry ``chunk``; chunk ``k`` is complete with
        ``expected(k)`` records; chunks are written whole, one after another)."""
        if not self.part.is_file():
            return 0
        chunk, count, good_end = 0, 0, 0
        for _, end, record in _lines_with_offsets(self.part):
            if record is None or record.get("chunk") != chunk:
                break
            count += 1
            if count == expected(chunk):
                chunk, count, good_end = chunk + 1, 0, end
        os.truncate(self.part, good_end)
        return chunk

    def records(self) -> Iterator[dict[str, Any]]:
        """The records of the ``.part`` file (call after a truncation: all are valid)."""
        from editbench.files import read_jsonl

        if self.part.is_file():
            for _, record in read_jsonl(self.part):
                yield record

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise EditbenchError(f"{self.part}: cannot write: {exc.strerror or exc}") from None

    def commit(self) -> None:
        self.flush()
        self.close()
        if not self.part.exists():  # nothing was ever written
            self.part.touch()
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
        self._lock: IO[bytes] | None = None
        self.created = False

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    # -- the directory itself ---------------------------------------------------------------

    def create(self) -> None:
        """Make the folder (remembering whether it is new) and take its lock."""
        if self.path.exists() and not self.path.is_dir():
            raise EditbenchError(f"--output {self.path}: is a file, expected a run directory")
        try:
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            lock = (self.path / ".lock").open("ab")
        except OSError as exc:
            raise EditbenchError(
                f"--output {self.path}: cannot create the run directory ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EditbenchError(
                    f"--output {self.path}: another editbench run is writing this directory; "
                    "wait for it or choose another --output"
                ) from None
            raise EditbenchError(f"--output {self.path}: cannot lock ({exc.strerror})") from None
        self._lock = lock
        for stale in self.path.glob(".*.tmp"):  # temp files of a killed writer
            stale.unlink(missing_ok=True)

    def release(self, failed: bool = False) -> None:
        """Drop the lock; a directory this run created and never wrote into is removed."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if failed and self.created and not self.config_path.exists():
            with contextlib.suppress(OSError):
                (self.path / ".lock").unlink(missing_ok=True)
                for stale in self.path.glob("*.part"):
                    stale.unlink()
                self.path.rmdir()

    def prepare_fresh(self, overwrite: bool = False) -> None:
        """Clear every file of an earlier run (finished only with ``overwrite``)."""
        if self.metrics_path.exists() and not overwrite:
            raise EditbenchError(
                f"{self.path} already holds a finished run (metrics.json); "
                "choose another --output or pass --overwrite"
            )
        for name in RUN_FILES:
            for path in (self.path / name, self.path / f"{name}.part"):
                path.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        self._write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EditbenchError(f"{self.path}: no config.json (not a run directory)") from None
        except (OSError, ValueError) as exc:
            raise EditbenchError(f"{self.path}: config.json is unreadable ({exc})") from None
        if not isinstance(config, dict):
            raise EditbenchError(f"{self.path}: config.json is not an object")
        return config

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._write_json(self.metrics_path, {"schema_version": METRICS_SCHEMA_VERSION, **metrics})

    def _write_json(self, path: Path, obj: Any) -> None:
        try:
            atomic_write_json(path, obj)
        except OSError as exc:
            raise EditbenchError(f"{path}: cannot write: {exc.strerror or exc}") from None

    def stream(self, name: str) -> JsonlStream:
        return JsonlStream(self.path / name)

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        def write(tmp: Path) -> None:
            torch.save(state, tmp)
            faults.point("checkpoint-write")  # written, not yet renamed

        try:
            atomic_write(self.checkpoint_path, write)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError
            raise EditbenchError(f"{self.checkpoint_path}: cannot write: {exc}") from None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint, or None; loaded with ``weights_only=True``: a run directory from
        someone else can hold tensors and plain data, never code that runs on load."""
        import pickle

        import torch

        if not self.checkpoint_path.is_file():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EditbenchError(
                f"{self.checkpoint_path}: corrupt or not an editbench checkpoint ({first[:160]}); "
                "delete it to restart the edits"
            ) from None
        if not isinstance(state, dict) or "format" not in state:
            raise EditbenchError(f"{self.checkpoint_path}: not an editbench checkpoint")
        return state

    def remove_checkpoint(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, metrics) of a finished run."""
        if not self.metrics_path.is_file():
            raise EditbenchError(f"{self.path}: not a finished run (no metrics.json)")
        config = self.read_config()
        try:
            metrics = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EditbenchError(f"{self.path}: metrics.json is unreadable ({exc})") from None
        if not isinstance(metrics, dict):
            raise EditbenchError(f"{self.path}: metrics.json is not an object")
        return config, metrics


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
