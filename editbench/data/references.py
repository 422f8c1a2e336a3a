"""CounterFact's attribute snippets: the reference texts of the consistency metric.

ROME's ``attribute_snippets.json`` (published beside ``counterfact.json``) is a JSON list of
``{"relation_id": "P103", "target_id": "Q150", "samples": [{"name": ..., "text": ...}]}``:
Wikipedia passages about subjects that have the object ``target_id`` for relation
``relation_id``. A CounterFact request's references are the texts for its
``(requested_rewrite.relation_id, requested_rewrite.target_new.id)``, exactly as ROME's
evaluation gathers them. The request type keeps neither id, so
:func:`attach_attribute_snippets` reads them from the dataset file the requests came from
(ROME's full ``counterfact.json`` layout); requests with no snippets keep no references
and are not scored, which the log says with a count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from editbench.data.sources import DatasetSource, resolve
from editbench.errors import EditbenchError

logger = logging.getLogger(__name__)

SNIPPETS_SOURCE = DatasetSource(
    name="counterfact-attribute-snippets",
    filename="attribute_snippets.json",
    url="https://rome.baulab.info/data/dsets/attribute_snippets.json",
    sha256=None,  # no copy was at hand to hash: see sources.resolve
    subdir="counterfact",
    records=None,  # not known here; never checked for this file
    description="ROME's Wikipedia attribute snippets, keyed by relation and target id",
)

Snippets = dict[tuple[str, str], tuple[str, ...]]


def _load_json(path: Path, what: str) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise EditbenchError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditbenchError(f"{path}: {what} is not valid JSON: {exc}") from None


def read_attribute_snippets(path: str | Path) -> Snippets:
    """``(relation_id, target_id) -> texts`` from an ``attribute_snippets.json`` file."""
    path = Path(path)
    data = _load_json(path, "attribute snippets")
    if not isinstance(data, list):
        raise EditbenchError(f"{path}: expected a JSON list of snippet groups")
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i, group in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(group, Mapping):
            raise EditbenchError(f"{where}: expected an object")
        rid, tid, samples = group.get("relation_id"), group.get("target_id"), group.get("samples")
        if not isinstance(rid, str) or not isinstance(tid, str):
            raise EditbenchError(f"{where}: fields 'relation_id' and 'target_id' must be strings")
        if not isinstance(samples, list):
            raise EditbenchError(f"{where}: field 'samples' must be a list")
        for j, sample in enumerate(samples):
            text = sample.get("text") if isinstance(sample, Mapping) else None
            if not isinstance(text, str):
                raise EditbenchError(f"{where}: samples[{j}]: expected an object with a string 'text'")
            out[(rid, tid)].append(text)
    return {key: tuple(texts) for key, texts in out.items()}


def _rewrite_keys(dataset_path: Path) -> dict[str, tuple[str, str]]:
    """case_id -> (relation_id, target_new.id) from a ROME CounterFact file."""
    data = _load_json(dataset_path, "the CounterFact file")
    if not isinstance(data, list):
        raise EditbenchError(f"{dataset_path}: expected a JSON list of CounterFact records")
    keys: dict[str, tuple[str, str]] = {}
    for i, rec in enumerate(data):
        rw = rec.get("requested_rewrite") if isinstance(rec, Mapping) else None
        if not isinstance(rw, Mapping):
            raise EditbenchError(
                f"{dataset_path}: record {i}: attribute snippets need ROME's full CounterFact "
                "layout ('requested_rewrite' with 'relation_id' and 'target_new.id')"
            )
        target = rw.get("target_new")
        rid, tid = rw.get("relation_id"), target.get("id") if isinstance(target, Mapping) else None
        if not isinstance(rid, str) or not isinstance(tid, str):
            raise EditbenchError(f"{dataset_path}: record {i}: 'requested_rewrite.relation_id' "
                                 "and 'requested_rewrite.target_new.id' must be strings")
        keys[str(rec.get("case_id", i))] = (rid, tid)
    return keys


def attach_attribute_snippets(loaded, snippets: str | Path | None = None, *,
                              data_dir: str | None = None):
    """``loaded`` (a LoadedDataset of ROME CounterFact) with each request's snippets as its
    ``reference_texts``. ``snippets``: a path, or None for the released file (data dir,
    cache, or a download)."""
    path = Path(snippets) if snippets is not None else resolve(SNIPPETS_SOURCE, data_dir)
    if loaded.format != "counterfact_rome":
        raise EditbenchError(
            f"attribute snippets: dataset {loaded.name!r} is in {loaded.format!r} format; they "
            "are keyed by CounterFact relation and target ids, which only ROME's full "
            "counterfact.json carries"
        )
    table = read_attribute_snippets(path)
    keys = _rewrite_keys(Path(loaded.path))
    requests, missing = [], 0
    for r in loaded.requests:
        texts = table.get(keys.get(r.case_id, ("", "")), ())
        missing += not texts
        requests.append(dataclasses.replace(r, reference_texts=texts))
    if missing:
        logger.warning("attribute snippets %s: %d of %d requests have none (their "
                       "consistency is not scored)", path, missing, len(requests))
    return dataclasses.replace(loaded, requests=requests)
