"""``load_dataset``: a registered name or a file path -> a selected list of ``EditRequest``s."""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
from dataclasses import dataclass
from pathlib import Path

from editbench.api import EditbenchError, EditRequest
from editbench.data.formats import ParsedFile, read_file
from editbench.data.known import resolve_known
from editbench.data.references import attach_attribute_snippets
from editbench.registry import DATASETS

SAMPLES = ("first", "random")


@dataclass(frozen=True)
class LoadedDataset:
    """The requests of a run, with what is needed to say exactly which data produced it."""

    name: str  # registered name or the path given
    path: str  # file actually read
    sha256: str  # of that file
    format: str  # one of formats.FORMATS: "zsre" | "flat" | "counterfact_rome" | ...
    target: str  # which field is the edit target ("alt" | "answers0" | "target_new" | "ans")
    requests: list[EditRequest]
    synthetic: bool = False  # generated requests (scale tests): config.json says so
    files: tuple[tuple[str, str], ...] = ()  # (path, sha256) of each file of a multi-file release

    @classmethod
    def from_parsed(cls, parsed: ParsedFile, *, name: str) -> LoadedDataset:
        return cls(
            name=name,
            path=str(parsed.path),
            sha256=parsed.sha256,
            format=parsed.format,
            target=parsed.target,
            requests=parsed.requests,
        )


def load_path(path: str | os.PathLike[str], *, name: str | None = None, target: str | None = None,
              expected_sha256: str | None = None) -> LoadedDataset:
    """Load any supported file, its format detected from the first record's keys."""
    parsed = read_file(path, target=target, expected_sha256=expected_sha256, source=name)
    return LoadedDataset.from_parsed(parsed, name=name if name is not None else str(path))


def select(requests: list[EditRequest], *, num: int | None = None, sample: str = "first",
           seed: int = 0, what: str = "dataset") -> list[EditRequest]:
    """The first ``num`` requests, or ``num`` drawn by a seeded shuffle.

    A random draw is the prefix of one seeded permutation, so for a fixed seed the smaller
    draws are subsets of the larger ones (edit counts can be scaled without resampling).
    """
    if sample not in SAMPLES:
        raise EditbenchError(f"sample: expected 'first' or 'random', got {sample!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EditbenchError(f"seed: expected an integer, got {seed!r}")
    if num is not None:
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise EditbenchError(f"num: expected a positive integer or None, got {num!r}")
        if num > len(requests):
            raise EditbenchError(f"{what} has {len(requests)} requests, {num} were asked for")
    count = len(requests) if num is None else num
    if sample == "first":
        return list(requests[:count])
    order = list(range(len(requests)))
    random.Random(seed).shuffle(order)
    return [requests[i] for i in order[:count]]


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or Path(text).suffix.lower() in (".json", ".jsonl", ".ndjson")


def load_dataset(name_or_path: str, *, data_dir: str | None = None, num: int | None = None,
                 sample: str = "first", seed: int = 0, target: str | None = None,
                 attribute_snippets: str | bool | None = None) -> LoadedDataset:
    """Load a registered dataset (see :func:`dataset_names`) or a local file, then select.

    ``target`` picks zsRE's edit target: ``"alt"`` (default) or ``"answers0"``.
    ``attribute_snippets`` (ROME CounterFact only): a path to ``attribute_snippets.json``, or
    True for the released file, attached as the requests' reference texts.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise EditbenchError(f"dataset: expected a name or a file path, got {name_or_path!r}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    known = resolve_known(text)
    if known is not None:  # known-<model>-tune|eval, built by `editbench known-facts`
        loaded = load_path(known, name=text, target=target)
    elif path.is_file():
        loaded = load_path(path, name=text, target=target)
    elif text not in DATASETS and _looks_like_path(text):
        raise EditbenchError(f"dataset file {text!r} not found")
    else:
        factory = DATASETS.get(text)  # unknown names fail with a "did you mean"
        # A generated dataset takes the size it is asked for, rather than making more.
        sized = {"num": num} if _takes_num(factory) else {}
        loaded = factory(data_dir=data_dir, target=target, **sized)
        if not isinstance(loaded, LoadedDataset):
            raise EditbenchError(
                f"dataset {text!r}: its loader returned {type(loaded).__name__}, not LoadedDataset"
            )
    requests = select(loaded.requests, num=num, sample=sample, seed=seed, what=f"dataset {text!r}")
    loaded = dataclasses.replace(loaded, requests=requests)
    if attribute_snippets:
        path = None if attribute_snippets is True else attribute_snippets
        loaded = attach_attribute_snippets(loaded, path, data_dir=data_dir)
    return loaded


def _takes_num(factory: object) -> bool:
    try:
        return "num" in inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def dataset_names() -> list[str]:
    """Registered dataset names (built-in and from the ``editbench.datasets`` entry points)."""
    return DATASETS.names()
