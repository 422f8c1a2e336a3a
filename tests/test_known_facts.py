"""``editbench known-facts``: which locality facts a model knows, and the dataset built of them."""

from __future__ import annotations

import json

import pytest

from editbench.api import EditRequest, LocalityPrompt
from editbench.data import load_dataset
from editbench.data.known import KnownSettings, build, resolve_known
from editbench.data.loader import LoadedDataset
from editbench.errors import EditbenchError
from editbench.evaluate.generation import generate_answers
from editbench.evaluate.normalize import cut_at_stop, knows


def _source(handle, n: int = 12) -> LoadedDataset:
    """Requests whose locality gold is the tiny model's own answer for even cases (known)
    and a word it does not say for odd ones (unknown)."""
    prompts = [f"fact number {i} is" for i in range(2 * n)]
    said = [cut_at_stop(a) for a in generate_answers(handle, prompts, 6, 8)]
    requests = []
    for i in range(n):
        nbr, dist = prompts[2 * i], prompts[2 * i + 1]
        gold_n = said[2 * i] if i % 2 == 0 and said[2 * i] else "zebra"
        gold_d = said[2 * i + 1] if i % 3 == 0 and said[2 * i + 1] else "zebra"
        requests.append(EditRequest(
            case_id=str(i), prompt=f"subject {i % 5} likes", subject=f"subject {i % 5}",
            target_new="tea", target_true="coffee", rephrase_prompts=(f"subject {i % 5} loves",),
            locality=(LocalityPrompt(nbr, gold_n, "neighbourhood"), LocalityPrompt(dist, gold_d, "distant"))))
    return LoadedDataset("toy", "toy.json", "0" * 64, "flat", "target_new", requests)


def test_every_locality_prompt_of_the_built_data_is_known(tiny_llama, tmp_path):
    source = _source(tiny_llama)
    settings = KnownSettings(max_new_tokens=6, batch_size=8, tune_fraction=0.4)
    card = build(tiny_llama, [source], tmp_path / "a", settings, "tiny-llama")
    records = {part: json.loads((tmp_path / "a" / f"{part}.json").read_text()) for part in ("tune", "eval")}
    every = records["tune"] + records["eval"]
    assert every, "the toy source has known facts: something must be kept"
    answers = dict(zip(
        [p for r in every for p in r["locality_prompt"]],
        generate_answers(tiny_llama, [p for r in every for p in r["locality_prompt"]], 6, 8), strict=True))
    for r in every:
        for prompt, gold in zip(r["locality_prompt"], r["locality_ground_truth"], strict=True):
            assert knows(cut_at_stop(answers[prompt]), gold), (r["case_id"], prompt, gold)
    # Kept: the requests with a known locality prompt of their own, nothing else.
    own_known = {r.case_id for r in source.requests
                 if any(loc.answer != "zebra" for loc in r.locality)}
    assert {r["case_id"].split(":")[1] for r in every} == own_known
    # The slices share no edit subject and no locality prompt.
    subjects = [{r["subject"] for r in records[p]} for p in ("tune", "eval")]
    prompts = [{q for r in records[p] for q in r["locality_prompt"]} for p in ("tune", "eval")]
    assert not subjects[0] & subjects[1] and not prompts[0] & prompts[1]
    # The card counts what was scanned and known, and names the files by hash.
    counts = card["counts"]["toy"]
    assert counts["neighbourhood"]["scanned"] == 12 and counts["distant"]["scanned"] == 12
    assert counts["neighbourhood"]["known"] == sum(1 for r in source.requests
                                                   if r.locality[0].answer != "zebra")
    assert card["files"]["tune"]["records"] == len(records["tune"])
    # Deterministic: a second build writes the same bytes.
    again = build(tiny_llama, [source], tmp_path / "b", settings, "tiny-llama")
    assert again["files"] == card["files"]
    # The files load as editing data with each prompt's kind.
    loaded = load_dataset(str(tmp_path / "a" / "eval.json"))
    assert all(loc.kind in ("neighbourhood", "distant") for r in loaded.requests for loc in r.locality)


def test_a_known_name_that_was_never_built_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path))
    assert resolve_known("zsre-3k") is None
    with pytest.raises(EditbenchError, match="editbench known-facts --model smollm2-135m"):
        load_dataset("known-smollm2-135m-tune")
