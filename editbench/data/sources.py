"""Where a named dataset's file comes from: a data dir, the user cache, or its canonical URL.

Resolution order: ``data_dir`` (argument) and ``$EDITBENCH_DATA_DIR``, each either flat
(``DIR/zsre_3k.json``) or in the shared layout (``DIR/zsre/zsre_3k.json``); then the user
cache ``cache_dir("data")``; then a download into that cache. Downloads are atomic (a temp
file in the cache folder, then ``os.replace``) and checked against a pinned SHA-256, so a
cache never holds a partial or wrong file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from editbench.errors import EditbenchError
from editbench.files import atomic_write
from editbench.resources import cache_dir

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "EDITBENCH_DATA_DIR"
OFFLINE_ENV = "EDITBENCH_OFFLINE"
URL_ENV_PREFIX = "EDITBENCH_DATA_URL_"
DOWNLOAD_TIMEOUT_S = 60.0

URL_OVERRIDES: dict[str, str] = {}
"""Dataset name -> URL used instead of the canonical one (mirrors, tests); the environment
variable ``EDITBENCH_DATA_URL_<NAME>`` (name upper-cased, ``-`` -> ``_``) wins over it."""


@dataclass(frozen=True)
class DatasetSource:
    """A released dataset file: where it is published and what it must hash to."""

    name: str
    filename: str
    url: str
    sha256: str | None  # None: never had a copy to hash; downloads log their hash instead
    subdir: str  # folder of the shared layout, e.g. "zsre" for DIR/zsre/zsre_3k.json
    records: int  # how many records the released file holds
    description: str
    locality_kind: str | None = None  # what its locality prompts are, where records do not say

    def url_env(self) -> str:
        return URL_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()

    def download_url(self) -> str:
        return os.environ.get(self.url_env()) or URL_OVERRIDES.get(self.name) or self.url

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
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
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
