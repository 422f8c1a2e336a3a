"""The named datasets. Registering is free: no file is read or fetched until one is loaded.

A registered dataset is a callable ``(*, data_dir, target) -> LoadedDataset`` returning all
of its requests (``load_dataset`` does the selection); one that also takes ``num`` (a
generated dataset) is handed the number of requests asked for and returns exactly those.
Third-party packages register theirs the same way, with ``@register_dataset`` or the
``editbench.datasets`` entry-point group.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from editbench.data import synthetic as _synthetic
from editbench.data.formats import ParsedFile, read_file
from editbench.data.known import built_known
from editbench.data.loader import LoadedDataset, load_path
from editbench.data.sources import DatasetGroup, DatasetSource, find_local, resolve, resolve_group
from editbench.errors import EditbenchError
from editbench.registry import register_dataset
from editbench.resources import resource_dir

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "embedded"

_ROME = "https://rome.baulab.info/data/dsets/"
# The LocFT-BF release (ICT-STAR/LocFT @51db785); the pinned checksums hold the content
# fixed even though the URL follows the branch.
_LOCFT = "https://raw.githubusercontent.com/ICT-STAR/LocFT/main/data/"
# WikiBigEdit (Thede et al., ICML 2025) on the Hugging Face hub: one JSON file per timestep.
_WIKIBIGEDIT = "https://huggingface.co/datasets/lukasthede/WikiBigEdit/resolve/main/"
WIKIBIGEDIT_TIMESTEPS = (
    "20240201_20240220", "20240220_20240301", "20240301_20240320", "20240320_20240401",
    "20240401_20240501", "20240501_20240601", "20240601_20240620", "20240620_20240701",
)
"""The snapshot pairs of WikiBigEdit's eight files, in time order; a request's ``timestep``
is the index of its file here."""

SOURCES: dict[str, DatasetSource] = {
    s.name: s
    for s in (
        DatasetSource(
            name="zsre",
            filename="zsre_mend_eval.json",
            url=_ROME + "zsre_mend_eval.json",
            sha256=None,  # no copy was at hand to hash: see sources.resolve
            subdir="zsre",
            records=19086,
            description="zsRE eval split in MEND format, as released with ROME",
            locality_kinds=("distant",),
        ),
        DatasetSource(
            name="zsre-train",
            filename="zsre_mend_train.json",
            url=_ROME + "zsre_mend_train.json",
            sha256=None,  # no copy was at hand to hash: see sources.resolve
            subdir="zsre",
            # As the ROME/MEND release is described (163,196 train / 19,086 eval); not counted
            # from a copy, so a different count is a warning, not an error.
            records=163196,
            description="zsRE train split in MEND format, as released with ROME (100K+ edits)",
            locality_kinds=("distant",),
        ),
        DatasetSource(
            name="counterfact",
            filename="counterfact.json",
            url=_ROME + "counterfact.json",
            sha256=None,  # no copy was at hand to hash: see sources.resolve
            subdir="counterfact",
            records=21919,
            description="ROME's full CounterFact (paraphrase and neighbourhood prompts)",
            locality_kinds=("neighbourhood",),
        ),
        DatasetSource(
            name="zsre-3k",
            filename="zsre_3k.json",
            url=_LOCFT + "zsre/zsre_3k.json",
            sha256="45431e9b32d2dea71b6697a47433e88551a8bdf8c4fb5756779038fd8d7f82dc",
            subdir="zsre",
            records=3000,
            description="the LocFT-BF paper's 3K zsRE sample (MEND format)",
            locality_kinds=("distant",),
            size_mb=1.6,
        ),
        DatasetSource(
            name="counterfact-3k",
            filename="counterfact_3k.json",
            url=_LOCFT + "counterfact/counterfact_3k.json",
            sha256="a34303165e89e5898a51646e6d17a21da924d815be086a1933bcd54a91e96076",
            subdir="counterfact",
            records=3000,
            description="the LocFT-BF paper's 3K CounterFact sample (flat format)",
            locality_kind="neighbourhood",  # CounterFact's neighbourhood prompts, true object
            locality_kinds=("neighbourhood",),
            size_mb=1.2,
        ),
        DatasetSource(
            name="wikibigedit-3k",
            filename="wikibigedit_3k.json",
            url=_LOCFT + "wikibigedit/wikibigedit_3k.json",
            sha256=None,  # no copy was at hand to hash: see sources.resolve
            subdir="wikibigedit",
            records=3000,
            description="the LocFT-BF paper's 3K WikiBigEdit sample (flat format)",
        ),
    )
}


GROUPS: dict[str, DatasetGroup] = {
    "wikibigedit": DatasetGroup(
        name="wikibigedit",
        parts=tuple(
            DatasetSource(
                name=f"wikibigedit-{span}",
                filename=f"wiki_big_edit_{span}.json",
                url=f"{_WIKIBIGEDIT}wiki_big_edit_{span}.json",
                sha256=None,  # no copy was at hand to hash: see sources.resolve
                subdir="wikibigedit",
                records=None,  # per-file counts not published (26K-121K each)
                description=f"WikiBigEdit timestep {t} ({span[:8]} -> {span[9:]})",
                group="wikibigedit",
                locality_kinds=("neighbourhood",),
            )
            for t, span in enumerate(WIKIBIGEDIT_TIMESTEPS)
        ),
        records=502382,  # the paper's count of question-answer pairs over the eight files
        description="the full WikiBigEdit (8 timesteps, February-July 2024 Wikidata edits)",
    ),
}
"""Named datasets published as several files (see :class:`DatasetGroup`)."""


def _read_released(path: Path, source: DatasetSource, *, target: str | None,
                   timestep: int | None = None, case_prefix: str = "") -> ParsedFile:
    """``read_file`` for a named release; a bad copy in the cache says how to fetch it again."""
    try:
        return read_file(path, target=target, expected_sha256=source.sha256, source=source.name,
                         locality_kind=source.locality_kind, timestep=timestep,
                         case_prefix=case_prefix)
    except EditbenchError as exc:
        if path == source.cache_path():
            raise EditbenchError(f"{exc}; delete {path} to download it again") from None
        raise


def _check_count(name: str, where: object, got: int, expected: int | None) -> None:
    if expected is not None and got != expected:
        logger.warning("dataset %r: %s holds %d records, the release has %d; is it the right file?",
                       name, where, got, expected)


def load_source(source: DatasetSource, *, data_dir: str | None = None,
                target: str | None = None) -> LoadedDataset:
    """Resolve, verify (when a checksum is pinned) and parse a released file."""
    path = resolve(source, data_dir)
    parsed = _read_released(path, source, target=target)
    if source.sha256 is None:
        _check_count(source.name, path, parsed.num_records, source.records)
    return LoadedDataset.from_parsed(parsed, name=source.name)


def load_group(group: DatasetGroup, *, data_dir: str | None = None,
               target: str | None = None) -> LoadedDataset:
    """Resolve and parse every file of a group; requests keep their file's index as ``timestep``.

    The dataset's ``sha256`` is that of the ``sha256sum``-style listing of its files (one
    ``<sha256>  <file name>`` line each, in order), so it changes when any file does.
    """
    paths = resolve_group(group, data_dir)
    parsed = []
    for t, (part, path) in enumerate(zip(group.parts, paths, strict=True)):
        one = _read_released(path, part, target=target, timestep=t, case_prefix=f"{t}-")
        if part.sha256 is None:
            _check_count(part.name, path, one.num_records, part.records)
        parsed.append(one)
    total = sum(p.num_records for p in parsed)
    if any(part.sha256 is None for part in group.parts):
        _check_count(group.name, f"{len(paths)} files", total, group.records)
    listing = "".join(f"{p.sha256}  {p.path.name}\n" for p in parsed)
    folders = {str(p.parent) for p in paths}
    first = parsed[0]
    return LoadedDataset(
        name=group.name,
        path=folders.pop() if len(folders) == 1 else ", ".join(str(p) for p in paths),
        sha256=hashlib.sha256(listing.encode()).hexdigest(),
        format=first.format,
        target=first.target,
        requests=[r for p in parsed for r in p.requests],
        files=tuple((str(p.path), p.sha256) for p in parsed),
    )


@register_dataset("embedded")
def embedded(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    """~300 well-known facts with counterfactual targets, bundled so a run needs no download."""
    path = resource_dir("datasets") / "embedded" / "facts.json"
    return load_path(path, name="embedded", target=target)


@register_dataset("zsre")
def zsre(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    return load_source(SOURCES["zsre"], data_dir=data_dir, target=target)


@register_dataset("counterfact")
def counterfact(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    return load_source(SOURCES["counterfact"], data_dir=data_dir, target=target)


@register_dataset("zsre-3k")
def zsre_3k(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    return load_source(SOURCES["zsre-3k"], data_dir=data_dir, target=target)


@register_dataset("counterfact-3k")
def counterfact_3k(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    return load_source(SOURCES["counterfact-3k"], data_dir=data_dir, target=target)


@register_dataset("wikibigedit-3k")
def wikibigedit_3k(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    return load_source(SOURCES["wikibigedit-3k"], data_dir=data_dir, target=target)


@register_dataset("zsre-train")
def zsre_train(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    """The zsRE train split (163K records): the named source for 100K-edit runs."""
    return load_source(SOURCES["zsre-train"], data_dir=data_dir, target=target)


@register_dataset("wikibigedit")
def wikibigedit(*, data_dir: str | None = None, target: str | None = None) -> LoadedDataset:
    """All of WikiBigEdit (~500K requests), in time order, each with its ``timestep``."""
    return load_group(GROUPS["wikibigedit"], data_dir=data_dir, target=target)


@register_dataset("synthetic")
def synthetic(*, data_dir: str | None = None, target: str | None = None,
              num: int | None = None) -> LoadedDataset:
    """Generated requests for scale tests: exactly ``num`` (default 10,000, at most 1M), seed 0."""
    if target not in (None, "target_new"):
        raise EditbenchError(f"dataset 'synthetic': target {target!r} does not apply (it has only 'target_new')")
    requests = _synthetic.generate(num, seed=_synthetic.DEFAULT_SEED)
    return LoadedDataset(
        name="synthetic",
        path=f"synthetic:v{_synthetic.GENERATOR_VERSION}:seed={_synthetic.DEFAULT_SEED}:n={len(requests)}",
        sha256=_synthetic.requests_sha256(requests),
        format="synthetic",
        target="target_new",
        requests=requests,
        synthetic=True,
    )


# -- what `editbench list datasets` shows --------------------------------------------------

_BUILTIN_INFO = {
    "embedded": {"records": 53, "source": "bundled with editbench (datasets/embedded)",
                 "available": "bundled", "locality": "neighbourhood, distant",
                 "description": "facts smollm2-135m knows, with counterfactual targets"},
    "synthetic": {"records": "any, up to 1,000,000", "source": "generated (seeded)",
                  "available": "generated", "locality": "neighbourhood, distant",
                  "description": "generated requests for scale tests (marked synthetic)"},
}


def _where(sources: tuple[DatasetSource, ...], data_dir: str | None) -> str:
    found = [find_local(s, data_dir) for s in sources]
    if all(found):
        mb = sum(p.stat().st_size for p in found) / 1e6  # type: ignore[union-attr]
        return f"local ({mb:.1f} MB): {found[0] if len(found) == 1 else found[0].parent}"
    sizes = [s.size_mb for s in sources]
    size = f"{sum(sizes):.1f} MB" if all(x is not None for x in sizes) else "size not published"
    return f"download ({size})" if not any(found) else f"partly local ({sum(map(bool, found))}/{len(found)} files)"


def describe_datasets(data_dir: str | None = None) -> list[dict[str, object]]:
    """Per registered dataset: records, source, whether a copy is here, locality kinds."""
    from editbench.data.loader import dataset_names

    rows: list[dict[str, object]] = []
    for name in dataset_names():
        if name in _BUILTIN_INFO:
            rows.append({"name": name, **_BUILTIN_INFO[name]})
        elif name in SOURCES:
            s = SOURCES[name]
            rows.append({"name": name, "records": s.records, "source": s.url,
                         "available": _where((s,), data_dir),
                         "locality": ", ".join(s.locality_kinds) or "-", "description": s.description})
        elif name in GROUPS:
            g = GROUPS[name]
            rows.append({"name": name, "records": g.records,
                         "source": g.parts[0].url.rsplit("/", 1)[0] + f"/ ({len(g.parts)} files)",
                         "available": _where(g.parts, data_dir),
                         "locality": ", ".join(g.parts[0].locality_kinds) or "-",
                         "description": g.description})
        else:
            rows.append({"name": name, "records": None, "source": "a plugin (entry point)",
                         "available": "-", "locality": "-", "description": ""})
    for name, path in built_known():
        card = json.loads((path.parent / "card.json").read_text())
        part = card["files"][path.stem]
        rows.append({"name": name, "records": part["records"], "source": "editbench known-facts",
                     "available": f"local: {path}", "locality": "neighbourhood, distant",
                     "description": f"locality facts {card['model']['name']} knows ({path.stem} slice)"})
    return rows
