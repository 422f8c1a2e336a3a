"""Property-based fuzzing of every reader of user input: it loads, or fails with one
``EditbenchError`` line that names the file (and record or key); never another exception.

``EDITBENCH_FUZZ_EXAMPLES`` sets the examples per property (CI: the default).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editbench.config import ConfigError, build_config, load_hparams, parse_overrides, read_yaml
from editbench.data import load_path
from editbench.errors import EditbenchError
from editbench.files import read_jsonl

EXAMPLES = int(os.environ.get("EDITBENCH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RECORD_KEYS = ["case_id", "prompt", "subject", "target_new", "ground_truth", "rephrase_prompt",
               "locality_prompt", "locality_ground_truth", "src", "rephrase", "alt", "answers",
               "loc", "loc_ans", "requested_rewrite", "paraphrase_prompts",
               "neighborhood_prompts", "target_true", "relation_id", "portability",
               "locality_kind", "timestep", "generation_prompts"]
scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | \
    st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.sampled_from(RECORD_KEYS) | st.text(max_size=6),
                                           inner, max_size=4), max_leaves=12)
good_strings = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
records = st.dictionaries(st.sampled_from(RECORD_KEYS), json_values | good_strings, max_size=9)


_ROOT: list[Path] = []  # this module's scratch folder (hypothesis cannot take tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _scratch_root():
    """One folder for every example's files, removed afterwards (thousands of examples)."""
    _ROOT.append(Path(tempfile.mkdtemp(prefix="editbench-fuzz-")))
    yield
    shutil.rmtree(_ROOT.pop(), ignore_errors=True)


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(dir=_ROOT[-1]))


def _one_line(exc: EditbenchError, must_name: str) -> None:
    text = str(exc)
    assert "\n" not in text.strip(), text
    assert must_name in text, (must_name, text)


@FUZZ
@given(data=st.lists(records, max_size=4) | json_values, suffix=st.sampled_from([".json", ".jsonl"]))
def test_dataset_files_load_or_fail_in_one_line(data, suffix):
    path = _workdir() / f"d{suffix}"
    if suffix == ".jsonl" and isinstance(data, list):
        text = "\n".join(json.dumps(r) for r in data)
    else:
        text = json.dumps(data)
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_path(path)
    except EditbenchError as exc:
        _one_line(exc, str(path))
        return
    assert loaded.requests and all(r.case_id for r in loaded.requests)


@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".txt"]))
def test_dataset_bytes_load_or_fail_in_one_line(raw, suffix):
    path = _workdir() / f"d{suffix}"
    path.write_bytes(raw)
    try:
        load_path(path)
    except EditbenchError as exc:
        _one_line(exc, str(path))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_jsonl_reader(raw):
    path = _workdir() / "x.jsonl"
    path.write_bytes(raw)
    try:
        list(read_jsonl(path))
    except EditbenchError as exc:
        _one_line(exc, str(path))


def _config_classes():
    from editors.alphaedit import AlphaEditConfig
    from editors.locft_bf import LocFTBFConfig
    from editors.lora import LoraEditorConfig
    from editors.rome import RomeConfig

    return [LocFTBFConfig, LoraEditorConfig, RomeConfig, AlphaEditConfig]


HPARAM_KEYS = ["modules", "lr", "batch_size", "epochs", "pipeline", "layers", "r", "alpha",
               "stats_corpus", "v_lr", "nullspace_threshold", "edits_per_step", "seed", "device",
               "target_modules", "merge", "loss_threshold", "lrr"]


@FUZZ
@given(raw=st.dictionaries(st.sampled_from(HPARAM_KEYS) | st.text(max_size=5), json_values,
                           max_size=5),
       which=st.integers(0, 3))
def test_hparams_files_load_or_fail_naming_file_and_key(raw, which):
    cls = _config_classes()[which]
    path = _workdir() / "h.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        load_hparams(cls, "e", "m", None, path)
    except EditbenchError as exc:
        _one_line(exc, str(path))


@FUZZ
@given(text=st.text(max_size=80))
def test_yaml_text_loads_or_fails_naming_the_file(text):
    path = _workdir() / "h.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        raw = read_yaml(path)
        build_config(_config_classes()[0], raw, str(path))
    except EditbenchError as exc:
        _one_line(exc, str(path))


@FUZZ
@given(items=st.lists(st.text(max_size=20), max_size=4), which=st.integers(0, 3))
def test_set_overrides_parse_or_fail_naming_the_item(items, which):
    try:
        overrides = parse_overrides(items)
    except ConfigError as exc:
        _one_line(exc, "--set")
        return
    path = _workdir() / "h.yaml"
    path.write_text("{}\n")
    try:
        load_hparams(_config_classes()[which], "e", "m", overrides, path)
    except EditbenchError as exc:
        _one_line(exc, str(path))
