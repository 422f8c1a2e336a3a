"""Edit-request datasets: file formats, the named datasets and where their files come from.

``load_dataset("zsre-3k", num=1000, sample="random", seed=0)`` returns a
:class:`LoadedDataset` (requests plus the file and SHA-256 they came from). Importing this
package registers the built-in names without reading or downloading anything.
"""

from editbench.data.catalog import DEFAULT_DATASET, GROUPS, SOURCES, load_group, load_source
from editbench.data.formats import FORMATS, ZSRE_TARGETS, read_file
from editbench.data.loader import LoadedDataset, dataset_names, load_dataset, load_path, select
from editbench.data.sources import URL_OVERRIDES, DatasetGroup, DatasetSource

__all__ = [
    "DEFAULT_DATASET",
    "FORMATS",
    "GROUPS",
    "SOURCES",
    "URL_OVERRIDES",
    "ZSRE_TARGETS",
    "DatasetGroup",
    "DatasetSource",
    "LoadedDataset",
    "dataset_names",
    "load_dataset",
    "load_group",
    "load_path",
    "load_source",
    "read_file",
    "select",
]
