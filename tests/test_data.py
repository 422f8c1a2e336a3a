"""Tests of editbench.data: file formats, named datasets, resolution, download, selection."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SHARED_DATA, closed_port_url, shared_file
from editbench.api import EditbenchError, EditRequest, LocalityPrompt
from editbench.data import (
    DEFAULT_DATASET,
    SOURCES,
    URL_OVERRIDES,
    LoadedDataset,
    dataset_names,
    load_dataset,
    load_path,
    select,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).parents[1].parent / "shared" / "data"
SHARED_ZSRE = SHARED / "zsre" / "zsre_3k.json"
SHARED_CF = SHARED / "counterfact" / "counterfact_3k.json"
needs_shared = pytest.mark.skipif(
    not (SHARED_ZSRE.is_file() and SHARED_CF.is_file()),
    reason=f"shared data not found at {SHARED} (zsre/zsre_3k.json, counterfact/counterfact_3k.json)",
)


# -- helpers --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DELETE = object()  # a field to remove from a record


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def zsre_record(i: int = 0, **changes: Any) -> dict[str, Any]:
    rec = {
        "subject": f"Subject {i}",
        "src": f"Which river flows through Subject {i}?",
        "pred": "River A",
        "rephrase": f"What river runs through Subject {i}?",
        "alt": f"River B{i}",
        "answers": [f"River A{i}"],
        "loc": "nq question: who wrote the song example",
        "loc_ans": "Some Writer",
        "cond": "River A >> River B || ...",
    }
    rec.update(changes)
    return rec


def flat_record(case_id: Any = 0, **changes: Any) -> dict[str, Any]:
    rec = {
        "case_id": case_id,
        "prompt": f"Entity {case_id} is located in",
        "subject": f"Entity {case_id}",
        "target_new": "Asia",
        "ground_truth": "Europe",
        "rephrase_prompt": f"The continent of Entity {case_id} is",
        "locality_prompt": "Mount Example is in",
        "locality_ground_truth": "Europe",
    }
    rec.update(changes)
    return rec


def rome_record(case_id: int = 7, **changes: Any) -> dict[str, Any]:
    """One record in the schema of ROME's counterfact.json (content written for this test)."""
    rec = {
        "case_id": case_id,
        "pararel_idx": 1234,
        "requested_rewrite": {
            "prompt": "The native language of {} is",
            "relation_id": "P103",
            "target_new": {"str": "Finnish", "id": "Q1412"},
            "target_true": {"str": "Portuguese", "id": "Q5146"},
            "subject": "Ana Example",
        },
        "paraphrase_prompts": [
            "The river was quiet that morning. Ana Example spoke the language",
            "Records from the archive were lost. Ana Example's mother tongue is",
        ],
        "neighborhood_prompts": [
            "The native language of Bruno Sample is",
            "The mother tongue of Carla Placeholder is",
            "Dora Instance spoke the language",
        ],
        "attribute_prompts": ["Eino Testinen is a native speaker of"],
        "generation_prompts": ["Ana Example was born in"],
    }
    rec.update(changes)
    return rec


def expect_error(fn: Callable[[], Any], *fragments: str) -> str:
    """Run ``fn``, expect an EditbenchError whose single line contains every fragment."""
    with pytest.raises(EditbenchError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own cache, no data dir from the environment, and no real network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDITBENCH_CACHE", str(cache))
    for var in ("EDITBENCH_DATA_DIR", "EDITBENCH_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for source in SOURCES.values():
        monkeypatch.delenv(source.url_env(), raising=False)
        monkeypatch.setitem(URL_OVERRIDES, source.name, closed_port_url(source.filename))
    return cache





# -- zsRE/MEND ------------------------------------------------------------------------


def test_zsre_records_map_to_requests(tmp_path: Path) -> None:
    path = write_json(tmp_path / "z.json", [zsre_record(0), zsre_record(1, case_id="z-7")])
    ds = load_path(path)
    assert (ds.format, ds.target, ds.name, ds.path) == ("zsre", "alt", str(path), str(path))
    assert ds.sha256 == sha256_file(path)
    first, second = ds.requests
    assert first == EditRequest(
        case_id="0",
        prompt="Which river flows through Subject 0?",
        subject="Subject 0",
        target_new="River B0",
        target_true="River A0",
        rephrase_prompts=("What river runs through Subject 0?",),
        locality=(LocalityPrompt("nq question: who wrote the song example", "Some Writer", "distant"),),
    )
    assert second.case_id == "z-7"


def test_zsre_answers0_target_edits_toward_the_original_answer(tmp_path: Path) -> None:
    path = write_json(tmp_path / "z.json", [zsre_record(0, answers=["River A0", "Alias"])])
    ds = load_path(path, target="answers0")
    assert ds.target == "answers0"
    assert ds.requests[0].target_new == "River A0"
    assert ds.requests[0].target_true is None


def test_zsre_empty_alt_is_dropped_under_alt_and_kept_under_answers0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_json(tmp_path / "z.json", [zsre_record(0), zsre_record(1, alt=""), zsre_record(2)])
    with caplog.at_level(logging.WARNING):
        ds = load_path(path)
    assert [r.case_id for r in ds.requests] == ["0", "2"]  # ids stay index-based
    assert "dropped 1 zsRE records" in caplog.text and "record 1" in caplog.text
    assert len(load_path(path, target="answers0").requests) == 3


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"src": DELETE}, "src", "is missing"),
        ({"src": None}, "src", "a non-empty string, got null"),
        ({"answers": "River"}, "answers", "a list of non-empty strings"),
        ({"answers": []}, "answers", "non-empty list"),
        ({"answers": ["ok", 3]}, "answers[1]", "a non-empty string"),
        ({"alt": 5}, "alt", "a non-empty string, got int 5"),
        ({"subject": "   "}, "subject", "a non-empty string"),
        ({"rephrase": ["a"]}, "rephrase", "a non-empty string, got list"),
        ({"loc_ans": DELETE}, "loc_ans", "is missing"),
    ],
)
def test_zsre_malformed_record_names_file_record_and_field(
    tmp_path: Path, changes: dict[str, Any], field: str, expected: str
) -> None:
    bad = zsre_record(1)
    for key, value in changes.items():
        if value is DELETE:
            del bad[key]
        else:
            bad[key] = value
    path = write_json(tmp_path / "bad_zsre.json", [zsre_record(0), bad])
    expect_error(lambda: load_path(path), "bad_zsre.json", "record 1", f"field {field!r}", expected)


def test_zsre_rejects_a_flat_target(tmp_path: Path) -> None:
    path = write_json(tmp_path / "z.json", [zsre_record(0)])
    expect_error(lambda: load_path(path, target="target_new"), "z.json", "'alt' or 'answers0'")


# -- flat EasyEdit/LocFT --------------------------------------------------------------


def test_flat_records_with_strings_lists_extras_and_missing_optionals(tmp_path: Path) -> None:
    records = [
        flat_record(0),
        flat_record(
            1,
            rephrase_prompt=["Entity 1 lies in", "Entity 1 can be found in"],
            locality_prompt=["A is in", "B is in"],
            locality_ground_truth=["Europe", "Africa"],
            personas=[{"ignored": True}],  # WikiBigEdit-style extra field
            mhop="ignored",
        ),
        flat_record(2, locality_prompt=["A is in", "B is in"], locality_ground_truth="Europe"),
        {"case_id": "s3", "prompt": "Entity 3 is in", "subject": "Entity 3", "target_new": "Asia"},
        flat_record(4, rephrase_prompt=None, locality_prompt=None, locality_ground_truth=None),
        flat_record(5, ground_truth=["Europe", "EU"], locality_ground_truth=[["Europe", "EU"]]),
        flat_record(6, rephrase_prompt=[], locality_prompt=[], locality_ground_truth=[]),
    ]
    ds = load_path(write_json(tmp_path / "flat.json", records))
    assert (ds.format, ds.target) == ("flat", "target_new")
    r0, r1, r2, r3, r4, r5, r6 = ds.requests
    assert r0.case_id == "0" and r0.target_true == "Europe"
    assert r0.rephrase_prompts == ("The continent of Entity 0 is",)
    # A locality answer that is the true object marks CounterFact's neighbourhood prompts.
    assert r0.locality == (LocalityPrompt("Mount Example is in", "Europe", "neighbourhood"),)
    assert r1.rephrase_prompts == ("Entity 1 lies in", "Entity 1 can be found in")
    assert r1.locality == (LocalityPrompt("A is in", "Europe"), LocalityPrompt("B is in", "Africa"))
    assert [loc.answer for loc in r2.locality] == ["Europe", "Europe"]
    assert [loc.kind for loc in r2.locality] == ["neighbourhood", "neighbourhood"]
    assert (r3.case_id, r3.target_true, r3.rephrase_prompts, r3.locality) == ("s3", None, (), ())
    assert (r4.rephrase_prompts, r4.locality) == ((), ())
    assert r5.target_true == "Europe" and r5.locality[0].answer == "Europe"
    assert (r6.rephrase_prompts, r6.locality) == ((), ())


def test_flat_case_id_defaults_to_the_index(tmp_path: Path) -> None:
    rec = flat_record(0)
    del rec["case_id"]
    ds = load_path(write_json(tmp_path / "flat.json", [flat_record(9), rec]))
    assert [r.case_id for r in ds.requests] == ["9", "1"]


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"subject": DELETE}, "subject", "is missing"),
        ({"target_new": None}, "target_new", "got null"),
        ({"prompt": ""}, "prompt", "a non-empty string"),
        ({"target_new": 42}, "target_new", "got int 42"),
        ({"target_new": ["Asia"]}, "target_new", "a non-empty string, got list"),
        ({"locality_ground_truth": DELETE}, "locality_ground_truth", "is missing"),
        ({"locality_prompt": DELETE}, "locality_prompt", "is missing"),
        ({"locality_prompt": ["a", "b", "c"], "locality_ground_truth": ["x", "y"]},
         "locality_ground_truth", "3 answers"),
        ({"rephrase_prompt": ["ok", ""]}, "rephrase_prompt[1]", "a non-empty string"),
        ({"case_id": True}, "case_id", "an integer or a non-empty string"),
    ],
)
def test_flat_malformed_record_names_file_record_case_and_field(
    tmp_path: Path, changes: dict[str, Any], field: str, expected: str
) -> None:
    bad = flat_record(17)
    for key, value in changes.items():
        if value is DELETE:
            del bad[key]
        else:
            bad[key] = value
    path = write_json(tmp_path / "bad_flat.json", [flat_record(3), bad])
    fragments = ["bad_flat.json", "record 1", f"field {field!r}", expected]
    if field != "case_id":
        fragments.append("(case_id 17)")
    expect_error(lambda: load_path(path), *fragments)


def test_flat_locality_kind_per_prompt_or_for_all(tmp_path: Path) -> None:
    two = {"locality_prompt": ["The capital of Peru is", "Water boils at"],
           "locality_ground_truth": ["Lima", "100 degrees"]}
    path = write_json(tmp_path / "kinds.json", [
        flat_record(0, **two, locality_kind=["neighbourhood", "distant"]),
        flat_record(1, **two, locality_kind="distant"),
        flat_record(2, **two),
    ])
    first, second, third = load_path(path).requests
    assert [loc.kind for loc in first.locality] == ["neighbourhood", "distant"]
    assert [loc.kind for loc in second.locality] == ["distant", "distant"]
    assert [loc.kind for loc in third.locality] == [None, None]
    for bad, field in ((["distant"], "locality_kind"), (["near", "distant"], "locality_kind[0]")):
        path = write_json(tmp_path / "bad_kinds.json", [flat_record(5, **two, locality_kind=bad)])
        expect_error(lambda p=path: load_path(p), "bad_kinds.json", "record 0", f"field {field!r}",
                     "neighbourhood")


@needs_shared
def test_counterfact_3k_locality_is_neighbourhood() -> None:
    ds = load_dataset("counterfact-3k", data_dir=str(SHARED), num=5)
    assert {loc.kind for r in ds.requests for loc in r.locality} == {"neighbourhood"}
    ds = load_dataset("zsre-3k", data_dir=str(SHARED), num=5)
    assert {loc.kind for r in ds.requests for loc in r.locality} == {"distant"}


def test_flat_duplicate_case_ids_are_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "dup.json", [flat_record(5), flat_record(6), flat_record(5)])
    expect_error(lambda: load_path(path), "dup.json", "record 2", "case_id 5", "duplicate of record 0")


def test_flat_rejects_zsre_targets(tmp_path: Path) -> None:
    path = write_json(tmp_path / "flat.json", [flat_record(0)])
    expect_error(lambda: load_path(path, target="alt"), "flat.json", "'target_new'")


# -- ROME CounterFact -----------------------------------------------------------------


def test_rome_counterfact_record(tmp_path: Path) -> None:
    path = write_json(tmp_path / "counterfact.json", [rome_record(7), rome_record(8)])
    ds = load_path(path)
    assert (ds.format, ds.target) == ("counterfact_rome", "target_new")
    req = ds.requests[0]
    assert req.case_id == "7"
    assert req.prompt == "The native language of Ana Example is"
    assert req.subject == "Ana Example"
    assert (req.target_new, req.target_true) == ("Finnish", "Portuguese")
    assert len(req.rephrase_prompts) == 2 and all("Ana Example" in p for p in req.rephrase_prompts)
    # Neighbourhood prompts share the true object: it is their locality answer.
    assert [loc.answer for loc in req.locality] == ["Portuguese"] * 3
    assert {loc.kind for loc in req.locality} == {"neighbourhood"}
    assert req.locality[0].prompt == "The native language of Bruno Sample is"


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        (lambda r: r["requested_rewrite"].update(prompt="The native language is"),
         "requested_rewrite.prompt", "one '{}'"),
        (lambda r: r["requested_rewrite"].update(target_new="Finnish"),
         "requested_rewrite.target_new", "an object"),
        (lambda r: r["requested_rewrite"].pop("subject"), "requested_rewrite.subject", "is missing"),
        (lambda r: r["requested_rewrite"]["target_true"].update(str=""),
         "requested_rewrite.target_true.str", "a non-empty string"),
        (lambda r: r.update(neighborhood_prompts="one prompt"), "neighborhood_prompts", "a list"),
        (lambda r: r.pop("case_id"), "case_id", "is missing"),
    ],
)
def test_rome_counterfact_malformed(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], Any], field: str, expected: str
) -> None:
    bad = rome_record(8)
    mutate(bad)
    path = write_json(tmp_path / "cf_bad.json", [rome_record(7), bad])
    expect_error(lambda: load_path(path), "cf_bad.json", "record 1", f"field {field!r}", expected)


# -- JSON lines and detection ---------------------------------------------------------


def test_jsonl_of_flat_records(tmp_path: Path) -> None:
    path = tmp_path / "edits.jsonl"
    path.write_text(
        json.dumps(flat_record(0)) + "\n\n" + json.dumps(flat_record(1)) + "\n", encoding="utf-8"
    )
    ds = load_path(path)
    assert ds.format == "jsonl" and ds.target == "target_new"
    assert [r.case_id for r in ds.requests] == ["0", "1"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "edits.jsonl"
    bad = flat_record(2, subject=7)
    path.write_text("\n".join(json.dumps(r) for r in (flat_record(0), flat_record(1), bad)) + "\n")
    expect_error(lambda: load_path(path), "edits.jsonl", "line 3", "(case_id 2)", "field 'subject'")
    path.write_text(json.dumps(flat_record(0)) + "\n{not json\n")
    expect_error(lambda: load_path(path), "edits.jsonl", "line 2", "invalid JSON")


def test_jsonl_without_suffix_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "edits.txt"
    path.write_text(json.dumps(zsre_record(0)) + "\n" + json.dumps(zsre_record(1)) + "\n")
    ds = load_path(path)
    assert ds.format == "jsonl" and ds.target == "alt" and len(ds.requests) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"a": 1}', "expected a JSON list of records, got dict"),
        ("[]", "no records"),
        ('[{"question": "x", "answer": "y"}]', "cannot tell the format"),
        ('[["not", "an", "object"]]', "record 0: expected a JSON object"),
        ('[{"prompt": "x",\n "target_new": }]', "invalid JSON at line 2"),
    ],
)
def test_unusable_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "odd.json"
    path.write_text(content, encoding="utf-8")
    expect_error(lambda: load_path(path), "odd.json", expected)


def test_a_later_record_of_another_schema_fails_on_its_fields(tmp_path: Path) -> None:
    path = write_json(tmp_path / "mixed.json", [flat_record(0), zsre_record(1)])
    expect_error(lambda: load_path(path), "mixed.json", "record 1", "field 'prompt'", "is missing")


# -- the real released files (../shared/data) -----------------------------------------


@needs_shared
def test_shared_zsre_3k_by_path_and_by_name() -> None:
    by_path = load_dataset(str(SHARED_ZSRE))
    assert (by_path.name, by_path.format, by_path.target) == (str(SHARED_ZSRE), "zsre", "alt")
    ds = load_dataset("zsre-3k", data_dir=str(SHARED))  # shared layout: DIR/zsre/zsre_3k.json
    assert ds.name == "zsre-3k" and Path(ds.path) == SHARED_ZSRE
    assert ds.sha256 == SOURCES["zsre-3k"].sha256 == sha256_file(SHARED_ZSRE)
    assert len(ds.requests) == 3000
    assert len({r.case_id for r in ds.requests}) == 3000
    for r in ds.requests:
        assert r.target_new and r.target_true and r.prompt and r.subject
        assert len(r.rephrase_prompts) == 1 and len(r.locality) == 1
        assert r.locality[0].prompt.startswith("nq question: ")
    # Locate-then-edit editors need the subject in the prompt; in this file it always is.
    assert sum(r.subject not in r.prompt for r in ds.requests) == 0


@needs_shared
def test_shared_counterfact_3k_by_name() -> None:
    ds = load_dataset("counterfact-3k", data_dir=str(SHARED))
    assert (ds.format, ds.target, len(ds.requests)) == ("flat", "target_new", 3000)
    assert ds.sha256 == SOURCES["counterfact-3k"].sha256
    assert all(r.target_true and r.rephrase_prompts and r.locality for r in ds.requests)
    assert all(r.subject in r.prompt for r in ds.requests)
    assert ds.requests[0].case_id == str(json.loads(SHARED_CF.read_text())[0]["case_id"])


@needs_shared
def test_flat_data_dir_layout_and_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat_dir = tmp_path / "flat"
    flat_dir.mkdir()
    (flat_dir / "zsre_3k.json").symlink_to(SHARED_ZSRE)
    assert load_dataset("zsre-3k", data_dir=str(flat_dir)).path == str(flat_dir / "zsre_3k.json")
    monkeypatch.setenv("EDITBENCH_DATA_DIR", str(SHARED))
    assert Path(load_dataset("counterfact-3k", num=5).path) == SHARED_CF


def test_checksum_mismatch_in_data_dir_is_an_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fake = write_json(data_dir / "zsre" / "zsre_3k.json", [zsre_record(0)])
    expect_error(
        lambda: load_dataset("zsre-3k", data_dir=str(data_dir)),
        str(fake), "sha256", SOURCES["zsre-3k"].sha256 or "", "pass the path itself",
    )
    assert len(load_dataset(str(fake)).requests) == 1  # the path itself loads unverified


def test_data_dir_must_exist(tmp_path: Path) -> None:
    expect_error(
        lambda: load_dataset("zsre-3k", data_dir=str(tmp_path / "nope")), "nope", "not a directory"
    )


# -- selection ------------------------------------------------------------------------


def test_first_n_and_seeded_random_selection() -> None:
    full = load_dataset("embedded").requests
    assert load_dataset("embedded", num=10).requests == full[:10]
    a = load_dataset("embedded", num=50, sample="random", seed=1).requests
    b = load_dataset("embedded", num=50, sample="random", seed=1).requests
    c = load_dataset("embedded", num=50, sample="random", seed=2).requests
    assert a == b
    assert [r.case_id for r in a] != [r.case_id for r in c]
    assert len({r.case_id for r in a}) == 50 and a != full[:50]
    # Draws of one seed are nested: the first 20 of 50 are the draw of 20.
    assert load_dataset("embedded", num=20, sample="random", seed=1).requests == a[:20]
    shuffled = load_dataset("embedded", sample="random", seed=3).requests
    assert sorted(r.case_id for r in shuffled) == sorted(r.case_id for r in full)


def test_selection_arguments_are_checked() -> None:
    requests = load_dataset("embedded").requests
    expect_error(lambda: select(requests, num=len(requests) + 1), f"{len(requests)} requests")
    expect_error(lambda: select(requests, num=0), "num")
    expect_error(lambda: select(requests, sample="last"), "sample", "'last'")
    expect_error(lambda: select(requests, seed="1"), "seed")  # type: ignore[arg-type]


# -- resolution order, download, no network -------------------------------------------


def test_resolution_order_data_dir_then_cache_then_download(
    tmp_path: Path, isolated: Path, serve: Callable[[Path], tuple[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    www = tmp_path / "www"
    write_json(www / "zsre_mend_eval.json", [zsre_record(i) for i in range(3)])
    base, seen = serve(www)
    monkeypatch.setenv("EDITBENCH_DATA_URL_ZSRE", f"{base}/zsre_mend_eval.json")
    data_dir = tmp_path / "data"
    in_dir = write_json(data_dir / "zsre_mend_eval.json", [zsre_record(0)])
    in_cache = write_json(isolated / "data" / "zsre_mend_eval.json", [zsre_record(i) for i in range(2)])

    assert load_dataset("zsre", data_dir=str(data_dir)).path == str(in_dir)
    assert load_dataset("zsre").path == str(in_cache)
    assert seen == []  # a local copy means no download
    in_cache.unlink()
    ds = load_dataset("zsre")
    assert ds.path == str(in_cache) and len(ds.requests) == 3
    assert seen == ["/zsre_mend_eval.json"]


def test_download_verifies_checksum_and_writes_the_cache_atomically(
    tmp_path: Path, isolated: Path, serve: Callable[[Path], tuple[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    www = tmp_path / "www"
    payload = write_json(www / "counterfact_3k.json", [flat_record(i) for i in range(4)])
    base, seen = serve(www)
    monkeypatch.setenv("EDITBENCH_DATA_URL_COUNTERFACT_3K", f"{base}/counterfact_3k.json")
    # Pin this file's checksum so the download verifies (the released file is tested below).
    source = SOURCES["counterfact-3k"]
    monkeypatch.setitem(
        SOURCES, "counterfact-3k", dataclasses.replace(source, sha256=sha256_file(payload))
    )
    ds = load_dataset("counterfact-3k")
    cached = isolated / "data" / "counterfact_3k.json"
    assert ds.path == str(cached) and cached.read_bytes() == payload.read_bytes()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["counterfact_3k.json"]
    assert len(load_dataset("counterfact-3k").requests) == 4
    assert seen == ["/counterfact_3k.json"]  # the second load came from the cache


@needs_shared
def test_download_of_the_released_file_passes_the_pinned_checksum(
    isolated: Path, serve: Callable[[Path], tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen = serve(SHARED / "counterfact")
    monkeypatch.setenv("EDITBENCH_DATA_URL_COUNTERFACT_3K", f"{base}/counterfact_3k.json")
    ds = load_dataset("counterfact-3k")
    assert ds.sha256 == SOURCES["counterfact-3k"].sha256
    assert Path(ds.path) == isolated / "data" / "counterfact_3k.json"
    assert len(ds.requests) == 3000 and seen == ["/counterfact_3k.json"]


def test_checksum_mismatch_on_download_leaves_no_file(
    tmp_path: Path, isolated: Path, serve: Callable[[Path], tuple[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    www = tmp_path / "www"
    write_json(www / "zsre_3k.json", [zsre_record(0)])  # not the released file
    base, _ = serve(www)
    monkeypatch.setenv("EDITBENCH_DATA_URL_ZSRE_3K", f"{base}/zsre_3k.json")
    expect_error(
        lambda: load_dataset("zsre-3k"), "sha256", SOURCES["zsre-3k"].sha256 or "", "nothing was written"
    )
    assert list((isolated / "data").iterdir()) == []


def test_unpinned_download_logs_its_hash(
    tmp_path: Path, serve: Callable[[Path], tuple[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    www = tmp_path / "www"
    payload = write_json(www / "wikibigedit_3k.json", [flat_record(i) for i in range(2)])
    base, _ = serve(www)
    monkeypatch.setitem(URL_OVERRIDES, "wikibigedit-3k", f"{base}/wikibigedit_3k.json")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("wikibigedit-3k")
    digest = sha256_file(payload)
    assert ds.sha256 == digest and digest in caplog.text
    assert "holds 2 records, the release has 3000" in caplog.text


def test_no_network_error_says_what_to_place_where(isolated: Path) -> None:
    url = URL_OVERRIDES["zsre"]
    expect_error(
        lambda: load_dataset("zsre"),
        "dataset 'zsre' not found", f"download {url}",
        f"place it at {isolated / 'data' / 'zsre_mend_eval.json'}", "--data-dir", "download failed",
    )


def test_not_found_error_names_the_searched_data_dir(tmp_path: Path) -> None:
    expect_error(
        lambda: load_dataset("wikibigedit-3k", data_dir=str(tmp_path)),
        f"dataset 'wikibigedit-3k' not found in {tmp_path}:", "wikibigedit/wikibigedit_3k.json",
    )


def test_http_error_and_offline_mode(
    tmp_path: Path, isolated: Path, serve: Callable[[Path], tuple[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "www").mkdir()
    base, seen = serve(tmp_path / "www")
    monkeypatch.setenv("EDITBENCH_DATA_URL_ZSRE", f"{base}/missing.json")
    expect_error(lambda: load_dataset("zsre"), "dataset 'zsre' not found", "404")
    monkeypatch.setenv("EDITBENCH_OFFLINE", "1")
    expect_error(lambda: load_dataset("zsre"), "not found", "EDITBENCH_OFFLINE")
    assert seen == ["/missing.json"]  # offline: no second request
    assert list((isolated / "data").iterdir()) == []


# -- the embedded dataset, names ------------------------------------------------------


def test_embedded_dataset() -> None:
    ds = load_dataset(DEFAULT_DATASET)
    assert DEFAULT_DATASET == "embedded" and ds.name == "embedded"
    assert ds.format == "flat" and len(ds.requests) >= 50
    assert len({r.case_id for r in ds.requests}) == len(ds.requests)
    assert len({r.prompt for r in ds.requests}) == len(ds.requests)
    for r in ds.requests:
        assert r.subject in r.prompt and all(r.subject in p for p in r.rephrase_prompts)
        assert r.target_true and r.target_new != r.target_true
        assert len(r.target_new.split()) <= 3 and len(r.target_true.split()) <= 3
        assert r.prompt == r.prompt.strip() and r.target_new == r.target_new.strip()
        assert r.rephrase_prompts and r.locality
        assert {loc.kind for loc in r.locality} <= {"neighbourhood", "distant"}
    # Neighbourhood prompts are never edited: editing every record leaves them neighbours.
    edited = {r.prompt for r in ds.requests}
    near = [loc for r in ds.requests for loc in r.locality if loc.kind == "neighbourhood"]
    assert near and not edited & {loc.prompt for loc in near}
    assert sum(loc.kind == "distant" for r in ds.requests for loc in r.locality) >= len(ds.requests)
    assert not (REPO / "datasets" / "__init__.py").exists()  # would shadow HF `datasets`


def test_unknown_names_and_missing_paths() -> None:
    expect_error(lambda: load_dataset("zsre3k"), "unknown dataset 'zsre3k'", "did you mean", "'zsre-3k'")
    expect_error(lambda: load_dataset("counterfakt"), "did you mean", "'counterfact'")
    expect_error(lambda: load_dataset("some/missing.json"), "dataset file 'some/missing.json' not found")


def test_dataset_names_and_a_cheap_import() -> None:
    assert {"embedded", "zsre", "counterfact", "zsre-3k", "counterfact-3k", "wikibigedit-3k"} <= set(
        dataset_names()
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys, editbench.data; print('torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout.strip() == "False"


def test_loaded_dataset_is_frozen() -> None:
    ds = load_dataset("embedded", num=1)
    assert isinstance(ds, LoadedDataset)
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


def test_jsonl_record_may_hold_a_unicode_line_separator(tmp_path):
    """U+2028 inside a string is not a record boundary (str.splitlines would split there)."""
    rec = {"case_id": 0, "prompt": "The capital of France is", "subject": "France",
           "target_new": "Rome\u2028Lazio", "ground_truth": "Paris"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\r\n"
                    + json.dumps({**rec, "case_id": 1}, ensure_ascii=False) + "\n", encoding="utf-8")
    requests = load_dataset(str(path)).requests
    assert [r.target_new for r in requests] == ["Rome\u2028Lazio"] * 2


def test_a_file_loaded_by_path_gets_the_kinds_it_gets_by_name():
    path = shared_file("counterfact", "counterfact_3k.json")
    by_name = load_dataset("counterfact-3k", data_dir=str(SHARED_DATA), num=50).requests
    by_path = load_dataset(str(path), num=50).requests
    assert [[loc.kind for loc in r.locality] for r in by_path] == \
        [[loc.kind for loc in r.locality] for r in by_name]
    assert all(loc.kind == "neighbourhood" for r in by_path for loc in r.locality)
    # CounterFact's other flat files carry the same mark (answer = the true object).
    train = load_dataset(str(shared_file("counterfact", "counterfact_train.json")), num=20).requests
    assert all(loc.kind == "neighbourhood" for r in train for loc in r.locality)
