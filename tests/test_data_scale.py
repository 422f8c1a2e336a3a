"""Datasets at 100K+ requests: the streamed reader, zsre-train, the full WikiBigEdit, synthetic.

Nothing here reaches the real hosts: releases are served from a local HTTP server
(127.0.0.1, a free port) through the URL override variables, into a temporary cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import closed_port_url
from editbench.api import EditbenchError
from editbench.data import (
    GROUPS,
    SOURCES,
    URL_OVERRIDES,
    formats,
    load_dataset,
    load_path,
    read_file,
    synthetic,
)
from editbench.data.catalog import WIKIBIGEDIT_TIMESTEPS

REPO = Path(__file__).resolve().parents[1]
WIKI = GROUPS["wikibigedit"]


# -- helpers --------------------------------------------------------------------------


def expect_error(fn: Callable[[], Any], *fragments: str) -> str:
    """Run ``fn``, expect an EditbenchError whose single line contains every fragment."""
    with pytest.raises(EditbenchError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message





def write_zsre(path: Path, num: int, seed: int = 0) -> Path:
    """``num`` generated requests as a zsRE/MEND JSON array, one record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = synthetic.zsre_records(synthetic.generate(num, seed=seed))
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")
    return path


def wiki_record(i: int, **changes: Any) -> dict[str, Any]:
    """One record in the layout of WikiBigEdit's released files (content written here)."""
    rec: dict[str, Any] = {
        "tag": "update",
        "subject": f"Town {i}",
        "subject_id": f"Q{1000 + i}",
        "relation": "head of government",
        "relation_id": "P6",
        "object_id": f"Q{5000 + i}",
        "update": f"Who is the head of government of Town {i}?",
        "rephrase": f"Who leads the government of Town {i}?",
        "personas": f"Hey, who's running things in Town {i} these days?",
        "ans": f"Mayor {i}",
        "loc": f"Who is the head of government of Village {i}?",
        "loc_ans": f"Reeve {i}",
        "mhop": None,
        "mhop_ans": None,
    }
    rec.update(changes)
    return rec


def write_raw(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_wiki_release(folder: Path, per_file: int = 3) -> list[Path]:
    """Eight small files named as the release's, ``per_file`` records each (NaN as released)."""
    paths = []
    for t, span in enumerate(WIKIBIGEDIT_TIMESTEPS):
        records = [wiki_record(100 * t + i) for i in range(per_file)]
        text = json.dumps(records).replace('"tag": "update"', '"tag": NaN', 1)  # as released
        paths.append(write_raw(folder / f"wiki_big_edit_{span}.json", text))
    return paths


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Own cache, no data dir from the environment, and every release URL a closed port."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDITBENCH_CACHE", str(cache))
    for var in ("EDITBENCH_DATA_DIR", "EDITBENCH_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    sources = [*SOURCES.values(), *(p for g in GROUPS.values() for p in g.parts)]
    for source in sources:
        monkeypatch.delenv(source.url_env(), raising=False)
        monkeypatch.setitem(URL_OVERRIDES, source.name, closed_port_url(source.filename))
    for group in GROUPS.values():
        monkeypatch.delenv(group.url_env(), raising=False)
    return cache





# -- the streamed reader --------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_streamed_array_gives_what_a_whole_parse_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Any chunk size (records, strings, numbers and escapes cut anywhere) reads the same."""
    records = list(synthetic.zsre_records(synthetic.generate(40)))
    records[3]["src"] = "Qu\u00e9 r\u00edo \u201cpasa\u201d por \\ aqu\u00ed?"
    records[5]["pred"] = 12.5e3  # a number cut at a chunk's end must not be taken early
    text = "\ufeff \n" + json.dumps(records, indent=1, ensure_ascii=chunk % 2 == 0) + "\n"
    path = tmp_path / "d.json"
    path.write_bytes(text.encode("utf-8"))
    whole = formats.parse_text(path, text.removeprefix("\ufeff"))
    monkeypatch.setattr(formats, "READ_CHUNK", chunk)
    parsed = read_file(path)
    assert parsed.requests == whole.requests and len(parsed.requests) == 40
    assert parsed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert parsed.format == "zsre" and parsed.num_records == 40


@pytest.mark.parametrize("chunk", [2, 1 << 20])
def test_streamed_json_lines_without_a_telling_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    records = list(synthetic.zsre_records(synthetic.generate(30)))
    path = write_raw(tmp_path / "edits.data", "\r\n".join(json.dumps(r) for r in records) + "\n")
    monkeypatch.setattr(formats, "READ_CHUNK", chunk)
    parsed = read_file(path)
    assert parsed.format == "jsonl" and len(parsed.requests) == 30
    assert parsed.requests[7].prompt == records[7]["src"]


_R = json.dumps(next(synthetic.zsre_records(synthetic.generate(1))))  # one good record


@pytest.mark.parametrize(
    "content",
    [
        f'[{_R},\n {{"b": }}]',
        f'[\n {_R},\n {{"src": "\\q"}}]',
        f"[{_R} {_R}]",
        f'[{_R}, {{"src": "x}}',
        f"[{_R}] x",
        f"[{_R}, 12.",
    ],
)
def test_streamed_errors_name_line_and_column_as_json_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    path = write_raw(tmp_path / "bad.json", content)
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(content)
    where = f"line {info.value.lineno} column {info.value.colno}: {info.value.msg}"
    for chunk in (1, 4, 1 << 20):
        monkeypatch.setattr(formats, "READ_CHUNK", chunk)
        expect_error(lambda: read_file(path), "bad.json", f"invalid JSON at {where}")


def test_a_corrupt_file_with_a_pinned_checksum_is_reported_as_not_matching(tmp_path: Path) -> None:
    good = write_zsre(tmp_path / "good.json", 20)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    bad = write_raw(tmp_path / "bad.json", good.read_text()[:-200])  # cut inside a record
    expect_error(lambda: read_file(bad, expected_sha256=digest, source="zsre-x"),
                 "bad.json: sha256", f"expected {digest}", "for dataset 'zsre-x'")
    expect_error(lambda: read_file(bad), "bad.json: invalid JSON at line")


def test_reading_needs_little_beyond_the_requests_it_returns() -> None:
    """Peak RSS of reading a generated zsRE-layout file, streamed vs whole (own processes)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_memory.py"),
                          "--records", "30000"], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    result = json.loads(out.stdout)
    streamed, whole = result["modes"]["streamed"], result["modes"]["whole"]
    assert streamed["requests"] == whole["requests"] == 30000
    # The text and its dicts are never held at once: reading costs a fraction of the file.
    assert streamed["needed_for_reading_mb"] < 0.5 * result["file_mb"], result
    assert streamed["peak_above_start_mb"] < whole["peak_above_start_mb"], result


# -- WikiBigEdit ----------------------------------------------------------------------


def test_wikibigedit_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [
        wiki_record(0, mhop="Who founded the party of Mayor 0?", mhop_ans="Founder 0"),
        wiki_record(1, rephrase=float("nan"), personas=None, loc=float("nan")),
        wiki_record(2, ans=float("nan")),  # the release writes missing cells as NaN
        wiki_record(3, update=""),
    ]
    path = write_raw(tmp_path / "wiki_big_edit_x.json", json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="editbench.data.formats"):
        parsed = read_file(path, timestep=5, case_prefix="5-")
    assert "dropped 2 WikiBigEdit records" in caplog.text and "record 2, record 3" in caplog.text
    assert (parsed.format, parsed.target, parsed.num_records) == ("wikibigedit", "ans", 4)
    first, second = parsed.requests
    assert (first.case_id, first.timestep, first.prompt, first.target_new, first.target_true) == (
        "5-0", 5, "Who is the head of government of Town 0?", "Mayor 0", None)
    assert first.rephrase_prompts == ("Who leads the government of Town 0?",)
    assert [(p.prompt, p.answer, p.kind) for p in first.locality] == [
        ("Who is the head of government of Village 0?", "Reeve 0", "neighbourhood")]
    assert [(p.kind, p.answer) for p in first.portability] == [("personas", "Mayor 0"), ("mhop", "Founder 0")]
    assert second.case_id == "5-1" and second.rephrase_prompts == () and second.locality == ()
    bad = write_raw(tmp_path / "bad.json", json.dumps([wiki_record(0, rephrase=7)]))
    expect_error(lambda: read_file(bad), "bad.json: record 0 (case_id 0)", "field 'rephrase'")


def test_wikibigedit_is_served_resolved_and_kept_in_time_order(
    tmp_path: Path, serve: Callable[[Path], tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch,
    isolated: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    release = write_wiki_release(tmp_path / "hub")
    base, seen = serve(tmp_path / "hub")
    for part in WIKI.parts:
        monkeypatch.delitem(URL_OVERRIDES, part.name)
    monkeypatch.setenv(WIKI.url_env(), base + "/")  # a mirror of the folder
    # Two files are already in a data dir (shared layout); the other six are downloaded.
    data_dir = tmp_path / "data"
    for path in release[:2]:
        write_raw(data_dir / "wikibigedit" / path.name, path.read_text())
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("wikibigedit", data_dir=str(data_dir))
    assert sorted(seen) == sorted(f"/{p.name}" for p in release[2:])
    assert [r.timestep for r in ds.requests] == [t for t in range(8) for _ in range(3)]
    assert ds.requests[3].case_id == "1-0" and ds.requests[3].subject == "Town 100"
    assert "holds 24 records, the release has 502382" in caplog.text
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in release)
    assert ds.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    assert [Path(f).name for f, _ in ds.files] == [p.name for p in release]
    assert (isolated / "data" / release[5].name).is_file()
    again = load_dataset("wikibigedit", data_dir=str(data_dir), num=4)  # from the cache now
    assert len(seen) == 6 and [r.case_id for r in again.requests] == ["0-0", "0-1", "0-2", "1-0"]


def test_wikibigedit_offline_names_every_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    data_dir = tmp_path / "data"
    first = write_wiki_release(tmp_path / "hub")[0]
    write_raw(data_dir / first.name, first.read_text())  # flat layout
    monkeypatch.setenv("EDITBENCH_OFFLINE", "1")
    message = expect_error(lambda: load_dataset("wikibigedit", data_dir=str(data_dir)),
                           "dataset 'wikibigedit': 7 of its 8 files not found", str(data_dir),
                           "EDITBENCH_OFFLINE is set", "wikibigedit/")
    for part in WIKI.parts[1:]:
        assert f"{part.download_url()} to {isolated / 'data' / part.filename}" in message
    assert WIKI.parts[0].filename not in message
    monkeypatch.delenv("EDITBENCH_OFFLINE")
    expect_error(lambda: load_dataset("wikibigedit", data_dir=str(data_dir)),
                 "7 of its 8 files not found", "download of http://127.0.0.1:", "failed")


def test_the_new_names_are_registered() -> None:
    from editbench.data import dataset_names

    assert {"zsre-train", "wikibigedit", "synthetic"} <= set(dataset_names())


def test_wikibigedit_canonical_urls() -> None:
    hub = "https://huggingface.co/datasets/lukasthede/WikiBigEdit/resolve/main/wiki_big_edit_"
    assert [p.url for p in WIKI.parts] == [f"{hub}{s}.json" for s in WIKIBIGEDIT_TIMESTEPS]
    assert WIKI.records == 502382 and len({p.url_env() for p in WIKI.parts}) == 8


# -- zsre-train -----------------------------------------------------------------------


def test_zsre_train_offline_and_unreachable_errors_say_what_to_put_where(
    monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    source = SOURCES["zsre-train"]
    assert source.url == "https://rome.baulab.info/data/dsets/zsre_mend_train.json"
    dest = isolated / "data" / "zsre_mend_train.json"
    expect_error(lambda: load_dataset("zsre-train"), "dataset 'zsre-train' not found",
                 f"place it at {dest}", "zsre/zsre_mend_train.json", "download failed")
    monkeypatch.setenv("EDITBENCH_OFFLINE", "1")
    expect_error(lambda: load_dataset("zsre-train"), "EDITBENCH_OFFLINE is set", f"place it at {dest}")


def test_zsre_train_download_checks_the_count_and_a_bad_cached_copy_says_so(
    tmp_path: Path, serve: Callable[[Path], tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch,
    isolated: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    served = write_zsre(tmp_path / "hub" / "zsre_mend_train.json", 50)
    base, seen = serve(tmp_path / "hub")
    monkeypatch.setenv("EDITBENCH_DATA_URL_ZSRE_TRAIN", f"{base}/zsre_mend_train.json")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("zsre-train", num=10)
    assert seen == ["/zsre_mend_train.json"] and len(ds.requests) == 10
    assert "holds 50 records, the release has 163196; is it the right file?" in caplog.text
    cached = isolated / "data" / "zsre_mend_train.json"
    assert ds.path == str(cached) and ds.sha256 == hashlib.sha256(served.read_bytes()).hexdigest()
    cached.write_text(served.read_text()[:-300])  # a copy cut short
    expect_error(lambda: load_dataset("zsre-train"), str(cached), "invalid JSON at line",
                 f"delete {cached} to download it again")


def test_the_readme_100k_example_runs_up_to_editing(
    tmp_path: Path, serve: Callable[[Path], tuple[str, list[str]]], tiny_run: tuple, isolated: Path
) -> None:
    """``--dataset zsre-train --num-edits 100000`` from a (local) release into an empty cache:
    resolves, downloads, counts the records, plans all 100K edits, takes the baseline of the
    evaluated sample and edits. Buffers of 1,000 (``--edits-per-step``) let it stop after the
    first edit step, seconds in (one step of all 100K would first tokenize all of them)."""
    _, model_dir, _, hparams = tiny_run
    hparams.write_text("modules: [block@3]\nlr: 1.0e-2\nbatch_size: 100\nepochs: 1\n")
    served = write_zsre(tmp_path / "hub" / "zsre_mend_train.json", 100_000)
    base, seen = serve(tmp_path / "hub")
    out = tmp_path / "run"
    env = {**os.environ, "EDITBENCH_CACHE": str(isolated), "EDITBENCH_PROGRESS": "0",
           "OMP_NUM_THREADS": "1", "EDITBENCH_FAULT": "step:1",
           "EDITBENCH_DATA_URL_ZSRE_TRAIN": f"{base}/zsre_mend_train.json"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "editbench.cli", "run", "--editor", "locft_bf", "--model", str(model_dir),
         "--hparams", str(hparams), "--dataset", "zsre-train", "--num-edits", "100000",
         "--eval-sample", "20", "--edits-per-step", "1000", "--device", "cpu", "--max-new-tokens", "4",
         "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    # Killed by the fault point after the first edit step: editing had started.
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert seen == ["/zsre_mend_train.json"]
    assert "holds 100000 records, the release has 163196" in proc.stderr
    config = json.loads((out / "config.json").read_text())
    d = config["dataset"]
    assert (d["name"], d["num_edits"], d["format"], d["synthetic"]) == ("zsre-train", 100_000, "zsre", False)
    assert d["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert config["protocol"]["edits_per_step"] == 1000
    assert len((out / "pre_edit.jsonl").read_text().splitlines()) >= 20  # the evaluated sample only
    steps = next(p for p in (out / "steps.jsonl.part", out / "steps.jsonl") if p.is_file())
    step = json.loads(steps.read_text().splitlines()[0])
    assert (step["start"], step["size"]) == (0, 1000)
    print(f"100K zsre-train run up to its first edit step: {seconds:.1f} s")


# -- synthetic ------------------------------------------------------------------------


def test_synthetic_is_exact_seeded_and_a_prefix_of_larger_draws() -> None:
    small = synthetic.generate(500)
    assert len(small) == 500 and small == synthetic.generate(500)
    assert synthetic.generate(2000)[:500] == small
    assert synthetic.generate(500, seed=1) != small
    assert len(synthetic.generate()) == synthetic.DEFAULT_SIZE
    expect_error(lambda: synthetic.generate(synthetic.MAX_REQUESTS + 1), "at most 1,000,000")
    expect_error(lambda: synthetic.generate(0), "positive number")


def test_synthetic_requests_have_what_the_evaluator_needs() -> None:
    requests = synthetic.generate(100_000)
    edited = set()
    for r in requests:
        assert r.subject in r.prompt and all(r.subject in p for p in r.rephrase_prompts)
        assert r.target_new != r.target_true and len(r.rephrase_prompts) == 2
        assert [p.kind for p in r.locality] == ["neighbourhood", "distant"]
        edited.add(r.prompt)
    assert len(edited) == len(requests)  # no (subject, relation) is edited twice
    # Locality prompts ask about subjects no request edits, so their gold answers hold.
    assert not edited & {p.prompt for r in requests for p in r.locality}


def test_synthetic_dataset_by_name(caplog: pytest.LogCaptureFixture) -> None:
    ds = load_dataset("synthetic", num=1234)
    assert ds.synthetic and ds.format == "synthetic" and len(ds.requests) == 1234
    assert ds.sha256 == load_dataset("synthetic", num=1234).sha256 != load_dataset("synthetic", num=1235).sha256
    shuffled = load_dataset("synthetic", num=300, sample="random", seed=3)
    assert {r.case_id for r in shuffled.requests} == {str(i) for i in range(300)}
    assert len(load_dataset("synthetic").requests) == synthetic.DEFAULT_SIZE
    assert not load_dataset("embedded", num=3).synthetic
    expect_error(lambda: load_dataset("synthetic", num=2_000_000), "at most 1,000,000")


def test_synthetic_is_marked_in_config_json(tiny_run: tuple, tmp_path: Path) -> None:
    from editbench.run import RunSpec, run

    _, model_dir, _, hparams = tiny_run
    out = tmp_path / "syn"
    run(RunSpec(editor="locft_bf", model=str(model_dir), hparams_file=str(hparams), dataset="synthetic",
                num_edits=6, device="cpu", max_new_tokens=2, output=str(out)))
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["synthetic"] is True and config["comparability"]["synthetic"] is True
    assert config["dataset"]["num_edits"] == 6


def test_zsre_layout_of_synthetic_requests_reads_back(tmp_path: Path) -> None:
    path = write_zsre(tmp_path / "z.json", 25, seed=4)
    back = load_path(path).requests
    made = synthetic.generate(25, seed=4)
    assert [(r.prompt, r.target_new, r.target_true) for r in back] == [
        (r.prompt, r.target_new, r.target_true) for r in made]
