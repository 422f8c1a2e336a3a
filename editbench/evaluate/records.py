"""Per-case records, their aggregation, and the pre-edit records evaluations compare with.

A case record (one request under one protocol) carries everything that was generated or
predicted and a ``scores`` mapping ``metric -> [value per prompt]``. Metrics are rebuilt
from the records alone, so an interrupted evaluation resumes by folding the records it
already wrote (:meth:`Accumulator.add_record`), and anyone can re-score ``cases.jsonl``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editbench.errors import EditbenchError
from editbench.files import read_jsonl


@dataclass
class _Mean:
    total: float = 0.0
    n: int = 0

    def value(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass
class Accumulator:
    """Metric -> mean over cases of the mean over that case's prompts of that kind."""

    means: dict[str, _Mean] = field(default_factory=dict)

    def add(self, key: str, values: Sequence[float]) -> None:
        if values:
            mean = self.means.setdefault(key, _Mean())
            mean.total += sum(values) / len(values)
            mean.n += 1

    def add_record(self, record: dict[str, Any]) -> None:
        for key, values in record["scores"].items():
            self.add(key, values)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: m.value() for k, m in self.means.items()}
        out["n"] = {k: m.n for k, m in self.means.items()}
        return out


class PreEdit:
    """The unedited model's case records, read in the order they were written.

    Backed by a JSONL file (a run's ``pre_edit.jsonl``: memory stays at one chunk however
    many requests a run has) or by a list (tests and benchmarks that keep it in memory).
    """

    def __init__(self, source: Path | list[dict[str, Any]]) -> None:
        self.source = source

    def _records(self) -> Iterator[dict[str, Any]]:
        if isinstance(self.source, list):
            return iter(self.source)
        return (rec for _, rec in read_jsonl(self.source))

    def reader(self) -> PreReader:
        return PreReader(self._records())

    def metrics(self, protocols: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The pre-edit metrics, folded from the records."""
        acc = {p: Accumulator() for p in protocols}
        for rec in self._records():
            if rec["protocol"] in acc:
                acc[rec["protocol"]].add_record(rec)
        return {p: a.result() for p, a in acc.items()}


class PreReader:
    """Forward-only lookup of pre-edit records for consecutive chunks of requests."""

    def __init__(self, records: Iterator[dict[str, Any]]) -> None:
        self._records = records
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}

    def take(self, case_ids: Sequence[str], protocol: str) -> dict[str, dict[str, Any]]:
        """The records of ``case_ids`` under ``protocol``; earlier unread records are skipped."""
        wanted = {(cid, protocol) for cid in case_ids}
        found = {k: self._pending.pop(k) for k in list(self._pending) if k in wanted}
        while len(found) < len(wanted):
            rec = next(self._records, None)
            if rec is None:
                missing = sorted(cid for cid, _ in wanted - set(found))
                raise EditbenchError(
                    f"no pre-edit {protocol} record for case(s) {missing[:3]} "
                    "(the pre-edit baseline does not cover the evaluated requests)"
                )
            key = (str(rec["case_id"]), rec["protocol"])
            if key in wanted:
                found[key] = rec
            elif rec["case_id"] in case_ids:
                self._pending[key] = rec  # another protocol of this chunk
        return {cid: rec for (cid, _), rec in found.items()}
