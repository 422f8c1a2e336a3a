"""Editing data whose locality prompts the model knows: ``editbench known-facts``.

A locality prompt tests retention only if the unedited model answers it with its gold
answer; on smollm2 most raw zsRE questions get no answer at all and CounterFact's
neighbourhood prompts mostly get free continuations, so "unchanged" there is noise. This
asks a model, by greedy generation, which locality facts of the given sources it knows
(the rule of ``locality_known``: its answer equals the gold after normalization or begins
with it at a word boundary) and writes an editing dataset in which every locality prompt
is one of them:

- every request with at least one known locality prompt of its own is kept, with those
  prompts (CounterFact: neighbourhood prompts, whose answer is the true object; zsRE: its
  Natural Questions pair, distant);
- the edit prompt's own fact (prompt -> true object) is scanned too (how much of the source
  the model knows, in the card);
- a request without a known distant prompt of its own gets one known fact of another
  subject and neither of its objects (a known NQ pair, or a known edit-prompt fact whose
  prompt template differs from the request's), seeded, round robin, so most requests test
  both kinds. CounterFact words one relation several ways, so such a fact may share the
  edit's relation under another wording (e.g. "X, which is located in" and "Y is located
  in the country of"): "distant" here means no shared subject or object.

The result is split by subject into a tuning slice and an evaluation slice that share no
edit subject and no locality prompt (``tune.json``, ``eval.json``, flat format with each
prompt's kind), with ``card.json`` and ``README.md`` saying what was scanned, how much was
known, how long it took, and the files' SHA-256. Runs name them ``known-<model>-tune`` and
``known-<model>-eval`` (built under the user cache) or by path.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editbench.api import EditRequest
from editbench.errors import EditbenchError
from editbench.files import atomic_write_json, atomic_write_text, dumps, sha256_file
from editbench.progress import bar
from editbench.resources import cache_dir

if TYPE_CHECKING:
    from editbench.data.loader import LoadedDataset
    from editbench.models import ModelHandle

PARTS = ("tune", "eval")
_NAME = re.compile(r"^known-(?P<model>.+)-(?P<part>tune|eval)$")
VERSION = 1


@dataclass(frozen=True)
class KnownSettings:
    """How the scan asks and how the result is split (all recorded in the card)."""

    max_new_tokens: int = 16
    batch_size: int = 32
    prompt_format: str = "raw"
    tune_fraction: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.tune_fraction < 1.0:
            raise EditbenchError(f"--tune-fraction: expected a number in (0, 1), got {self.tune_fraction}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EditbenchError("--max-new-tokens and --batch-size: expected positive integers")


def known_dir(model: str) -> Path:
    from editbench.config import hparams_model_key

    return cache_dir("known") / hparams_model_key(model)


def resolve_known(name: str) -> Path | None:
    """The file of ``known-<model>-tune|eval`` (None: not such a name); an error when the
    name is right but the dataset was never built."""
    m = _NAME.match(name)
    if m is None:
        return None
    path = known_dir(m["model"]) / f"{m['part']}.json"
    if not path.is_file():
        raise EditbenchError(f"dataset {name!r}: not built yet ({path} is missing); run "
                             f"`editbench known-facts --model {m['model']}` first")
    return path


def built_known() -> list[tuple[str, Path]]:
    """(name, file) of every known-fact dataset built under the user cache."""
    root = cache_dir("known")
    return [(f"known-{folder.name}-{part}", folder / f"{part}.json")
            for folder in sorted(p for p in root.iterdir() if p.is_dir())
            for part in PARTS if (folder / f"{part}.json").is_file()]


# -- the scan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fact:
    source: str
    case_id: str
    subject: str
    prompt: str
    answer: str
    kind: str  # "edit" (prompt -> true object), or a locality kind


def _facts(name: str, requests: Sequence[EditRequest]) -> list[_Fact]:
    out = []
    for r in requests:
        if r.target_true:
            out.append(_Fact(name, r.case_id, r.subject, r.prompt, r.target_true, "edit"))
        # A prompt of no stated kind could not be labelled in the output: left out.
        out += [_Fact(name, r.case_id, r.subject, loc.prompt, loc.answer, loc.kind)
                for loc in r.locality if loc.kind is not None]
    return out


def scan(handle: ModelHandle, facts: Sequence[_Fact], settings: KnownSettings,
         cache: Path | None = None) -> tuple[dict[_Fact, str], int]:
    """The model's greedy answer to every fact's prompt (in the settings' prompt format), and
    how many distinct prompts were asked now (the others came from ``cache``).

    ``cache`` (JSON lines: a header naming the model and settings, then prompt -> answer)
    keeps every chunk's answers as it finishes, so a killed scan resumes and a dataset built
    again from the same scan (other sources' selection rules, another split) asks nothing
    twice; a cache of another model or other settings is started afresh.
    """
    from editbench.evaluate.generation import generate_answers
    from editbench.evaluate.prompts import format_prompt

    prompts = [format_prompt(f.prompt, settings.prompt_format, handle.tokenizer) for f in facts]
    header = {"model": handle.identity, "max_new_tokens": settings.max_new_tokens,
              "batch_size": settings.batch_size, "prompt_format": settings.prompt_format}
    done = _read_scan(cache, header) if cache is not None else {}
    todo = sorted(set(prompts) - set(done))
    if cache is not None:  # rewritten whole: drops another scan's answers or a cut last line
        atomic_write_text(cache, "".join(dumps(r) + "\n" for r in [
            header, *({"prompt": p, "answer": a} for p, a in done.items())]))
    chunk = 32 * settings.batch_size  # a progress step; batches never cross one
    with bar("known facts", len(todo), "prompt") as pbar:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            answers = generate_answers(handle, part, settings.max_new_tokens, settings.batch_size)
            done.update(zip(part, answers, strict=True))
            if cache is not None:
                with cache.open("a", encoding="utf-8") as fh:
                    fh.writelines(dumps({"prompt": p, "answer": a}) + "\n"
                                  for p, a in zip(part, answers, strict=True))
            pbar.update(len(part))
    return {f: done[p] for f, p in zip(facts, prompts, strict=True)}, len(todo)


def _read_scan(path: Path, header: dict[str, Any]) -> dict[str, str]:
    """The answers of an earlier scan with the same header (none otherwise)."""
    if not path.is_file():
        return {}
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a kill: what follows it is asked again
                break
    if not rows or rows[0] != header:
        return {}
    return {r["prompt"]: r["answer"] for r in rows[1:]}


def build(handle: ModelHandle, sources: Sequence[LoadedDataset], out_dir: Path,
          settings: KnownSettings, model: str) -> dict[str, Any]:
    """Scan ``sources`` with the model, write the two slices and the card; returns the card."""
    from editbench.evaluate.normalize import knows

    facts = [f for s in sources for f in _facts(s.name, s.requests)]
    if not facts:
        raise EditbenchError("known-facts: the sources hold no locality prompt or true object to scan")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    answers, asked = scan(handle, facts, settings, out_dir / "scan.jsonl")
    seconds = time.perf_counter() - t0
    known = {f for f in facts if knows(answers[f], f.answer)}
    kept = _requests_with_known_locality(sources, known)
    # Distant facts: known unrelated questions (zsRE's NQ pairs) and the known facts of edit
    # prompts (prompt -> true object) of subjects no kept request edits (an edited subject's
    # fact is meant to change), each given to requests of another relation.
    edited = {r.subject for _, r, _ in kept}
    distant = _unique(f for f in sorted(known, key=_order)
                      if f.kind == "distant" or (f.kind == "edit" and f.subject not in edited))
    tune_subjects = _split_subjects([r.subject for _, r, _ in kept] + [f.subject for f in distant],
                                    settings)
    slices: dict[str, list[dict[str, Any]]] = {part: [] for part in PARTS}
    pool = {part: [f for f in distant if (f.subject in tune_subjects) == (part == "tune")]
            for part in PARTS}
    rng = random.Random(f"known-facts:{settings.seed}")
    for part in PARTS:
        rng.shuffle(pool[part])
    used: dict[str, int] = {part: 0 for part in PARTS}
    for source, request, own in kept:
        part = "tune" if request.subject in tune_subjects else "eval"
        locality = list(own)
        if not any(f.kind == "distant" for f in locality):
            extra = _next_distant(pool[part], used, part, request)
            if extra is not None:
                locality.append(extra)
        slices[part].append(_record(source, request, locality))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for part in PARTS:
        path = out_dir / f"{part}.json"
        atomic_write_json(path, slices[part])
        files[part] = {"file": path.name, "records": len(slices[part]), "sha256": sha256_file(path),
                       "locality_prompts": sum(len(r["locality_prompt"]) for r in slices[part])}
    card = _card(handle, model, sources, facts, known, files, seconds, settings)
    card["prompts_asked"] = asked  # distinct prompts generated in this build (others cached)
    atomic_write_json(out_dir / "card.json", card)
    atomic_write_text(out_dir / "README.md", _card_text(card))
    return card


def _order(f: _Fact) -> tuple[str, str, str]:
    return (f.source, f.case_id, f.prompt)


def _requests_with_known_locality(sources: Sequence[LoadedDataset], known: set[_Fact]
                                  ) -> list[tuple[str, EditRequest, list[_Fact]]]:
    by_request: dict[tuple[str, str], list[_Fact]] = {}
    for f in known:
        if f.kind != "edit":
            by_request.setdefault((f.source, f.case_id), []).append(f)
    out = []
    for s in sources:
        for r in s.requests:
            own = by_request.get((s.name, r.case_id))
            if own:
                # the request's own order of prompts
                order = {loc.prompt: i for i, loc in enumerate(r.locality)}
                out.append((s.name, r, sorted(own, key=lambda f: order.get(f.prompt, 0))))
    return out


def _unique(facts) -> list[_Fact]:
    """One fact per (prompt, answer): the same fact in two sources counts once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in facts:
        if (f.prompt, f.answer) not in seen:
            seen.add((f.prompt, f.answer))
            out.append(f)
    return out


def _relation(prompt: str, subject: str) -> str:
    """The prompt with its subject taken out: a CounterFact relation template."""
    return prompt.replace(subject, "{}") if subject in prompt else prompt


def _split_subjects(subjects: Sequence[str], settings: KnownSettings) -> set[str]:
    """The tuning slice's subjects: a seeded share of the distinct subjects."""
    subjects = sorted(set(subjects))
    random.Random(f"known-split:{settings.seed}").shuffle(subjects)
    return set(subjects[: round(len(subjects) * settings.tune_fraction)])


def _next_distant(pool: list[_Fact], used: dict[str, int], part: str, r: EditRequest) -> _Fact | None:
    """The next fact of the slice's pool that is unrelated to this request: another subject,
    another relation (prompt template), neither of its objects."""
    relation = _relation(r.prompt, r.subject)
    for _ in range(len(pool)):
        f = pool[used[part] % len(pool)]
        used[part] += 1
        if (f.subject != r.subject and f.answer not in (r.target_new, r.target_true)
                and _relation(f.prompt, f.subject) != relation):
            return dataclasses.replace(f, kind="distant")
    return None


def _record(source: str, r: EditRequest, locality: Sequence[_Fact]) -> dict[str, Any]:
    label = Path(source).stem if "/" in source or source.endswith(".json") else source
    record: dict[str, Any] = {
        "case_id": f"{label}:{r.case_id}", "prompt": r.prompt, "subject": r.subject,
        "target_new": r.target_new, "ground_truth": r.target_true or "",
        "rephrase_prompt": list(r.rephrase_prompts),
        "locality_prompt": [f.prompt for f in locality],
        "locality_ground_truth": [f.answer for f in locality],
        "locality_kind": [f.kind for f in locality],
    }
    if not record["ground_truth"]:
        del record["ground_truth"]
    return record


def _card(handle: ModelHandle, model: str, sources: Sequence[LoadedDataset], facts: Sequence[_Fact],
          known: set[_Fact], files: dict[str, Any], seconds: float, settings: KnownSettings,
          ) -> dict[str, Any]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for f in facts:
        c = counts.setdefault(f.source, {}).setdefault(f.kind, {"scanned": 0, "known": 0})
        c["scanned"] += 1
        c["known"] += f in known
    from dataclasses import asdict

    return {
        "version": VERSION,
        "model": {"name": model, "identity": handle.identity},
        "sources": [{"name": s.name, "path": s.path, "sha256": s.sha256, "requests": len(s.requests)}
                    for s in sources],
        "rule": "known: the greedy answer (cut at '.'/newline) equals the gold after exact-match "
                "normalization or begins with it followed by more words (editbench's knows())",
        "settings": asdict(settings),
        "counts": counts,
        "scan_seconds": round(seconds, 1),
        "prompts_scanned": len(facts),
        "files": files,
        "split": "by edit subject (seeded share tune_fraction of the distinct subjects); distant "
                 "facts borrowed from other requests stay within their owner's slice",
    }


def _card_text(card: dict[str, Any]) -> str:
    lines = [f"# Known-fact editing data for {card['model']['name']}", "",
             "Built by `editbench known-facts`: every locality prompt here is one the unedited "
             "model answers with its gold answer (see card.json for the exact rule and settings).",
             "", "| source | kind | scanned | known | share |", "|---|---|---:|---:|---:|"]
    for source, kinds in card["counts"].items():
        for kind, c in kinds.items():
            share = c["known"] / c["scanned"] if c["scanned"] else 0.0
            lines.append(f"| {source} | {kind} | {c['scanned']} | {c['known']} | {share:.3f} |")
    lines += ["", f"Scan: {card['prompts_scanned']} prompts, {card.get('prompts_asked', '?')} "
              f"distinct ones asked in this build, {card['scan_seconds']} s "
              f"(batch {card['settings']['batch_size']}, {card['settings']['max_new_tokens']} new "
              f"tokens, prompt format {card['settings']['prompt_format']}).", "",
              "| slice | records | locality prompts | sha256 |", "|---|---:|---:|---|"]
    for f in card["files"].values():
        lines.append(f"| {f['file']} | {f['records']} | {f['locality_prompts']} | {f['sha256']} |")
    return "\n".join(lines) + "\n"
