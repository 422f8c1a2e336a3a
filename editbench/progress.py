"""The one place long work reports progress (tqdm on stderr; EDITBENCH_PROGRESS=0 hides it)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("EDITBENCH_PROGRESS", "1") != "0"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(), leave=False))


def bar(desc: str, total: int | None, unit: str = "it") -> tqdm:
    return tqdm(desc=desc, total=total, unit=unit, disable=not enabled(), leave=False)
