"""The named datasets. Registering is free: no file is read or fetched until one is loaded.

A registered dataset is a callable ``(*, data_dir, target) -> LoadedDataset`` returning all
of its requests (``load_dataset`` does the selection); third-party packages register theirs
the same way, with ``@register_dataset`` or the ``editbench.datasets`` entry-point group.
"""

from __future__ import annotations

import logging

from editbench.data.formats import read_file
from editbench.data.loader import LoadedDataset, load_path
from editbench.data.sources import DatasetSource, resolve
from editbench.registry import register_dataset
from editbench.resources import resource_dir

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "embedded"

_ROME = "https://rome.baulab.info/data/dsets/"
# The LocFT-BF release (ICT-STAR/LocFT @51db785); the pinned checksums hold the content
# fixed even though the URL follows the branch.
_LOCFT = "https://raw.githubusercontent.com/ICT-STAR/LocFT/main/data/"

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
        ),
        DatasetSource(
            name="counterfact",
            filename="counterfact.json",
            url=_ROME + "counterfact.json",
            sha256=None,  # no copy was at hand to hash: see sources.resolve
            subdir="counterfact",
            records=21919,
            description="ROME's full CounterFact (paraphrase and neighbourhood prompts)",
        ),
        DatasetSource(
            name="zsre-3k",
            filename="zsre_3k.json",
            url=_LOCFT + "zsre/zsre_3k.json",
            sha256="45431e9b32d2dea71b6697a47433e88551a8bdf8c4fb5756779038fd8d7f82dc",
            subdir="zsre",
            records=3000,
            description="the LocFT-BF paper's 3K zsRE sample (MEND format)",
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


def load_source(source: DatasetSource, *, data_dir: str | None = None,
                target: str | None = None) -> LoadedDataset:
    """Resolve, verify (when a checksum is pinned) and parse a released file."""
    path = resolve(source, data_dir)
    parsed = read_file(path, target=target, expected_sha256=source.sha256, source=source.name,
                       locality_kind=source.locality_kind)
    if source.sha256 is None and parsed.num_records != source.records:
        logger.warning(
            "dataset %r: %s holds %d records, the release has %d; is it the right file?",
            source.name, path, parsed.num_records, source.records,
        )
    return LoadedDataset.from_parsed(parsed, name=source.name)


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
