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
    # A build again in the same folder reads the scan back and asks the model nothing; a
    # line cut by a kill is asked again.
    import editbench.evaluate.generation as generation

    scan_file = tmp_path / "a" / "scan.jsonl"
    lines = scan_file.read_text().splitlines(keepends=True)
    scan_file.write_text("".join(lines[:-1]) + lines[-1][:5])
    asked: list[str] = []
    real = generation.generate_answers

    def spy(handle, prompts, *args, **kwargs):
        asked.extend(prompts)
        return real(handle, prompts, *args, **kwargs)

    generation.generate_answers = spy
    try:
        third = build(tiny_llama, [source], tmp_path / "a", settings, "tiny-llama")
    finally:
        generation.generate_answers = real
    assert len(asked) == 1 and third["files"] == card["files"]
    # The files load as editing data with each prompt's kind.
    loaded = load_dataset(str(tmp_path / "a" / "eval.json"))
    assert all(loc.kind in ("neighbourhood", "distant") for r in loaded.requests for loc in r.locality)


def test_a_known_name_that_was_never_built_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path))
    assert resolve_known("zsre-3k") is None
    with pytest.raises(EditbenchError, match="editbench known-facts --model smollm2-135m"):
        load_dataset("known-smollm2-135m-tune")


def test_borrowed_distant_facts_are_about_other_subjects_and_relations(tiny_llama, tmp_path):
    """Known edit-prompt facts of subjects nobody edits become distant locality for requests
    of another relation; an edited subject's fact, or one of the same relation, never does."""
    texts = ["item 0 is made of", "item 1 is made of", "item 5 is made of", "item 6 is made of",
             "item 2 is made of", "town 2 lies in", "town 3 lies in"]
    said = dict(zip(texts, (cut_at_stop(a) for a in generate_answers(tiny_llama, texts, 6, 8)),
                    strict=True))
    assert all(said.values()), "the tiny model answers every prompt"

    def request(subject, prompt, locality):
        return EditRequest(case_id=subject, prompt=prompt, subject=subject, target_new="tea",
                           target_true=said[prompt], locality=locality)

    requests = [
        # Edited: a known neighbourhood prompt of their own, no known distant one.
        request("item 0", texts[0], (LocalityPrompt(texts[2], said[texts[2]], "neighbourhood"),)),
        request("item 1", texts[1], (LocalityPrompt(texts[3], said[texts[3]], "neighbourhood"),)),
        # Not kept (nothing known of their locality), but their edit facts are known.
        request("item 2", texts[4], (LocalityPrompt("nothing", "zebra", "distant"),)),
        request("town 2", texts[5], (LocalityPrompt("nothing", "zebra", "distant"),)),
        request("town 3", texts[6], (LocalityPrompt("nothing", "zebra", "distant"),)),
    ]
    source = LoadedDataset("toy", "toy.json", "0" * 64, "flat", "target_new", requests)
    build(tiny_llama, [source], tmp_path, KnownSettings(max_new_tokens=6, batch_size=8,
                                                      tune_fraction=0.5), "tiny-llama")
    every = [r for part in ("tune", "eval") for r in json.loads((tmp_path / f"{part}.json").read_text())]
    assert {r["subject"] for r in every} == {"item 0", "item 1"}
    borrowed = [p for r in every for p, k in zip(r["locality_prompt"], r["locality_kind"], strict=True)
                if k == "distant"]
    # Only the towns' facts qualify: "item 2 is made of" shares the edits' relation, and the
    # edited items' own facts are meant to change.
    assert borrowed and set(borrowed) <= {"town 2 lies in", "town 3 lies in"}
