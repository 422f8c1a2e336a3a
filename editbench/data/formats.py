"""Reading edit-request files: zsRE/MEND, flat EasyEdit/LocFT, ROME CounterFact, WikiBigEdit,
JSON lines.

Every malformed record fails with one line naming the file, the record (index, or line for
JSON lines, and the case id when there is one), the field and what was expected, because a
benchmark that silently skips or mangles records reports numbers nobody can compare.

Two exceptions, logged with a count: zsRE records whose ``alt`` is an empty string (MEND's
generator produced no alternative; the real train split has some) have no edit target under
the ``alt`` convention and are dropped, as LocFT-BF's own loader does; WikiBigEdit records
whose question, answer or subject the release left empty (it writes missing cells as a bare
``NaN``) are dropped too. They keep their index-based case ids, so the other records' ids
do not move.

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
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editbench.api import (
    LOCALITY_KINDS,
    EditbenchError,
    EditRequest,
    LocalityPrompt,
    PortabilityPrompt,
)
from editbench.files import jsonl_records

logger = logging.getLogger(__name__)

FORMATS = ("zsre", "flat", "counterfact_rome", "wikibigedit", "jsonl", "synthetic")
"""Values of ``LoadedDataset.format``; ``jsonl`` is one record (of any schema) per line,
``synthetic`` the generated requests of :mod:`editbench.data.synthetic` (no file)."""

RECORD_SCHEMAS = ("zsre", "flat", "counterfact_rome", "wikibigedit")

ZSRE_TARGETS = ("alt", "answers0")
"""zsRE edit targets: ``alt`` (EasyEdit, LocFT-BF) or ``answers0`` (ROME/MEMIT/AlphaEdit scripts)."""

_DEFAULT_TARGET = {"zsre": "alt", "flat": "target_new", "counterfact_rome": "target_new",
                   "wikibigedit": "ans"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(value: Any, limit: int = 60) -> str:
    """A repr short enough to keep an error on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Record:
    """One record being parsed: knows how to say where it is when something is wrong."""

    def __init__(self, path: Path, locator: str, data: Mapping[str, Any],
                 timestep: int | None = None) -> None:
        self.path = path
        self.locator = locator  # "record 3" or "line 4"
        self.data = data
        self.timestep = timestep  # of the file's snapshot (WikiBigEdit), set on its requests
        self.case_id: str | None = None

    def where(self) -> str:
        case = f" (case_id {self.case_id})" if self.case_id is not None else ""
        return f"{self.path}: {self.locator}{case}"

    def fail(self, field: str, expected: str, value: Any) -> EditbenchError:
        got = "null" if value is None else f"{_type_name(value)} {_short(value)}"
        return EditbenchError(f"{self.where()}: field {field!r}: expected {expected}, got {got}")

    def missing(self, field: str, expected: str) -> EditbenchError:
        return EditbenchError(f"{self.where()}: field {field!r} is missing (expected {expected})")

    def _value(self, key: str, field: str | None, expected: str, required: bool,
               container: Mapping[str, Any] | None) -> tuple[str, Any]:
        """(field name, value); an absent key (or a null optional one) gives None."""
        field = field or key
        source = self.data if container is None else container
        if key not in source:
            if required:
                raise self.missing(field, expected)
            return field, None
        value = source[key]
        if value is None and required:
            raise self.fail(field, expected, value)
        return field, value

    # -- typed getters ----------------------------------------------------------------

    def string(self, key: str, *, container: Mapping[str, Any] | None = None,
               field: str | None = None) -> str:
        """A required non-empty string (whitespace-only counts as empty)."""
        expected = "a non-empty string"
        field, value = self._value(key, field, expected, True, container)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, expected, value)
        return value

    def strings(self, key: str, *, required: bool = False, allow_str: bool = True,
                container: Mapping[str, Any] | None = None, field: str | None = None) -> list[str]:
        """A list of non-empty strings (or one string, with ``allow_str``); absent: []."""
        expected = ("a non-empty string or " if allow_str else "") + "a list of non-empty strings"
        field, value = self._value(key, field, expected, required, container)
        if value is None:
            return []
        if allow_str and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(field, expected, value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{field}[{i}]", "a non-empty string", item)
        return list(value)

    def mapping(self, key: str, *, container: Mapping[str, Any] | None = None,
                field: str | None = None) -> Mapping[str, Any]:
        field, value = self._value(key, field, "an object", True, container)
        if not isinstance(value, Mapping):
            raise self.fail(field, "an object", value)
        return value

    def case(self, *, required: bool = False, default: str) -> str:
        """The case id as a string: an integer or a non-empty string in the file."""
        expected = "an integer or a non-empty string"
        _, value = self._value("case_id", None, expected, required, None)
        if value is None:
            self.case_id = default
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not value.strip()
        ):
            raise self.fail("case_id", expected, value)
        self.case_id = str(value)
        return self.case_id


# -- record schemas -------------------------------------------------------------------


def _parse_zsre(rec: _Record, default_id: str, target: str) -> EditRequest | None:
    """MEND/zsRE: ``subject, src, rephrase, alt, answers[], loc, loc_ans`` (``pred, cond`` ignored).

    None: an empty ``alt`` under the ``alt`` target, a record with nothing to edit toward.
    """
    case_id = rec.case(default=default_id)
    alt = rec.data.get("alt")
    if target == "alt" and isinstance(alt, str) and not alt.strip():
        return None
    subject = rec.string("subject")
    prompt = rec.string("src")
    answers = rec.strings("answers", required=True, allow_str=False)
    if not answers:
        raise rec.fail("answers", "a non-empty list of strings", [])
    target_true: str | None
    if target == "alt":
        target_new, target_true = rec.string("alt"), answers[0]
    else:
        # ROME/MEMIT edit toward answers[0]; the "true" object is then unknown (ROME writes
        # a placeholder), so it is left out rather than set equal to the target.
        target_new, target_true = answers[0], None
    rephrase = rec.string("rephrase")
    loc = rec.string("loc")  # e.g. "nq question: who sings ...": kept exactly as released
    loc_ans = rec.string("loc_ans")
    return EditRequest(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        target_true=target_true,
        rephrase_prompts=(rephrase,),
        locality=(LocalityPrompt(loc, loc_ans, "distant"),),  # NQ questions: unrelated
        timestep=rec.timestep,
    )


def _flat_kinds(rec: _Record, count: int) -> list[str | None]:
    """``locality_kind``: absent, one kind for every locality prompt, or one per prompt."""
    value = rec.data.get("locality_kind")
    expected = f"one of {list(LOCALITY_KINDS)}, or a list of {count} of them"
    if value is None:
        return [None] * count
    kinds = [value] * count if isinstance(value, str) else value
    if not isinstance(kinds, list) or len(kinds) != count:
        raise rec.fail("locality_kind", expected, value)
    for i, kind in enumerate(kinds):
        if kind not in LOCALITY_KINDS:
            raise rec.fail(f"locality_kind[{i}]" if isinstance(value, list) else "locality_kind",
                           f"one of {list(LOCALITY_KINDS)}", kind)
    return list(kinds)


def _flat_answers(rec: _Record, value: Any, field: str) -> list[str]:
    """Locality answers: a string, or a list whose items are strings or lists of aliases."""
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value:
        out = []
        for i, item in enumerate(value):
            if isinstance(item, list) and item and isinstance(item[0], str) and item[0].strip():
                item = item[0]  # a list of acceptable aliases: the first one is the answer
            if not isinstance(item, str) or not item.strip():
                raise rec.fail(f"{field}[{i}]", "a non-empty string", item)
            out.append(item)
        return out
    raise rec.fail(field, "a non-empty string or a list of non-empty strings", value)


def _first_answer(rec: _Record, value: Any, field: str) -> str:
    """KnowEdit's ``ground_truth``: a string, a list of answers, or a list of alias lists;
    the first alias of the first answer is the answer (EasyEdit's reading)."""
    while isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise rec.fail(field, "a non-empty string, or a (nested) list starting with one", value)
    return value


def _knowedit_portability(rec: _Record) -> tuple[PortabilityPrompt, ...]:
    """KnowEdit's ``portability: {Reasoning: [{prompt, ground_truth}], Subject_Aliasing:
    [...], Logical_Generalization: [...]}``; the kind is the key in lower case."""
    value = rec.data.get("portability")
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise rec.fail("portability", "an object of kind -> list of {prompt, ground_truth}", value)
    out: list[PortabilityPrompt] = []
    for key, items in value.items():
        field = f"portability.{key}"
        if not isinstance(items, list):
            raise rec.fail(field, "a list of {prompt, ground_truth} objects", items)
        for i, item in enumerate(items):
            where = f"{field}[{i}]"
            if not isinstance(item, Mapping):
                raise rec.fail(where, "an object with 'prompt' and 'ground_truth'", item)
            prompt = rec.string("prompt", container=item, field=f"{where}.prompt")
            if "ground_truth" not in item:
                raise rec.missing(f"{where}.ground_truth", "the answer to the prompt")
            answer = _first_answer(rec, item["ground_truth"], f"{where}.ground_truth")
            out.append(PortabilityPrompt(prompt, answer, str(key).lower()))
    return tuple(out)


def _parse_flat(rec: _Record, default_id: str, target: str) -> EditRequest:
    """EasyEdit/LocFT flat records (KnowEdit's too); rephrase, locality and KnowEdit's
    ``portability`` are optional, unknown extras ignored."""
    case_id = rec.case(default=default_id)
    prompt = rec.string("prompt")
    subject = rec.string("subject")
    target_new = rec.string("target_new")
    truths = rec.strings("ground_truth")
    rephrases = rec.strings("rephrase_prompt")
    loc_prompts = rec.strings("locality_prompt")
    loc_value = rec.data.get("locality_ground_truth")
    locality: list[LocalityPrompt] = []
    if loc_prompts or loc_value not in (None, []):  # empty lists: no locality prompts
        if not loc_prompts:
            raise rec.missing("locality_prompt", "a prompt for 'locality_ground_truth'")
        if loc_value is None:
            raise rec.missing("locality_ground_truth", "the answer to 'locality_prompt'")
        answers = _flat_answers(rec, loc_value, "locality_ground_truth")
        if len(loc_prompts) > 1 and len(answers) == 1:
            answers = answers * len(loc_prompts)  # one answer shared by all prompts
        elif len(loc_prompts) == 1 and len(answers) > 1:
            answers = answers[:1]  # a list of acceptable answers to one prompt
        if len(answers) != len(loc_prompts):
            raise rec.fail(
                "locality_ground_truth",
                f"{len(loc_prompts)} answers (one per locality prompt)",
                loc_value,
            )
        kinds = _flat_kinds(rec, len(loc_prompts))
        locality = [LocalityPrompt(p, a, k) for p, a, k in zip(loc_prompts, answers, kinds, strict=True)]
    return EditRequest(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        target_true=truths[0] if truths else None,
        rephrase_prompts=tuple(rephrases),
        locality=tuple(locality),
        portability=_knowedit_portability(rec),
        timestep=rec.timestep,
    )


def _parse_counterfact_rome(rec: _Record, default_id: str, target: str) -> EditRequest:
    """ROME's ``counterfact.json``: neighbourhood prompts share the true object, so it is
    their locality answer; generation prompts (about the subject, for fluency and
    consistency) are kept; attribute prompts are not edit requests."""
    case_id = rec.case(required=True, default=default_id)
    rw = rec.mapping("requested_rewrite")
    template = rec.string("prompt", container=rw, field="requested_rewrite.prompt")
    subject = rec.string("subject", container=rw, field="requested_rewrite.subject")
    new = rec.mapping("target_new", container=rw, field="requested_rewrite.target_new")
    true = rec.mapping("target_true", container=rw, field="requested_rewrite.target_true")
    target_new = rec.string("str", container=new, field="requested_rewrite.target_new.str")
    target_true = rec.string("str", container=true, field="requested_rewrite.target_true.str")
    if template.count("{}") != 1:
        raise rec.fail("requested_rewrite.prompt", "a template with one '{}' for the subject", template)
    try:
        prompt = template.format(subject)
    except (IndexError, KeyError, ValueError) as exc:
        raise rec.fail("requested_rewrite.prompt", f"a str.format template ({exc})", template) from None
    paraphrases = rec.strings("paraphrase_prompts", allow_str=False)
    neighbours = rec.strings("neighborhood_prompts", allow_str=False)
    generation_prompts = rec.strings("generation_prompts", allow_str=False)
    return EditRequest(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        target_true=target_true,
        rephrase_prompts=tuple(paraphrases),
        locality=tuple(LocalityPrompt(p, target_true, "neighbourhood") for p in neighbours),
        generation_prompts=tuple(generation_prompts),
        timestep=rec.timestep,
    )


def _absent(value: Any) -> bool:
    """Null, NaN (pandas writes a missing cell as a bare ``NaN``) or a blank string."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()))


def _optional_strings(rec: _Record, key: str) -> list[str]:
    """A string or a list of strings that may be absent (null, NaN, blank): absent gives []."""
    value = rec.data.get(key)
    if _absent(value):
        return []
    if isinstance(value, list):
        items = [item for item in value if not _absent(item)]
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise rec.fail(f"{key}[{i}]", "a string", item)
        return items
    if not isinstance(value, str):
        raise rec.fail(key, "a string, a list of strings or null", value)
    return [value]


def _parse_wikibigedit(rec: _Record, default_id: str, target: str) -> EditRequest | None:
    """WikiBigEdit: ``subject, update, ans, rephrase, personas, loc, loc_ans, mhop, mhop_ans``.

    ``update`` -> ``ans`` is the edit; ``rephrase`` the paraphrase; ``loc`` -> ``loc_ans`` a
    question about a similar fact that must not change (neighbourhood); the persona-styled
    question and the multi-hop one are kept as portability prompts of kinds ``personas``
    and ``mhop``, so generalization stays the paper's rephrase score. None: the release
    left the question, the answer or the subject empty (null or NaN), nothing to edit.
    """
    case_id = rec.case(default=default_id)
    if any(_absent(rec.data.get(key)) for key in ("update", "ans", "subject")):
        return None
    prompt = rec.string("update")
    target_new = rec.string("ans")
    subject = rec.string("subject")
    rephrases = _optional_strings(rec, "rephrase")
    locality: tuple[LocalityPrompt, ...] = ()
    loc, loc_ans = _optional_strings(rec, "loc"), _optional_strings(rec, "loc_ans")
    if loc and loc_ans:
        locality = (LocalityPrompt(loc[0], loc_ans[0], "neighbourhood"),)
    portability = [PortabilityPrompt(p, target_new, "personas") for p in _optional_strings(rec, "personas")]
    mhop, mhop_ans = _optional_strings(rec, "mhop"), _optional_strings(rec, "mhop_ans")
    if mhop and mhop_ans:
        portability.append(PortabilityPrompt(mhop[0], mhop_ans[0], "mhop"))
    return EditRequest(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        rephrase_prompts=tuple(rephrases),
        locality=locality,
        portability=tuple(portability),
        timestep=rec.timestep,
    )


_PARSERS: dict[str, Callable[[_Record, str, str], EditRequest | None]] = {
    "zsre": _parse_zsre,
    "flat": _parse_flat,
    "counterfact_rome": _parse_counterfact_rome,
    "wikibigedit": _parse_wikibigedit,
}

_DROPPED = {
    "zsre": "zsRE records with an empty 'alt' (nothing to edit toward under target 'alt'; "
            "use target 'answers0' to keep them)",
    "wikibigedit": "WikiBigEdit records whose 'update', 'ans' or 'subject' is null, NaN or "
                   "empty (nothing to edit toward)",
}
"""Why a schema's parser returned None for a record, for the one warning that counts them."""


def detect_schema(record: Any, where: str) -> str:
    """Which record schema a record follows, from its keys."""
    if not isinstance(record, Mapping):
        raise EditbenchError(f"{where}: expected a JSON object, got {_type_name(record)} {_short(record)}")
    keys = set(record)
    if "requested_rewrite" in keys:
        return "counterfact_rome"
    if "src" in keys and ("alt" in keys or "answers" in keys):
        return "zsre"
    if "prompt" in keys and "target_new" in keys:
        return "flat"
    if "update" in keys and "ans" in keys:
        return "wikibigedit"
    raise EditbenchError(
        f"{where}: cannot tell the format from keys {sorted(keys)[:12]}: expected zsRE "
        "('src', 'alt', 'answers'), flat ('prompt', 'subject', 'target_new'), ROME "
        "CounterFact ('requested_rewrite') or WikiBigEdit ('update', 'ans')"
    )


def resolve_target(schema: str, target: str | None, path: Path) -> str:
    """The edit-target field; ``target`` only chooses between zsRE's two conventions."""
    if target is None:
        return _DEFAULT_TARGET[schema]
    allowed = ZSRE_TARGETS if schema == "zsre" else (_DEFAULT_TARGET[schema],)
    if target not in allowed:
        raise EditbenchError(
            f"{path}: target {target!r} does not apply to a {schema} file "
            f"(expected {' or '.join(repr(a) for a in allowed)})"
        )
    return target




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
        raise EditbenchError(f"{path}: expected a JSON list of records, got {_type_name(data)}")
    return data


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in _JSONL_SUFFIXES:
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
    parse: Callable[[_Record, str, str], EditRequest | None] | None = None
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
            parse = _PARSERS[schema]
        if not isinstance(data, Mapping):
            raise EditbenchError(
                f"{path}: {locator}: expected a JSON object, got {_type_name(data)} {_short(data)}"
            )
        rec = _Record(path, locator, data, timestep)
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
        logger.warning("%s: dropped %d %s: %s", path, len(dropped), _DROPPED[schema], shown)
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
            jsonl = head == b"{" and (suffix in _JSONL_SUFFIXES
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
