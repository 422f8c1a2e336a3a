"""Portability prompts, generation prompts and attribute snippets as the loaders read them,
from small files in the released layouts (KnowEdit, ROME's counterfact.json and
attribute_snippets.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from editbench.api import PortabilityPrompt
from editbench.data import load_dataset, load_path
from editbench.errors import EditbenchError

# KnowEdit's ZsRE-test-all.json layout (flat keys, nested locality/portability)
KNOWEDIT_ZSRE = {
    "subject": "Epaspidoceras",
    "target_new": "Noctuidae",
    "prompt": "Which family does Epaspidoceras belong to?",
    "ground_truth": ["Aspidoceratidae"],
    "rephrase_prompt": "What family are Epaspidoceras?",
    "cond": "Geometridae >> Noctuidae || Which family does Epaspidoceras belong to?",
    "locality": {"Relation_Specificity": [
        {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]}]},
    "portability": {"Reasoning": [
        {"prompt": "What is the common name for the family Epaspidoceras belongs to?",
         "ground_truth": "Owlet moths"}]},
}
# WikiData_recent: answers as lists of alias lists, several kinds
KNOWEDIT_RECENT = {
    "subject": "Leo Arons",
    "prompt": "The place of death of Leo Arons is",
    "target_new": "Berlin",
    "portability": {
        "Logical_Generalization": [{"prompt": "Is Leo Arons still alive?",
                                    "ground_truth": [["no"], ["incorrect"], ["false"]]}],
        "Reasoning": [{"prompt": "The name of the continent which the place of death of Leo "
                                 "Arons is part of is",
                       "ground_truth": [["Europe", "European continent"]]}],
        "Subject_Aliasing": [{"prompt": "The place of death of Martin Leo Arons is",
                              "ground_truth": [["Berlin", "Berlin, Germany"]]}],
    },
    "locality": {"Relation_Specificity": [
        {"prompt": "The name of the father of Leo Arons is", "ground_truth": [["Albert Arons"]]}]},
}


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_knowedit_portability(tmp_path: Path) -> None:
    loaded = load_path(write(tmp_path / "knowedit.json", [KNOWEDIT_ZSRE, KNOWEDIT_RECENT]))
    zsre, recent = loaded.requests
    assert zsre.target_true == "Aspidoceratidae" and zsre.rephrase_prompts == (KNOWEDIT_ZSRE["rephrase_prompt"],)
    assert zsre.portability == (PortabilityPrompt(
        "What is the common name for the family Epaspidoceras belongs to?", "Owlet moths", "reasoning"),)
    assert [(p.kind, p.answer) for p in recent.portability] == [
        ("logical_generalization", "no"), ("reasoning", "Europe"), ("subject_aliasing", "Berlin")]
    # files without the field still have no portability prompts
    plain = dict(KNOWEDIT_ZSRE)
    del plain["portability"]
    assert load_path(write(tmp_path / "plain.json", [plain])).requests[0].portability == ()


@pytest.mark.parametrize(("portability", "field", "expected"), [
    (["Reasoning"], "portability", "an object"),
    ({"Reasoning": {"prompt": "x"}}, "portability.Reasoning", "a list"),
    ({"Reasoning": [{"prompt": "Q?"}]}, "portability.Reasoning[0].ground_truth", "is missing"),
    ({"Reasoning": [{"prompt": "Q?", "ground_truth": [[]]}]},
     "portability.Reasoning[0].ground_truth", "a non-empty string"),
    ({"Reasoning": [{"prompt": "", "ground_truth": "A"}]}, "portability.Reasoning[0].prompt",
     "a non-empty string"),
])
def test_knowedit_portability_malformed(tmp_path: Path, portability: Any, field: str,
                                        expected: str) -> None:
    path = write(tmp_path / "bad.json", [KNOWEDIT_ZSRE, {**KNOWEDIT_ZSRE, "portability": portability}])
    with pytest.raises(EditbenchError) as info:
        load_path(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("bad.json", "record 1", f"field {field!r}", expected):
        assert fragment in message


def rome_record(case_id: int, relation: str = "P103", target_id: str = "Q1412") -> dict[str, Any]:
    """One record of ROME's counterfact.json (the released layout)."""
    return {
        "case_id": case_id,
        "pararel_idx": 1234,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": relation,
            "target_new": {"str": "Finnish", "id": target_id},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": f"Person {case_id}",
        },
        "paraphrase_prompts": [f"Person {case_id} spoke the language"],
        "neighborhood_prompts": ["The mother tongue of Someone Else is"],
        "attribute_prompts": ["Eino Testinen is a native speaker of"],
        "generation_prompts": [f"Person {case_id}'s mother tongue is",
                               f"Where Person {case_id} is from, people speak the language of"],
    }


def snippets_file(path: Path) -> Path:
    """ROME's attribute_snippets.json layout."""
    return write(path, [
        {"relation_id": "P103", "target_id": "Q1412", "samples": [
            {"name": "Eino Testinen", "text": "Eino Testinen was a Finnish poet."},
            {"name": "Aino Esimerkki", "text": "Aino Esimerkki wrote in Finnish."}]},
        {"relation_id": "P27", "target_id": "Q1412", "samples": [
            {"name": "Other", "text": "Not the mother tongue relation."}]},
    ])


def test_rome_generation_prompts_and_attribute_snippets(tmp_path: Path, caplog) -> None:
    data = write(tmp_path / "counterfact.json",
                 [rome_record(0), rome_record(1, target_id="Q9999"), rome_record(2)])
    plain = load_dataset(str(data))
    assert plain.requests[0].generation_prompts == (
        "Person 0's mother tongue is", "Where Person 0 is from, people speak the language of")
    assert plain.requests[0].reference_texts == ()
    with caplog.at_level(logging.WARNING):
        loaded = load_dataset(str(data), attribute_snippets=str(snippets_file(tmp_path / "s.json")))
    assert loaded.requests[0].reference_texts == (
        "Eino Testinen was a Finnish poet.", "Aino Esimerkki wrote in Finnish.")
    assert loaded.requests[1].reference_texts == ()  # no snippets for (P103, Q9999)
    assert "1 of 3 requests have none" in caplog.text
    # selection first, then snippets for the selected requests only
    one = load_dataset(str(data), num=1, sample="random", seed=1, attribute_snippets=str(tmp_path / "s.json"))
    assert len(one.requests) == 1


def test_attribute_snippets_need_the_rome_layout(tmp_path: Path) -> None:
    snippets = snippets_file(tmp_path / "s.json")
    flat = write(tmp_path / "flat.json", [{"prompt": "The mother tongue of A is", "subject": "A",
                                           "target_new": "Finnish"}])
    with pytest.raises(EditbenchError, match="only ROME's full counterfact.json"):
        load_dataset(str(flat), attribute_snippets=str(snippets))
    bad = write(tmp_path / "bad_snippets.json", [{"relation_id": "P103", "target_id": "Q1",
                                                  "samples": [{"name": "x"}]}])
    data = write(tmp_path / "counterfact.json", [rome_record(0)])
    with pytest.raises(EditbenchError, match=r"bad_snippets.json: record 0: samples\[0\]"):
        load_dataset(str(data), attribute_snippets=str(bad))
