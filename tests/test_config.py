"""Hyperparameter loading: typed, validated, with errors that name the file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from editbench.config import (
    ConfigError,
    build_config,
    hparams_root,
    load_hparams,
    parse_overrides,
)
from editbench.registry import EDITORS
from editors._finetune import FinetuneConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    return path


def test_yaml_loads_into_typed_dataclass(tmp_path):
    path = write(tmp_path, "modules: [mlp_down@3]\nlr: 5e-4\nbatch_size: 8\nepochs: 2\n")
    config, resolved = load_hparams(FinetuneConfig, "x", "y", path=path)
    assert isinstance(config, FinetuneConfig)
    assert config.lr == pytest.approx(5e-4) and isinstance(config.lr, float)
    assert config.modules == ["mlp_down@3"] and resolved["batch_size"] == 8


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lrr: 0.1\n", "unknown key 'lrr' for FinetuneConfig; did you mean 'lr'"),
        ("batch_size: 2.5\n", "key 'batch_size': expected an integer, got 2.5"),
        ("batch_size: true\n", "key 'batch_size': expected an integer"),
        ("pipeline: sideways\n", "key 'pipeline': expected one of ['depth_first', 'breadth_first']"),
        ("modules: mlp_down@3\n", "key 'modules': expected a list"),
        ("device: cuda:0\n", "key 'device' does not belong in hparams"),
        ("modules: [/abs/path]\n", "absolute paths do not belong in hparams"),
        ("batch_size: 0\n", "batch_size: expected a positive integer"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("lr: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_hparams(FinetuneConfig, "x", "y", path=path)
    message = str(err.value)
    assert needle in message
    assert str(path) in message
    assert "\n" not in message


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, "lr: 1.0e-3\n")
    config, _ = load_hparams(FinetuneConfig, "x", "y", parse_overrides(["lr=5e-3", "epochs=3"]), path)
    assert config.lr == pytest.approx(5e-3) and config.epochs == 3
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*did you mean 'epochs'"):
        load_hparams(FinetuneConfig, "x", "y", parse_overrides(["epoch=3"]), path)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lr"])


def test_missing_hparams_file_lists_available():
    with pytest.raises(ConfigError, match=r"no hparams for editor 'locft_bf' and model 'qwen2.5-7bb'.*did you mean 'qwen2.5-7b'"):
        load_hparams(FinetuneConfig, "locft_bf", "qwen2.5-7bb")


def test_every_bundled_hparams_file_validates():
    files = sorted(hparams_root().glob("*/*.yaml"))
    assert files, "no bundled hparams"
    checked = 0
    for path in files:
        editor = path.parent.name
        if editor not in EDITORS:
            continue  # an editor registered by a later issue / optional extra
        cls = EDITORS.get(editor).config_class
        config, _ = load_hparams(cls, editor, path.stem)
        assert dataclasses.is_dataclass(config)
        checked += 1
    assert checked >= 10


def test_build_config_rejects_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(FinetuneConfig, ["a"], "src.yaml")  # type: ignore[arg-type]
