"""Capability scorers, task/suite files, caching and the lm-eval backend (tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, make_tiny, shared_file
from editbench.api import EditbenchError
from editbench.capability import (
    CapabilitySettings,
    cached_pre_edit,
    compare,
    evaluate_suite,
    load_suite,
    load_task,
    suite_names,
)
from editbench.capability.evaluate import choice_item
from editbench.capability.scoring import (
    ChoiceItem,
    OptionScore,
    answer_matches,
    option_scores,
    perplexity,
    pick,
    score_choices,
    score_generation,
)
from editbench.capability.spec import TaskSpec, split
from editbench.config import ConfigError
from editbench.evaluate.generation import generate_answers
from editbench.tokens import encode_prompt_target

ITEMS = [
    ChoiceItem("The capital of France is", ["Paris", "Rome", "a city in Italy"], [0]),
    ChoiceItem("Q: which company made the iPhone? Apple made it\nA:", ["Apple", "Microsoft"], [0]),
    ChoiceItem("Gold", ["Au", "Jupiter is large", "x"], [2]),
    ChoiceItem("0 1 2 3 4 5 6 7 8 9 a b c d e f g h", ["i", "j k", "z"], [1]),
]


def _direct_logprob(handle, prompt: str, option: str) -> float:
    """Sum of log p(option token | everything before it) from one plain forward pass."""
    pt = encode_prompt_target(handle.tokenizer, prompt, option)
    ids = torch.tensor([pt.ids])
    with torch.no_grad():
        logp = torch.log_softmax(handle.model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(pt.prompt_ids)
    return sum(float(logp[start + j - 1, tok]) for j, tok in enumerate(pt.target_ids))


@pytest.mark.parametrize("share_prompt", [True, False])
def test_option_loglik_matches_direct_computation(tiny_handle, share_prompt):
    scores = option_scores(tiny_handle, ITEMS, batch_size=3, share_prompt=share_prompt)
    for item, row in zip(ITEMS, scores, strict=True):
        for option, got in zip(item.options, row, strict=True):
            assert got.logprob == pytest.approx(_direct_logprob(tiny_handle, item.context, option), abs=1e-4)
            assert got.num_chars == len(option)
    _, preds = score_choices(tiny_handle, ITEMS, "none", batch_size=2, share_prompt=share_prompt)
    for item, pred in zip(ITEMS, preds, strict=True):
        direct = [_direct_logprob(tiny_handle, item.context, o) for o in item.options]
        assert pred == max(range(len(direct)), key=direct.__getitem__)


def test_uniform_model_hand_checked(tiny_llama):
    """A zeroed LM head predicts every token with probability 1/V: an option of n tokens
    has log-likelihood -n log V, so the shortest option wins unnormalised, and per token
    every option ties (the first wins)."""
    with torch.no_grad():
        tiny_llama.model.get_output_embeddings().weight.zero_()
    tok = tiny_llama.tokenizer
    item = ChoiceItem("The capital of France is", ["a city in Italy", "Paris", "Rome"], [1])
    lengths = [len(encode_prompt_target(tok, item.context, o).target_ids) for o in item.options]
    assert lengths[0] > lengths[1]
    (row,) = option_scores(tiny_llama, [item])
    log_v = math.log(len(tok))
    for got, n in zip(row, lengths, strict=True):
        assert got.logprob == pytest.approx(-n * log_v, rel=1e-5)
    shortest = min(range(3), key=lambda j: (lengths[j], j))
    assert score_choices(tiny_llama, [item], "none")[1] == [shortest]
    assert score_choices(tiny_llama, [item], "tokens")[1] == [0]
    per_char = [-n * log_v / len(o) for n, o in zip(lengths, item.options, strict=True)]
    assert score_choices(tiny_llama, [item], "chars")[1] == [max(range(3), key=per_char.__getitem__)]
    assert perplexity(tiny_llama, ["Gold is Au."]).perplexity == pytest.approx(len(tok), rel=1e-4)


def test_length_normalisation_as_documented():
    a = OptionScore(logprob=-6.0, num_tokens=3, num_chars=12)  # mean -2 per token, -0.5 per char
    b = OptionScore(logprob=-4.0, num_tokens=1, num_chars=2)  # mean -4 per token, -2 per char
    assert pick([a, b], "none") == 1  # -4 > -6
    assert pick([a, b], "tokens") == 0  # -2 > -4
    assert pick([a, b], "chars") == 0  # -0.5 > -2
    assert pick([b, b], "none") == 0  # ties go to the first option
    with pytest.raises(ValueError, match="normalization"):
        score_choices(None, [ITEMS[0]], "bytes")


def test_exact_and_numeric_match():
    assert answer_matches("The Paris.", ["paris"])
    assert answer_matches("  an Apple ", ["apple", "x"])
    assert not answer_matches("Paris, France", ["Paris"])
    assert answer_matches("It is 1,234 apples", ["Natalia sold... #### 1234"], "numeric")
    assert answer_matches("-3.50", ["-3.5"], "numeric")
    assert not answer_matches("12", ["13"], "numeric")
    assert not answer_matches("no number", ["1"], "numeric")
    assert not answer_matches("twelve", ["12"], "numeric")


def test_generation_score_counts_matches(tiny_llama):
    prompts = ["The capital of France is", "Gold", "The Eiffel Tower is", "nq question:"]
    raw = generate_answers(tiny_llama, prompts, max_new_tokens=6, batch_size=4)
    from editbench.evaluate.normalize import cut_at_stop

    own = [cut_at_stop(r) for r in raw]
    # gold = the model's own answer for the first two prompts, a wrong one for the others
    answers = [[own[0] or "x"], ["zzz", own[1] or "x"], [own[2] + " extra"], ["qqq"]]
    expected = sum(answer_matches(o, a) for o, a in zip(own, answers, strict=True)) / 4
    score, preds = score_generation(tiny_llama, prompts, answers, max_new_tokens=6, batch_size=3)
    assert preds == own
    assert score == expected
    assert expected >= 0.5 if own[0] and own[1] else True


def test_perplexity_matches_direct_computation(tiny_handle):
    texts = ["The capital of France is Paris.", "Gold is Au.", "Paris is a city in France. Rome is a city in Italy."]
    tok = tiny_handle.tokenizer
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            loss = tiny_handle.model(input_ids=ids, labels=ids).loss
        n = ids.shape[1] - 1
        nll += float(loss) * n
        count += n
        single = perplexity(tiny_handle, [text])
        assert single.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-4)
    both = perplexity(tiny_handle, texts, batch_size=2)  # padded batches
    assert both.num_tokens == count
    assert both.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert both.score == pytest.approx(1 / both.perplexity)
    truncated = perplexity(tiny_handle, texts[2:], max_tokens=4)
    assert truncated.num_tokens == 3


def test_choice_items_from_records():
    bb = TaskSpec(name="bb", kind="multiple_choice", data="x.jsonl", choices_key="target_scores")
    assert choice_item(bb, {"target_scores": {"two": 0, "four": 1, "six": 0}}, "r0") == (["two", "four", "six"], [1])
    with pytest.raises(EditbenchError, match="no option scores above 0"):
        choice_item(bb, {"target_scores": {"a": 0, "b": 0}}, "r1")
    nli = TaskSpec(name="nli", kind="multiple_choice", data="x.jsonl", choices=["yes", "no"],
                   answer_key="label", label_map={"entailment": 0, "not_entailment": 1})
    assert choice_item(nli, {"label": "not_entailment"}, "r0") == (["yes", "no"], [1])
    assert choice_item(nli, {"label": "yes"}, "r0") == (["yes", "no"], [0])
    with pytest.raises(EditbenchError, match=r"nli.*r7.*missing key 'label'"):
        choice_item(nli, {"sentence": "x"}, "r7")
    with pytest.raises(EditbenchError, match="out of range"):
        choice_item(nli, {"label": 2}, "r0")
    mmlu = TaskSpec(name="m", kind="multiple_choice", data="x.jsonl", choices_key="choices", answer_key="answer")
    assert choice_item(mmlu, {"choices": ["a", "b", "c", "d"], "answer": 3}, "r0")[1] == [3]
    mmlu.answer_key = None
    with pytest.raises(EditbenchError, match="'answer_key' is needed"):
        choice_item(mmlu, {"choices": ["a", "b"], "answer": 1}, "r0")


def test_split_is_seeded_and_disjoint():
    task = TaskSpec(name="t", kind="multiple_choice", data="x.jsonl", choices=["a"], answer_key="y",
                    num_fewshot=3, limit=10, seed=1)
    shots, chosen = split(50, task, None)
    assert len(shots) == 3 and len(chosen) == 10 and not set(shots) & set(chosen)
    assert split(50, task, None) == (shots, chosen)
    assert len(split(50, task, 4)[1]) == 4  # the run-time limit caps the task's
    task.sample, task.num_fewshot = "last", 0
    assert split(50, task, None) == ([], list(range(40, 50)))
    task.num_fewshot = 50
    with pytest.raises(EditbenchError, match="few-shot"):
        split(50, task, None)


def test_builtin_suites_load():
    assert {"default", "shared", "paper"} <= set(suite_names())
    paper = load_suite("paper")
    assert paper.spec.backend == "lm-eval"
    assert [t.harness_task for t in paper.tasks] == ["mmlu", "nq_open", "sst2", "wmt16-de-en", "gsm8k"]
    mmlu = paper.tasks[0]
    assert (mmlu.limit, mmlu.sample, mmlu.num_fewshot) == (500, "random", 5)
    shared = load_suite("shared")
    assert shared.spec.report_only == ["wiki_perplexity"]
    assert all(t.data.startswith("shared:") for t in shared.tasks)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_task_and_suite_files_are_validated(tmp_path):
    _write(tmp_path / "bad.yaml", "kind: multiple_choice\ndata: x.jsonl\nchoices: [a]\nanswer_ky: y\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'answer_ky'.*answer_key"):
        load_task(str(tmp_path / "bad.yaml"))
    _write(tmp_path / "abs.yaml", "kind: perplexity\ndata: /etc/passwd\n")
    with pytest.raises(ConfigError, match="abs.yaml: key .data.*/etc/passwd"):
        load_task(str(tmp_path / "abs.yaml"))
    _write(tmp_path / "h.yaml", "kind: harness\nharness_task: sst2\nharness_metric: acc,none\n")
    with pytest.raises(ConfigError, match="chance"):
        load_task(str(tmp_path / "h.yaml"))
    with pytest.raises(ConfigError, match="unknown capability suite 'defualt'.*did you mean 'default'"):
        load_suite("defualt")
    _write(tmp_path / "s.yaml", "tasks: [default_knowledge]\nreport_only: [nope]\n")
    with pytest.raises(ConfigError, match="report_only"):
        load_suite(str(tmp_path / "s.yaml"))
    _write(tmp_path / "mixed.yaml", "backend: lm-eval\ntasks: [default_knowledge]\n")
    with pytest.raises(ConfigError, match="harness"):
        load_suite(str(tmp_path / "mixed.yaml"))
    _write(tmp_path / "o.yaml", "tasks: [{task: default_knowledge, limit: 0}]\n")
    with pytest.raises(ConfigError, match="overrides for task 'default_knowledge'.*limit"):
        load_suite(str(tmp_path / "o.yaml"))


def _tiny_suite(tmp_path: Path) -> Path:
    """A user suite with its own data: two options, three options, generation, perplexity."""
    rows = [{"q": f"The capital of France is {i}", "label": i % 2} for i in range(12)]
    _write(tmp_path / "mc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    bb = [{"input": f"Gold {i}", "target_scores": {"Au": 1, "Ag": 0, "Fe": 0}} for i in range(6)]
    _write(tmp_path / "bb.json", json.dumps(bb))
    qa = [{"question": f"who wrote hamlet? {i}", "answer": ["William Shakespeare"]} for i in range(5)]
    _write(tmp_path / "qa.jsonl", "".join(json.dumps(r) + "\n" for r in qa))
    _write(tmp_path / "mc.yaml", "kind: multiple_choice\ndata: mc.jsonl\nprompt: '{q}'\n"
           "choices: [Paris, Rome]\nanswer_key: label\nnum_fewshot: 2\nlimit: 8\n")
    _write(tmp_path / "bb.yaml", "kind: multiple_choice\ndata: bb.json\nprompt: 'Q: {input}\\nA:'\n"
           "choices_key: target_scores\nnormalization: tokens\n")
    _write(tmp_path / "qa.yaml", "kind: generation\ndata: qa.jsonl\nprompt: 'nq question: {question}'\n"
           "answer_key: answer\nmax_new_tokens: 4\n")
    _write(tmp_path / "txt.yaml", "kind: perplexity\ndata: qa.jsonl\ntext_key: question\nsample: first\n")
    return _write(tmp_path / "suite.yaml", "tasks: [mc, bb, qa.yaml, txt]\nreport_only: [txt]\n")


def test_suite_on_tiny_model_and_pre_edit_cache(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    suite = load_suite(str(_tiny_suite(tmp_path)))
    result = evaluate_suite(tiny_llama, suite)
    tasks = result["tasks"]
    assert {n: t["n"] for n, t in tasks.items()} == {"mc": 8, "bb": 6, "qa": 5, "txt": 5}
    assert tasks["mc"]["num_fewshot"] == 2
    assert tasks["mc"]["chance"] == 0.5 and tasks["bb"]["chance"] == pytest.approx(1 / 3)
    assert tasks["qa"]["chance"] == 0.0
    assert tasks["txt"]["chance"] == pytest.approx(1 / len(tiny_llama.tokenizer))
    assert all(0.0 <= t["score"] <= 1.0 for t in tasks.values())
    mean = sum(tasks[n]["score"] for n in ("mc", "bb", "qa")) / 3
    assert result["score"] == pytest.approx(mean)
    assert result["chance"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)

    first, cached = cached_pre_edit(tiny_llama, suite)
    assert not cached and first["score"] == pytest.approx(result["score"])
    again, cached = cached_pre_edit(tiny_llama, suite)
    assert cached and again == json.loads(json.dumps(first))
    _, cached = cached_pre_edit(tiny_llama, suite, CapabilitySettings(limit=3))
    assert not cached  # other settings, other entry
    other = make_tiny("llama", tiny_llama.tokenizer, seed=1)
    _, cached = cached_pre_edit(other, suite)
    assert not cached  # other weights, other entry
    assert len(list((tmp_path / "cache" / "capability").glob("*.json"))) == 3

    with torch.no_grad():
        tiny_llama.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    post = evaluate_suite(tiny_llama, suite)
    cmp = compare(first, post)
    assert cmp["delta"] == pytest.approx(post["score"] - first["score"])
    assert cmp["tasks"]["txt"]["perplexity_pre"] != cmp["tasks"]["txt"]["perplexity_post"]
    assert set(cmp["tasks"]["mc"]) == {"pre", "post", "chance", "n"}


def test_jsonl_records_may_hold_unicode_line_separators(tmp_path):
    """MMLU has a question with U+2028 in it: str.splitlines would cut that record in two."""
    from editbench.capability.spec import read_records

    rows = [{"text": "first\u2028still first\x85and\x1cmore"}, {"text": "second"}]
    data = _write(tmp_path / "t.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    task, path = load_task(str(_write(tmp_path / "t.yaml", "kind: perplexity\ndata: t.jsonl\n")))
    assert read_records(task, path, None)[0] == rows
    data.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(EditbenchError, match=r"t.jsonl: line 2: invalid JSON"):
        read_records(task, path, None)


def test_shared_paths_resolve_against_the_data_dir(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.delenv("EDITBENCH_CAPABILITY_DATA_DIR", raising=False)
    monkeypatch.delenv("EDITBENCH_DATA_DIR", raising=False)
    (tmp_path / "capability").mkdir()
    _write(tmp_path / "capability" / "t.jsonl", '{"text": "Gold is Au."}\n')
    _write(tmp_path / "t.yaml", "kind: perplexity\ndata: 'shared:capability/t.jsonl'\n")
    suite = load_suite(str(_write(tmp_path / "s.yaml", "tasks: [t]\n")))
    with pytest.raises(EditbenchError, match="capability-data-dir"):
        evaluate_suite(tiny_llama, suite, CapabilitySettings(data_dir=str(tmp_path / "capability")))
    assert evaluate_suite(tiny_llama, suite, CapabilitySettings(data_dir=str(tmp_path)))["tasks"]["t"]["n"] == 1
    monkeypatch.setenv("EDITBENCH_CAPABILITY_DATA_DIR", str(tmp_path))
    assert evaluate_suite(tiny_llama, suite)["tasks"]["t"]["n"] == 1


LOCAL_LM_EVAL_TASK = """\
task: editbench_local_sst2
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{sentence}}}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
metric_list:
  - metric: acc
"""


def _local_harness_suite(tmp_path: Path, limit: int, sample: str) -> Path:
    data = shared_file("capability", "sst2.jsonl")
    (tmp_path / "lm_eval_tasks").mkdir()
    _write(tmp_path / "lm_eval_tasks" / "local_sst2.yaml", LOCAL_LM_EVAL_TASK.format(data=data))
    _write(tmp_path / "sst2_harness.yaml", "kind: harness\nharness_task: editbench_local_sst2\n"
           f"harness_metric: 'acc,none'\nharness_include: lm_eval_tasks\nharness_defaults: false\n"
           "chance: 0.5\n"
           f"limit: {limit}\nsample: {sample}\n")
    return _write(tmp_path / "suite.yaml", "backend: lm-eval\ntasks: [sst2_harness]\n")


@pytest.mark.parametrize("sample", ["first", "random"])
def test_lm_eval_backend_runs_a_local_task_on_the_loaded_model(tmp_path, tiny_llama, sample):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra (pip install 'editbench[lm-eval]')")
    suite = load_suite(str(_local_harness_suite(tmp_path, limit=12, sample=sample)))
    result = evaluate_suite(tiny_llama, suite, CapabilitySettings(batch_size=8))
    task = result["tasks"]["sst2_harness"]
    assert task["n"] == 12 and task["chance"] == 0.5
    assert task["score"] in {k / 12 for k in range(13)}
    # the harness scored the very same in-memory model: our own scorer on the same
    # documents with the same prompt picks the same options
    records = [json.loads(line) for line in (SHARED_DATA / "capability" / "sst2.jsonl").read_text().splitlines()]
    if sample == "first":
        chosen = records[:12]
    else:
        import random

        chosen = [records[i] for i in sorted(random.Random("0:editbench_local_sst2").sample(range(len(records)), 12))]
    items = [ChoiceItem(f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                        ["negative", "positive"], [r["label"]]) for r in chosen]
    ours, _ = score_choices(tiny_llama, items)
    assert task["score"] == pytest.approx(ours)


def test_lm_eval_backend_error_is_one_line(tmp_path, tiny_llama):
    pytest.importorskip("lm_eval")
    _write(tmp_path / "h.yaml", "kind: harness\nharness_task: no_such_task_xyz\nharness_metric: 'acc,none'\n"
           "harness_defaults: false\nchance: 0.5\n")
    suite = load_suite(str(_write(tmp_path / "s.yaml", "backend: lm-eval\ntasks: [h]\n")))
    with pytest.raises(EditbenchError) as info:
        evaluate_suite(tiny_llama, suite)
    assert "no_such_task_xyz" in str(info.value) and "\n" not in str(info.value)


# --- integration: the real smollm2-135m (small limits; full-size numbers in benchmarks/) ---


@pytest.mark.integration
def test_default_and_shared_suites_on_smollm2(smollm2):
    default = evaluate_suite(smollm2, load_suite("default"), CapabilitySettings(limit=8))
    assert {t["n"] for t in default["tasks"].values()} == {8}
    assert default["score"] > default["chance"] + 0.2, default
    data = shared_file("capability", "bigbench_general_knowledge.jsonl").parents[1]
    shared = evaluate_suite(smollm2, load_suite("shared"), CapabilitySettings(limit=4, data_dir=str(data)))
    tasks = shared["tasks"]
    assert {t["n"] for t in tasks.values()} == {4}
    assert tasks["sst2"]["chance"] == 0.5 and tasks["mmlu_subset"]["chance"] == 0.25
    assert tasks["bb_sports_understanding"]["chance"] == 0.5
    assert 1 / 6 <= tasks["bb_date_understanding"]["chance"] <= 1 / 5  # 5 or 6 options
    assert 5 < tasks["wiki_perplexity"]["perplexity"] < 500
    assert all(0 <= t["score"] <= 1 for t in tasks.values())


@pytest.mark.integration
def test_cli_run_reports_capability_pre_post_delta(smollm2, tmp_path, monkeypatch, capsys):
    import editbench.capability.evaluate as cap_eval
    from editbench.cli import main

    # a fresh capability cache (the model cache stays where the converted model is)
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(cap_eval, "cache_dir", lambda *parts: tmp_path / "cache")
    args = ["run", "--editor", "locft_bf", "--num-edits", "4", "--capability", "default",
            "--capability-limit", "4", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "r1")]) == 0
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    cap = metrics["results"]["capability"]
    assert cap["suite"] == "default"
    assert cap["delta"] == pytest.approx(cap["post"] - cap["pre"])
    assert set(cap["tasks"]) == {"default_knowledge", "default_sentiment", "default_arithmetic", "default_text"}
    assert all({"pre", "post", "chance", "n"} <= set(t) for t in cap["tasks"].values())
    assert all(0 <= t["pre"] <= 1 and 0 <= t["post"] <= 1 for t in cap["tasks"].values())
    assert metrics["capability_pre_cached"] is False
    config = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert config["capability"]["settings"] == {"limit": 4}
    assert "capability (default): before" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("default-*.json"))) == 1  # cached for the next run


def test_paper_suite_offline_fails_with_one_line(tiny_llama, monkeypatch):
    pytest.importorskip("lm_eval")
    import huggingface_hub.constants

    import datasets

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(EditbenchError) as info:
        evaluate_suite(tiny_llama, load_suite("paper"), CapabilitySettings(limit=2))
    message = str(info.value)
    assert "paper_mmlu" in message and "reachable" in message and "\n" not in message


def test_cli_capability_on_a_tiny_model_saved_to_disk(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    """`run --capability` (pre, post and curve points) and `capability`, end to end."""
    from editbench.cli import main

    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    handle = make_tiny("llama", tiny_tokenizer)
    model_dir = tmp_path / "tiny-llama"
    handle.model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    facts = [{"case_id": i, "prompt": p, "subject": s, "target_new": t, "ground_truth": "x"}
             for i, (p, s, t) in enumerate([("The capital of France is", "France", "Rome"),
                                            ("The capital of Italy is", "Italy", "Paris")])]
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    (tmp_path / "h.yaml").write_text("modules: [block@3]\nlr: 1.0e-2\nbatch_size: 1\nepochs: 20\n")
    (tmp_path / "suite").mkdir()
    suite = _tiny_suite(tmp_path / "suite")
    code = main(["run", "--editor", "locft_bf", "--model", str(model_dir), "--hparams", str(tmp_path / "h.yaml"),
                 "--dataset", str(tmp_path / "facts.json"), "--device", "cpu", "--edits-per-step", "1",
                 "--eval-every", "1", "--max-new-tokens", "4", "--capability", str(suite),
                 "--capability-limit", "4", "--capability-at-checkpoints", "--output", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cap = metrics["results"]["capability"]
    assert cap["suite"] == "suite" and set(cap["tasks"]) == {"mc", "bb", "qa", "txt"}
    assert cap["tasks"]["mc"]["n"] == 4 and cap["tasks"]["bb"]["chance"] == pytest.approx(1 / 3)
    assert cap["delta"] == pytest.approx(cap["post"] - cap["pre"])
    assert cap["tasks"]["txt"]["perplexity_pre"] != cap["tasks"]["txt"]["perplexity_post"]  # edited
    curve = [json.loads(line) for line in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    assert [p["edits"] for p in curve] == [1, 2]
    assert all(p["results"]["capability"]["pre"] == cap["pre"] for p in curve)
    assert curve[-1]["results"]["capability"]["post"] == cap["post"]
    assert "capability (suite): before" in capsys.readouterr().out

    # the unedited model through `editbench capability`: the pre-edit entry is in the cache
    out = tmp_path / "cap.json"
    assert main(["capability", "--model", str(model_dir), "--suite", str(suite), "--limit", "4",
                 "--device", "cpu", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["from_cache"] is True and result["score"] == pytest.approx(cap["pre"])
    printed = capsys.readouterr().out
    assert "txt" in printed and "(not in mean)" in printed and "[cached]" in printed
    assert main(["list", "suites"]) == 0
    assert "paper" in capsys.readouterr().out
