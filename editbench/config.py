"""Hyperparameters: ``hparams/<editor>/<model>.yaml`` -> the editor's typed dataclass.

Every key is checked against the dataclass (unknown keys get a "did you mean"), every
value against its annotation, and ``--set key=value`` overrides go through the same
checks. YAML describes the method, not the machine: device ids and absolute paths are
refused.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from editbench.api import EditbenchError, EditorConfig
from editbench.errors import did_you_mean
from editbench.resources import resource_dir

FORBIDDEN_KEYS = {"device", "devices", "gpu", "gpus", "cuda", "device_id", "model_path"}


class ConfigError(EditbenchError):
    pass


def hparams_root() -> Path:
    env = os.environ.get("EDITBENCH_HPARAMS_DIR")
    return Path(env) if env else resource_dir("hparams")


def hparams_model_key(model: str) -> str:
    """The ``<model>`` of ``hparams/<editor>/<model>.yaml`` for a preset, HF id or folder."""
    return Path(model.rstrip("/\\")).name or model


def hparams_name(editor: str, model: str) -> Path:
    """The one naming rule: ``<editor>/<model>.yaml``, where ``<model>`` is the preset name,
    or the last part of a Hugging Face id or a local folder."""
    return Path(editor) / f"{hparams_model_key(model)}.yaml"


def hparams_for(editor: str, model: str) -> Path:
    """The hparams file a run of ``editor`` on ``model`` reads by default."""
    return hparams_root() / hparams_name(editor, model)


def available_hparams(editor: str) -> list[str]:
    folder = hparams_root() / editor
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float only), or raise naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list of {_type_name(args[0])}, got {value!r}")
        item_tp = args[0] if args else Any
        items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def build_config(cls: type[EditorConfig], raw: dict[str, Any], source: str) -> EditorConfig:
    """Validate ``raw`` against ``cls``; every error names ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of hyperparameters, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in FORBIDDEN_KEYS:
            raise ConfigError(
                f"{source}: key {key!r} does not belong in hparams; choose devices with --device"
            )
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key {key!r} for {cls.__name__}{did_you_mean(key, fields)}"
            )
        kwargs[key] = check_value(value, hints[key], f"{source}: key {key!r}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")
    config = cls(**kwargs)
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return config


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=5e-4", "layers=[20]"]`` -> ``{"lr": 0.0005, "layers": [20]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = (str(exc).strip().splitlines() or ["parse error"])[0]
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({first})") from None
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # PyYAML reads "5e-4" as a string (YAML 1.1)
        out[key.strip()] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def refuse_absolute_paths(raw: dict[str, Any], path: Path | str, what: str = "hparams") -> None:
    """YAML describes the method, not the machine: absolute paths belong on the command line."""
    for key, value in raw.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str) and os.path.isabs(v):
                raise ConfigError(
                    f"{path}: key {key!r}: absolute paths do not belong in {what}, got {v!r} "
                    "(use a path relative to --data-dir, or --set on the command line)"
                )


def resolve_data_paths(config: EditorConfig, data_dir: str | None) -> None:
    """Resolve fields marked ``metadata={"data_path": True}`` that name a relative file:
    against ``data_dir`` and ``$EDITBENCH_DATA_DIR`` first (where datasets live too), the
    working directory last; the absolute path found replaces the value."""
    dirs = [d for d in (data_dir, os.environ.get("EDITBENCH_DATA_DIR")) if d]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("data_path") or not isinstance(value, str) or not _is_relative_file(value):
            continue
        for base in [*dirs, os.getcwd()]:
            candidate = Path(base).expanduser() / value
            if candidate.is_file():
                setattr(config, f.name, str(candidate.resolve()))
                break


def _is_relative_file(value: str) -> bool:
    """``corpus/wiki.jsonl`` yes; ``self``, ``hf:wikitext:...``, ``/abs/path`` no."""
    if os.path.isabs(value) or ":" in value.split("/")[0]:
        return False
    return "/" in value or Path(value).suffix != ""


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    refuse_absolute_paths(raw, path)
    for key, value in list(raw.items()):
        if isinstance(value, str) and _looks_numeric(value):
            raw[key] = float(value)
    return raw


def load_hparams(
    cls: type[EditorConfig],
    editor: str,
    model: str,
    overrides: dict[str, Any] | None = None,
    path: str | Path | None = None,
    data_dir: str | None = None,
) -> tuple[EditorConfig, dict[str, Any]]:
    """Resolve an editor's hparams: the YAML file (``path``, or :func:`hparams_for` the
    model), then ``--set`` overrides, then relative data paths (see
    :func:`resolve_data_paths`).

    Returns the typed config and the resolved mapping (written into ``config.json``).
    """
    file = Path(path) if path is not None else hparams_for(editor, model)
    if not file.is_file():
        known = available_hparams(editor)
        key = hparams_model_key(model)
        raise ConfigError(
            f"no hparams for editor {editor!r} and model {key!r} (looked for {file})"
            f"{did_you_mean(key, known)}; available: {', '.join(known) or 'none'}; "
            "pass --hparams FILE for another model"
        )
    raw = read_yaml(file)
    config = build_config(cls, raw, str(file))
    if overrides:
        merged = {**dataclasses.asdict(config), **overrides}
        config = build_config(cls, merged, f"{file} with --set {sorted(overrides)}")
    resolve_data_paths(config, data_dir)
    return config, dataclasses.asdict(config)


def describe_editors() -> list[dict[str, object]]:
    """Per registered editor: how it edits by default and the models it has hparams for."""
    from editbench.registry import EDITORS

    rows: list[dict[str, object]] = []
    for name in EDITORS.names():
        try:
            config = EDITORS.get(name).config_class()
        except EditbenchError as exc:  # a plugin that cannot be imported here
            rows.append({"name": name, "pipeline": f"unavailable ({exc})", "hparams": []})
            continue
        step = config.edits_per_step
        pipeline = getattr(config, "pipeline", None) or "closed form"
        pipeline += ", all requests in one step" if step is None else f", steps of {step}"
        rows.append({"name": name, "pipeline": pipeline, "hparams": available_hparams(name)})
    return rows
