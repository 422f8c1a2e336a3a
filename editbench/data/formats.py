"""Reading edit-request files: a JSON array or JSON lines, streamed, hashed, each record
parsed by its schema (``records.py``).

Files are read as a stream (a JSON array one record at a time, JSON lines one line at a
time) and hashed as they are read, so a 500K-record release never sits in memory as text
and as a list of dicts at once: only the parsed requests are kept.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editbench.api import EditbenchError, EditRequest
from editbench.data.records import (
    DROPPED,
    FORMATS,
    JSONL_SUFFIXES,
    PARSERS,
    RECORD_SCHEMAS,
    ZSRE_TARGETS,
    Record,
    detect_schema,
    resolve_target,
    short,
    type_name,
)
from editbench.files import jsonl_records

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ParsedFile:
    """What one file held: its requests, its record schema and container, its hash."""

    path: Path
    sha256: str
    format: str  # one of FORMATS
    schema: str  # one of RECORD_SCHEMAS
    target: str
    requests: list[EditRequest]
    num_records: int  # records in the file, including dropped ones
    dropped: tuple[str, ...]  # where the dropped records are ("record 534", ...)

__all__ = ["FORMATS", "RECORD_SCHEMAS", "ZSRE_TARGETS", "ParsedFile", "parse_text", "read_file"]

# -- files ----------------------------------------------------------------------------

READ_CHUNK = 1 << 20
"""Bytes read at a time; a streamed file holds about this much text in memory."""
MAX_RECORD_CHARS = 64 << 20
"""A record that does not parse within this many characters is reported as invalid JSON."""

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*\Z")


def _json_records(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EditbenchError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise EditbenchError(f"{path}: expected a JSON list of records, got {type_name(data)}")
    return data


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    if path.suffix.lower() == ".json":
        return False
    # No telling suffix: a file starting with an object and holding several lines is JSON lines.
    stripped = text.lstrip()
    return stripped.startswith("{") and len([ln for ln in stripped.split("\n") if ln.strip()]) > 1


class _Text:
    """UTF-8 text decoded chunk by chunk from a byte stream, hashing the bytes it reads.

    ``buf`` holds the text not consumed yet (from ``pos``); ``line``/``col`` say where
    ``buf[0]`` sits in the file, so errors name a line and column like ``json.loads``.
    """

    def __init__(self, path: Path, chunks: Iterator[bytes], digest: Any) -> None:
        self.path, self.chunks, self.digest = path, chunks, digest
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.eof = "", 0, False
        self.bytes_read = 0
        self.line, self.col = 0, 0  # newlines before buf[0], characters since the last one

    def more(self, at_least: int = 0) -> bool:
        """Append the next chunk(s) (at least ``at_least`` bytes); False at the end of the file."""
        if self.eof:
            return False
        self._drop_consumed()
        got = 0
        while not self.eof and (got == 0 or got < at_least):
            data = next(self.chunks, b"")
            self.digest.update(data)
            start = self.bytes_read - len(self.decoder.buffer)
            try:
                self.buf += self.decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise EditbenchError(f"{self.path}: not UTF-8 text (byte {start + exc.start})") from None
            self.bytes_read += len(data)
            got += len(data)
            self.eof = not data
        return True

    def drain(self) -> None:
        """Hash the rest of the file unread (to tell a corrupt file from a wrong one)."""
        for data in self.chunks:
            self.digest.update(data)
        self.eof = True

    def _drop_consumed(self) -> None:
        if not self.pos:
            return
        newlines = self.buf.count("\n", 0, self.pos)
        if newlines:
            self.line += newlines
            self.col = self.pos - self.buf.rfind("\n", 0, self.pos) - 1
        else:
            self.col += self.pos
        self.buf, self.pos = self.buf[self.pos:], 0

    def where(self, index: int) -> str:
        newlines = self.buf.count("\n", 0, index)
        col = index - self.buf.rfind("\n", 0, index) if newlines else self.col + index + 1
        return f"line {self.line + newlines + 1} column {col}"

    def invalid(self, msg: str, index: int) -> EditbenchError:
        return EditbenchError(f"{self.path}: invalid JSON at {self.where(index)}: {msg}")

    def skip_ws(self) -> str:
        """The next non-whitespace character (not consumed), or "" at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""


def _iter_json_array(text: _Text) -> Iterator[Any]:
    """The items of the top-level JSON array in ``text``, one at a time (``[`` not consumed yet).

    Each item is decoded with ``JSONDecoder.raw_decode`` from the buffered text; an item cut
    by the end of the buffer is retried with more text, so memory stays at about one chunk
    plus the item being decoded.
    """
    decoder = json.JSONDecoder()  # like json.loads: NaN and Infinity are accepted
    text.skip_ws()
    text.pos += 1  # the "["
    if text.skip_ws() == "]":
        text.pos += 1
    else:
        while True:
            if text.skip_ws() == "":
                raise text.invalid("Expecting value", text.pos)
            while True:
                try:
                    value, end = decoder.raw_decode(text.buf, text.pos)
                except json.JSONDecodeError as exc:
                    near_end = exc.pos >= len(text.buf) - 8 or exc.msg.startswith("Unterminated string")
                    if text.eof or not near_end:
                        raise text.invalid(exc.msg, exc.pos) from None
                    if len(text.buf) - text.pos > MAX_RECORD_CHARS:
                        raise text.invalid(f"{exc.msg} (or a record over {MAX_RECORD_CHARS >> 20} MiB)",
                                           exc.pos) from None
                else:
                    # A number or literal followed only by what could continue it (up to
                    # the end of the buffer) may go on in the next chunk: "12" of "12.5".
                    if text.eof or text.buf[end - 1] in '}]"' or not _NUMBER_TAIL.match(text.buf, end):
                        break
                text.more(at_least=len(text.buf) - text.pos)  # doubling: linear in the record
            text.pos = end
            nxt = text.skip_ws()  # checked before the item goes out, as json.loads would
            if nxt not in (",", "]"):
                raise text.invalid("Expecting ',' delimiter", text.pos)
            yield value
            text.pos += 1
            if nxt == "]":
                break
    if text.skip_ws() != "":
        raise text.invalid("Extra data", text.pos)


def _iter_lines(text: _Text) -> Iterator[str]:
    """The lines of ``text`` split on "\\n" only (as ``jsonl_records`` needs them)."""
    while True:
        cut = text.buf.find("\n", text.pos)
        while cut < 0 and text.more():
            cut = text.buf.find("\n", text.pos)
        if cut < 0:
            if text.pos < len(text.buf):
                yield text.buf[text.pos:]
                text.pos = len(text.buf)
            return
        yield text.buf[text.pos:cut]
        text.pos = cut + 1


def _parse_items(path: Path, fmt: str, items: Iterable[tuple[str, Any]], *, target: str | None,
                 timestep: int | None = None, case_prefix: str = "") -> ParsedFile:
    """Parse ``(locator, record)`` pairs as they come; raises on the first bad record.

    ``case_prefix`` goes before index-based case ids (records without ``case_id``), so the
    files of one release keep distinct ids.
    """
    parse: Callable[[Record, str, str], EditRequest | None] | None = None
    schema = ""
    requests: list[EditRequest] = []
    dropped: list[str] = []
    first_seen: dict[str, str] = {}
    count = 0
    for index, (locator, data) in enumerate(items):
        count += 1
        if parse is None:
            schema = detect_schema(data, f"{path}: {locator}")
            fmt = fmt or schema
            target = resolve_target(schema, target, path)
            parse = PARSERS[schema]
        if not isinstance(data, Mapping):
            raise EditbenchError(
                f"{path}: {locator}: expected a JSON object, got {type_name(data)} {short(data)}"
            )
        rec = Record(path, locator, data, timestep)
        request = parse(rec, f"{case_prefix}{index}", target)
        if request is None:
            dropped.append(locator)
            continue
        if request.case_id in first_seen:
            raise EditbenchError(
                f"{rec.where()}: field 'case_id': duplicate of {first_seen[request.case_id]}"
            )
        first_seen[request.case_id] = locator
        requests.append(request)
    if parse is None or target is None:
        raise EditbenchError(f"{path}: no records")
    missing_subject = sum(1 for r in requests if r.subject not in r.prompt)
    if missing_subject:
        # Locate-then-edit editors (ROME, MEMIT, AlphaEdit) find the subject's last token in
        # the prompt; they cannot edit these requests as given.
        logger.warning(
            "%s: %d of %d requests do not contain their subject verbatim in the prompt",
            path, missing_subject, len(requests),
        )
    if dropped:
        shown = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        logger.warning("%s: dropped %d %s: %s", path, len(dropped), DROPPED[schema], shown)
    if not requests:
        raise EditbenchError(f"{path}: no usable records (all {count} were dropped)")
    return ParsedFile(path, "", fmt, schema, target, requests, count, tuple(dropped))


def parse_text(path: Path, text: str, *, target: str | None = None, timestep: int | None = None,
               case_prefix: str = "") -> ParsedFile:
    """Parse a file's whole text (``sha256`` left empty); raises on the first bad record."""
    if _is_jsonl(path, text):
        items: Iterable[tuple[str, Any]] = (
            (f"line {lineno}", rec) for lineno, rec in jsonl_records(text.split("\n"), path))
        return _parse_items(path, "jsonl", items, target=target, timestep=timestep,
                            case_prefix=case_prefix)
    records = _json_records(path, text)
    return _parse_items(path, "", ((f"record {i}", rec) for i, rec in enumerate(records)),
                        target=target, timestep=timestep, case_prefix=case_prefix)


def _chunks(fh: Any) -> Iterator[bytes]:
    while data := fh.read(READ_CHUNK):
        yield data


def _checksum_error(path: Path, digest: str, expected: str, source: str | None) -> EditbenchError:
    what = f" for dataset {source!r}" if source else ""
    return EditbenchError(
        f"{path}: sha256 {digest} does not match the released file{what} "
        f"(expected {expected}); replace it, or pass the path itself to load it unverified"
    )


def read_file(path: str | Path, *, target: str | None = None, expected_sha256: str | None = None,
              source: str | None = None, locality_kind: str | None = None,
              timestep: int | None = None, case_prefix: str = "") -> ParsedFile:
    """Read, hash (and check against ``expected_sha256``) and parse one file, streamed.

    ``locality_kind``: what a named release's locality prompts are, for records that do not
    say (the LocFT-BF CounterFact sample keeps only the neighbourhood prompts).
    ``timestep``: set on every request (the file is one snapshot of a release);
    ``case_prefix``: put before index-based case ids (see :func:`_parse_items`).

    A JSON array, or JSON lines (by suffix, or a large file starting with an object),
    is parsed as it is read; anything else (small, or not a dataset) is read whole, as the
    error messages need. With a checksum, a file that fails to parse is reported as not
    matching it when that is why.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        fh = path.open("rb")
    except IsADirectoryError:
        raise EditbenchError(f"{path}: is a directory, expected a dataset file") from None
    except OSError as exc:
        raise EditbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    options: dict[str, Any] = {"target": target, "timestep": timestep, "case_prefix": case_prefix}
    with fh:
        text: _Text | None = None
        try:
            first = fh.read(READ_CHUNK)
            head = first.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
            suffix = path.suffix.lower()
            jsonl = head == b"{" and (suffix in JSONL_SUFFIXES
                                      or (suffix != ".json" and len(first) == READ_CHUNK))
            if head == b"[" or jsonl:
                text = _Text(path, itertools.chain([first], _chunks(fh)), digest)
                if jsonl:
                    items: Iterable[tuple[str, Any]] = (
                        (f"line {n}", rec) for n, rec in jsonl_records(_iter_lines(text), path))
                else:
                    items = ((f"record {i}", rec) for i, rec in enumerate(_iter_json_array(text)))
                parsed = _parse_items(path, "jsonl" if jsonl else "", items, **options)
            else:
                # Small, or not a list of records: read whole, for json.loads' own messages.
                data = first + fh.read()
                digest.update(data)
                try:
                    whole = data.decode("utf-8-sig")
                except UnicodeDecodeError as exc:
                    raise EditbenchError(f"{path}: not UTF-8 text (byte {exc.start})") from None
                parsed = parse_text(path, whole, **options)
        except EditbenchError:
            if expected_sha256 is not None:
                if text is not None:
                    text.drain()
                if digest.hexdigest() != expected_sha256:
                    raise _checksum_error(path, digest.hexdigest(), expected_sha256, source) from None
            raise
        except OSError as exc:
            raise EditbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise _checksum_error(path, digest.hexdigest(), expected_sha256, source)
    if locality_kind is not None:
        parsed = dataclasses.replace(parsed, requests=[_default_kind(r, locality_kind) for r in parsed.requests])
    return dataclasses.replace(parsed, sha256=digest.hexdigest())


def _default_kind(request: EditRequest, kind: str) -> EditRequest:
    if all(loc.kind is not None for loc in request.locality):
        return request
    locality = tuple(loc if loc.kind is not None else dataclasses.replace(loc, kind=kind)
                     for loc in request.locality)
    return dataclasses.replace(request, locality=locality)
