"""File helpers every part of editbench shares: atomic writes, cache locks and the one JSONL
reader.

Atomic: a temp file in the destination folder, fsync, then ``os.replace``, so a crash
never leaves a half-written file under the final name. Every file editbench writes gets
the same permissions (0666 minus the umask), whichever helper wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it to ``path``.

    ``write`` may be ``torch.save`` or a streaming download; on any error (or interrupt)
    the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) while the block runs.

    Why: two processes filling the same cache entry at once (a sweep's parallel runs, test
    workers) would both do the work, and a folder replaced under a reader breaks it; the
    second one waits here, then finds the entry made. Where ``fcntl`` is missing (Windows)
    it does not lock, and concurrent fills only repeat work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_default(obj: Any) -> Any:
    """JSON for numpy/torch scalars and arrays, sets and tuples."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """One-line JSON (JSONL records); non-finite floats are refused, not written as NaN."""
    return json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)


def json_digest(obj: Any, length: int | None = None, default: Any = None) -> str:
    """SHA-256 of ``obj`` as sorted-key JSON: the identity of a configuration (resume checks,
    comparability keys, caches), independent of key order."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()
    return digest[:length] if length else digest


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(obj, default=json_default, indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def jsonl_records(lines: Iterable[str], where: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line; invalid JSON fails naming the line.

    Lines must come split on "\\n" only: ``str.splitlines`` also breaks at U+2028 and
    U+0085, which JSON strings may hold unescaped.
    """
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise EditbenchError(
                f"{where}: line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}"
            ) from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Stream the records of a JSON-lines file (memory stays at one line)."""
    try:
        fh = open(path, encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise EditbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            yield from jsonl_records(fh, path)
        except UnicodeDecodeError as exc:
            raise EditbenchError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in blocks (corpora and statistics caches are keyed by it)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
