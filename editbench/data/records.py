"""Edit-request records: zsRE/MEND, flat EasyEdit/LocFT (and KnowEdit), ROME CounterFact
and WikiBigEdit, each parsed into an :class:`~editbench.api.EditRequest`.

Every malformed record fails with one line naming the file, the record (index, or line for
JSON lines, and the case id when there is one), the field and what was expected, because a
benchmark that silently skips or mangles records reports numbers nobody can compare.

Two exceptions, logged with a count by the reader: zsRE records whose ``alt`` is an empty
string (MEND's generator produced no alternative; the real train split has some) have no
edit target under the ``alt`` convention and are dropped, as LocFT-BF's own loader does;
WikiBigEdit records whose question, answer or subject the release left empty (it writes
missing cells as a bare ``NaN``) are dropped too. They keep their index-based case ids, so
the other records' ids do not move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from editbench.api import (
    LOCALITY_KINDS,
    EditbenchError,
    EditRequest,
    LocalityPrompt,
    PortabilityPrompt,
)

FORMATS = ("zsre", "flat", "counterfact_rome", "wikibigedit", "jsonl", "synthetic")
"""Values of ``LoadedDataset.format``; ``jsonl`` is one record (of any schema) per line,
``synthetic`` the generated requests of :mod:`editbench.data.synthetic` (no file)."""

RECORD_SCHEMAS = ("zsre", "flat", "counterfact_rome", "wikibigedit")

ZSRE_TARGETS = ("alt", "answers0")
"""zsRE edit targets: ``alt`` (EasyEdit, LocFT-BF) or ``answers0`` (ROME/MEMIT/AlphaEdit scripts)."""

_DEFAULT_TARGET = {"zsre": "alt", "flat": "target_new", "counterfact_rome": "target_new",
                   "wikibigedit": "ans"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")



def short(value: Any, limit: int = 60) -> str:
    """A repr short enough to keep an error on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class Record:
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
        got = "null" if value is None else f"{type_name(value)} {short(value)}"
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


def _parse_zsre(rec: Record, default_id: str, target: str) -> EditRequest | None:
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


def _flat_kinds(rec: Record, count: int) -> list[str | None]:
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


def _flat_answers(rec: Record, value: Any, field: str) -> list[str]:
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


def _first_answer(rec: Record, value: Any, field: str) -> str:
    """KnowEdit's ``ground_truth``: a string, a list of answers, or a list of alias lists;
    the first alias of the first answer is the answer (EasyEdit's reading)."""
    while isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise rec.fail(field, "a non-empty string, or a (nested) list starting with one", value)
    return value


def _knowedit_portability(rec: Record) -> tuple[PortabilityPrompt, ...]:
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


def _parse_flat(rec: Record, default_id: str, target: str) -> EditRequest:
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
        if all(k is None for k in kinds) and truths and all(a == truths[0] for a in answers):
            # CounterFact's neighbourhood prompts: the same relation about other subjects
            # that have the true object (the flat files carry no kind; this is their mark).
            kinds = ["neighbourhood"] * len(kinds)
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


def _parse_counterfact_rome(rec: Record, default_id: str, target: str) -> EditRequest:
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


def _optional_strings(rec: Record, key: str) -> list[str]:
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


def _parse_wikibigedit(rec: Record, default_id: str, target: str) -> EditRequest | None:
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


PARSERS: dict[str, Callable[[Record, str, str], EditRequest | None]] = {
    "zsre": _parse_zsre,
    "flat": _parse_flat,
    "counterfact_rome": _parse_counterfact_rome,
    "wikibigedit": _parse_wikibigedit,
}

DROPPED = {
    "zsre": "zsRE records with an empty 'alt' (nothing to edit toward under target 'alt'; "
            "use target 'answers0' to keep them)",
    "wikibigedit": "WikiBigEdit records whose 'update', 'ans' or 'subject' is null, NaN or "
                   "empty (nothing to edit toward)",
}
"""Why a schema's parser returned None for a record, for the one warning that counts them."""


def detect_schema(record: Any, where: str) -> str:
    """Which record schema a record follows, from its keys."""
    if not isinstance(record, Mapping):
        raise EditbenchError(f"{where}: expected a JSON object, got {type_name(record)} {short(record)}")
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
