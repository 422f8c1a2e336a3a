"""Where a named dataset's file comes from: a data dir, the user cache, or its canonical URL.

Resolution order: ``data_dir`` (argument) and ``$EDITBENCH_DATA_DIR``, each either flat
(``DIR/zsre_3k.json``) or in the shared layout (``DIR/zsre/zsre_3k.json``); then the user
cache ``cache_dir("data")``; then a download into that cache. Downloads are atomic (a temp
file in the cache folder, then ``os.replace``), show a progress bar and are checked against
a pinned SHA-256, so a cache never holds a partial or wrong file.

A release published as several files (WikiBigEdit: one per timestep) is a
:class:`DatasetGroup`: each file resolves on its own, the same way, and when any is missing
offline, one error lists every missing file with its URL and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from editbench.errors import EditbenchError
from editbench.files import atomic_write
from editbench.progress import bar
from editbench.resources import cache_dir

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "EDITBENCH_DATA_DIR"
OFFLINE_ENV = "EDITBENCH_OFFLINE"
URL_ENV_PREFIX = "EDITBENCH_DATA_URL_"
DOWNLOAD_TIMEOUT_S = 60.0

URL_OVERRIDES: dict[str, str] = {}
"""Dataset name -> URL used instead of the canonical one (mirrors, tests); the environment
variable ``EDITBENCH_DATA_URL_<NAME>`` (name upper-cased, ``-`` -> ``_``) wins over it. For a
:class:`DatasetGroup` the group's name maps to a base URL (a folder holding its files) and
each file's own name to that file's URL."""


def url_env(name: str) -> str:
    return URL_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _override(name: str) -> str | None:
    return os.environ.get(url_env(name)) or URL_OVERRIDES.get(name)


@dataclass(frozen=True)
class DatasetSource:
    """A released dataset file: where it is published and what it must hash to."""

    name: str
    filename: str
    url: str
    sha256: str | None  # None: never had a copy to hash; downloads log their hash instead
    subdir: str  # folder of the shared layout, e.g. "zsre" for DIR/zsre/zsre_3k.json
    records: int | None  # how many records the released file holds (None: not published)
    description: str
    locality_kind: str | None = None  # what its locality prompts are, where records do not say
    group: str | None = None  # the DatasetGroup this file is one part of
    locality_kinds: tuple[str, ...] = ()  # the kinds its requests carry (for `editbench list`)
    size_mb: float | None = None  # the released file's size, where a copy was measured

    def url_env(self) -> str:
        return url_env(self.name)

    def download_url(self) -> str:
        own = _override(self.name)
        if own:
            return own
        base = _override(self.group) if self.group else None
        return f"{base.rstrip('/')}/{self.filename}" if base else self.url

    def cache_path(self) -> Path:
        return cache_dir("data") / self.filename


def _search_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    for origin, value in (("data_dir", data_dir), (DATA_DIR_ENV, os.environ.get(DATA_DIR_ENV))):
        if value is None or value == "":
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise EditbenchError(f"{origin} {str(path)!r} is not a directory")
        if path not in dirs:
            dirs.append(path)
    return dirs


def find_local(source: DatasetSource, data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The first existing copy in the data dirs or the cache, or None."""
    for directory in _search_dirs(data_dir):
        for candidate in (directory / source.filename, directory / source.subdir / source.filename):
            if candidate.is_file():
                return candidate
    cached = source.cache_path()
    return cached if cached.is_file() else None


class DownloadError(Exception):
    """The file could not be fetched (no network, HTTP error); not a checksum mismatch."""


def download(url: str, dest: Path, sha256: str | None, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Fetch ``url`` to ``dest`` atomically and return its SHA-256.

    A mismatch with ``sha256`` raises ``EditbenchError`` and leaves nothing at ``dest``.
    """
    digest = hashlib.sha256()

    def fetch(tmp: Path) -> None:
        try:
            with tmp.open("wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with bar(f"downloading {dest.name}", total, unit="B") as progress:
                    while chunk := resp.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                        progress.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                reason: object = f"HTTP {exc.code} {exc.reason}"
            elif isinstance(exc, urllib.error.URLError):
                reason = exc.reason
            else:
                reason = exc
            raise DownloadError(" ".join(str(reason).split()) or type(exc).__name__) from exc
        if sha256 is not None and digest.hexdigest() != sha256:
            raise EditbenchError(
                f"downloaded {url} has sha256 {digest.hexdigest()}, expected {sha256}; not "
                f"using it (nothing was written to {dest})"
            )

    atomic_write(dest, fetch)
    return digest.hexdigest()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def resolve(source: DatasetSource, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local file for ``source``, downloading it into the cache when nowhere else."""
    local = find_local(source, data_dir)
    if local is not None:
        return local
    url = source.download_url()
    dest = source.cache_path()
    searched = _search_dirs(data_dir)
    hint = (
        f"dataset {source.name!r} not found"
        + (f" in {', '.join(str(d) for d in searched)}" if searched else "")
        + f": download {url} and place it at {dest}, or pass --data-dir DIR (a folder "
        f"holding {source.filename} or {source.subdir}/{source.filename})"
    )
    if offline():
        raise EditbenchError(f"{hint}; {OFFLINE_ENV} is set, so nothing was downloaded")
    logger.warning("downloading dataset %r from %s to %s", source.name, url, dest)
    try:
        got = download(url, dest, source.sha256)
    except DownloadError as exc:
        raise EditbenchError(f"{hint} (download failed: {exc})") from None
    if source.sha256 is None:
        # No copy of this release was available when the checksums were pinned, so there is
        # nothing to verify against; the hash is logged and recorded with every run instead.
        logger.warning(
            "dataset %r: downloaded %s has sha256 %s (no checksum pinned, not verified)",
            source.name, dest, got,
        )
    return dest


@dataclass(frozen=True)
class DatasetGroup:
    """A release published as several files, loaded as one dataset in the order of ``parts``."""

    name: str
    parts: tuple[DatasetSource, ...]
    records: int  # over all parts
    description: str

    def url_env(self) -> str:
        return url_env(self.name)


def resolve_group(group: DatasetGroup, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The local file of every part, downloading the missing ones into the cache.

    Offline (or when a download fails) the error names every file still missing, its URL
    and its place in the cache, in one line.
    """
    found = [find_local(part, data_dir) for part in group.parts]
    missing = [part for part, path in zip(group.parts, found, strict=True) if path is None]
    if not missing:
        return [path for path in found if path is not None]

    def hint(parts: Sequence[DatasetSource]) -> str:
        searched = _search_dirs(data_dir)
        subdir = parts[0].subdir
        return (
            f"dataset {group.name!r}: {len(parts)} of its {len(group.parts)} files not found"
            + (f" in {', '.join(str(d) for d in searched)}" if searched else "")
            + ": download " + ", ".join(f"{p.download_url()} to {p.cache_path()}" for p in parts)
            + f"; or pass --data-dir DIR (a folder holding them, or {subdir}/ holding them)"
        )

    if offline():
        raise EditbenchError(f"{hint(missing)}; {OFFLINE_ENV} is set, so nothing was downloaded")
    for done, part in enumerate(missing):
        url, dest = part.download_url(), part.cache_path()
        logger.warning("downloading dataset %r, file %d of %d missing, from %s to %s",
                       group.name, done + 1, len(missing), url, dest)
        try:
            got = download(url, dest, part.sha256)
        except DownloadError as exc:
            raise EditbenchError(f"{hint(missing[done:])} (download of {url} failed: {exc})") from None
        if part.sha256 is None:
            logger.warning("dataset %r: downloaded %s has sha256 %s (no checksum pinned, not verified)",
                           group.name, dest, got)
    return [path if path is not None else part.cache_path()
            for part, path in zip(group.parts, found, strict=True)]
