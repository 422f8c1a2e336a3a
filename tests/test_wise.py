"""WISE on tiny random models: routing, sharding and merging, resume.

The tiny model's output layer and the edited layer's MLP inputs are scaled up (a random
4-layer model at initialisation has near-uniform logits and MLP inputs of norm ~0.05), the
edit prompts share no token with each other and have one-token targets, and the irrelevant
inputs are sentences of the tokenizer's corpus: an edit can then be learnt by the paper's
SGD in its random subspace. A random model does not learn to keep unrelated prompts below
the threshold, so the router tests check the routing rule itself, not its generalization.
"""

from __future__ import annotations

import io

import pytest
import torch

from conftest import CORPUS, generate_like_one_forward, make_tiny
from editbench.api import EditRequest
from editbench.config import build_config
from editbench.errors import EditbenchError
from editbench.evaluate.generation import generate
from editbench.evaluate.teacher_forced import argmax_at_targets
from editbench.registry import EDITORS
from editbench.tokens import pad_batch
from editors._locate.keys import read_positions
from editors.wise import WiseConfig, WiseEditor, mean_positive, ties_merge

LAYER = 1
REQUESTS = [EditRequest(case_id=str(i), prompt=p, subject=p.split()[0], target_new=t)
            for i, (p, t) in enumerate([("0 1 2 3", "Rome"), ("a b c d", "Paris"), ("e f g h", "Italy")])]
UNRELATED = ["The largest planet is", "nq question: who wrote hamlet?", "Paris is a city in", "w x y z"]


@pytest.fixture(scope="module")
def irrelevant(tmp_path_factory) -> str:
    """Irrelevant inputs x_i: the corpus sentences (paragraphs of a text file)."""
    path = tmp_path_factory.mktemp("wise") / "irrelevant.txt"
    path.write_text("\n\n".join(CORPUS[:-1]))
    return str(path)


def _handle(tokenizer, family: str = "llama"):
    handle = make_tiny(family, tokenizer)
    with torch.no_grad():
        handle.model.get_output_embeddings().weight.mul_(20)
        if family != "gpt2":
            mlp = handle.model.get_submodule(handle.module_name("mlp", LAYER))
            mlp.gate_proj.weight.mul_(5)
            mlp.up_proj.weight.mul_(5)
    return handle


def _config(irrelevant: str, **kw) -> WiseConfig:
    base = dict(modules=[f"mlp_down@{LAYER}"], optimizer="sgd", lr=1.0, max_steps=40,
                loss_threshold=0.0, alpha=1.0, beta=4.0, gamma=2.0, act_ratio=0.88,
                norm_constraint=None, mask_ratio=0.3, shard_size=10, merge_every=20,
                context_template_lengths=[3], context_templates_per_length=1,
                irrelevant_corpus=irrelevant, irrelevant_per_edit=3, irrelevant_tokens=12)
    config = WiseConfig(**{**base, **kw})
    config.validate()
    return config


def _row_means(editor: WiseEditor, weight: torch.Tensor, seqs: list[list[int]]) -> list[float]:
    """Each sequence's mean over its tokens of d, from the definition, with the module's
    inputs ``a`` read separately: ``||act(a W'^T) - act(a W^T)||`` (``score_activation``) or
    ``||a (W' - W)^T||``."""
    name = editor.module_names[0]
    acts = read_positions(editor.handle, seqs, [list(range(len(s))) for s in seqs], {name: "input"})[name].float()
    new, old = acts @ weight.float().T, acts @ editor.main.float().T
    if editor.config.score_activation:
        new, old = editor.activation(new), editor.activation(old)
    d = (new - old).norm(dim=-1)
    out, start = [], 0
    for s in seqs:
        out.append(float(d[start : start + len(s)].mean()))
        start += len(s)
    return out


def _scores(editor: WiseEditor, weight: torch.Tensor, prompts: list[str]) -> list[float]:
    """The routing score at each prompt's last token (both scorings agree there)."""
    return _row_means(editor, weight, [editor.handle.tokenizer(p)["input_ids"] for p in prompts])


def test_registered_with_a_typed_config():
    assert EDITORS.get("wise") is WiseEditor
    assert WiseConfig.tune_lr_key == "lr"
    assert WiseConfig().tuning_location(7, "mlp_down") == {"modules": ["mlp_down@7"]}


@pytest.mark.parametrize(("raw", "needle"), [
    ({"modules": ["mlp_down@1", "mlp_down@2"]}, "modules:"), ({"merge_every": 15}, "merge_every:"),
    ({"act_ratio": 0}, "act_ratio:"), ({"batch_size": 4}, "batch_size:"), ({"density": 0}, "density:"),
    ({"pipeline": "breadth_first"}, "pipeline:"), ({"mask_ratio": 1.5}, "mask_ratio:"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"score_mean": "max"}, "score_mean"),
])
def test_bad_config_names_the_key(raw, needle):
    with pytest.raises(EditbenchError, match=needle):
        build_config(WiseConfig, raw, "wise.yaml")


def test_trains_on_the_target_without_eos_as_released(tiny_tokenizer, irrelevant):
    """EasyEdit's WISE tokenizes prompt + " " + target and appends no EOS (the shared
    trainer's default appends one)."""
    editor = WiseEditor(_handle(tiny_tokenizer), _config(irrelevant))
    (item,) = editor._encode(REQUESTS[:1])
    assert tiny_tokenizer.eos_token_id not in item.target_ids
    assert tiny_tokenizer.decode(item.target_ids).strip() == "Rome"


@pytest.mark.parametrize("score_mean", ["sequence", "prefix"])
def test_router_sends_edits_to_the_side_memory_at_the_rate_the_threshold_implies(tiny_tokenizer, irrelevant,
                                                                                   score_mean):
    handle = _handle(tiny_tokenizer)
    before = {n: p.clone() for n, p in handle.model.named_parameters()}
    editor = WiseEditor(handle, _config(irrelevant, score_mean=score_mean,
                                        score_activation=score_mean == "sequence"))
    assert editor.routes(UNRELATED)[0] == ["main"] * len(UNRELATED)  # nothing edited yet
    for r in REQUESTS:
        info = editor.edit([r]).info
        if score_mean == "prefix":
            # The activation is the lowest prefix score at the prompt's target-predicting
            # positions, so the bare prompt scores at least it (>= epsilon / act_ratio).
            routes, scores = editor.routes([r.prompt])
            assert routes == ["side"] and scores["side"][0] >= info["activation"][0] * (1 - 1e-4)
        else:
            # As released: the mean over the edit's rows (prompt + target, each context
            # template) of each row's mean.
            variants = [EditRequest(case_id="v", prompt=t.format(r.prompt), subject=r.subject,
                                    target_new=r.target_new) for t in editor.templates]
            rows = _row_means(editor, editor.side, [it.ids for it in editor._encode(variants)])
            assert info["activation"][0] == pytest.approx(sum(rows) / len(rows), rel=1e-4)
        assert info["threshold"] == pytest.approx(0.88 * editor.min_act)
    assert editor.edited_parameters() == []
    assert all(torch.equal(before[n], p) for n, p in handle.model.named_parameters())

    prompts = [r.prompt for r in REQUESTS] + UNRELATED
    routes, scores = editor.routes(prompts)
    expected = _scores(editor, editor.side, prompts)
    assert scores["side"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # The router is exactly the threshold rule: side iff the score reaches epsilon.
    assert routes == ["side" if s >= editor.threshold else "main" for s in expected]
    # The irrelevant inputs it was trained against stay below alpha < epsilon: main memory.
    texts = [tiny_tokenizer.decode(ids) for ids in editor.irrelevant[: len(REQUESTS)]]
    trained_out = _scores(editor, editor.side, texts)
    if max(trained_out) <= editor.config.alpha < editor.threshold:
        assert editor.routes(texts)[0] == ["main"] * len(texts)


def test_released_scoring_routes_a_teacher_forced_row_as_one(tiny_tokenizer, irrelevant):
    """As released, a teacher-forced prompt + target takes one route at every position, the
    one its whole-row score picks; the prefix scoring decides position by position."""
    handle = _handle(tiny_tokenizer)
    editor = WiseEditor(handle, _config(irrelevant))
    editor.edit(REQUESTS)
    texts = [f"{r.prompt} {r.target_new}" for r in REQUESTS] + UNRELATED
    seqs = [tiny_tokenizer(t)["input_ids"] for t in texts]
    ids, mask = pad_batch(seqs, tiny_tokenizer.pad_token_id)
    routes = {}
    for score_mean in ("sequence", "prefix"):
        editor.config.score_mean = score_mean
        editor.router.record = {}
        with torch.no_grad():
            handle.model(input_ids=ids, attention_mask=mask)
        routes[score_mean] = editor.router.record["route"][1]
        editor.router.record = None
    whole = [routes["sequence"][i, : len(s)].tolist() for i, s in enumerate(seqs)]
    assert all(len(set(row)) == 1 for row in whole)
    rows = _row_means(editor, editor.side, seqs)
    assert [row[0] == 1 for row in whole] == [m >= editor.threshold for m in rows]
    assert any(row[0] == 1 for row in whole)
    # The prefix scoring at each row's last token is the whole-row mean: the same decision.
    assert [routes["prefix"][i, len(s) - 1].item() for i, s in enumerate(seqs)] == [row[0] for row in whole]


def test_cached_generation_routes_like_teacher_forcing(tiny_tokenizer, irrelevant):
    """With the prefix scoring, greedy decoding with a KV cache (left-padded batch) continues
    each row's running score, so every generated token equals the argmax of one uncached
    forward. The released scoring routes the prompt as one row in the prefill (so only the
    first generated token is the uncached forward's) and each later token by the mean so far."""
    handle = _handle(tiny_tokenizer)
    editor = WiseEditor(handle, _config(irrelevant, score_mean="prefix"))
    editor.edit(REQUESTS)
    prompts = [r.prompt for r in REQUESTS] + UNRELATED
    generate_like_one_forward(handle, prompts, 6, 8)
    # Some rows read the side memory and some not: the comparison covers both routes.
    routes = editor.routes(prompts)[0]
    assert "side" in routes and "main" in routes
    editor.config.score_mean = "sequence"
    first = [ids[0] for _, ids in generate(handle, prompts, 1, batch_size=8)]
    ids, mask = pad_batch([tiny_tokenizer(p)["input_ids"] for p in prompts], tiny_tokenizer.pad_token_id, left=True)
    with torch.no_grad():
        assert handle.model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1).tolist() == first


def test_ties_merge_on_hand_made_deltas():
    base = torch.zeros(2, 3)
    a = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.1, 0.0]])
    b = torch.tensor([[0.0, 3.0, 2.0], [0.0, -0.2, 4.0]])
    merged = ties_merge(base, [a, b], [0.5, 0.5], density=1.0)
    # Disjoint entries keep their value; opposite signs: the larger sum wins and only the
    # agreeing delta counts (the mean over agreeing deltas, not over all).
    torch.testing.assert_close(merged, torch.tensor([[1.0, 3.0, 2.0], [0.0, -0.2, 4.0]]))
    # density 0.5: each delta keeps its 3 largest magnitudes.
    trimmed = ties_merge(base, [a], [1.0], density=0.5)
    torch.testing.assert_close(trimmed, torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.1, 0.0]]))
    assert mean_positive(torch.tensor([-1.0, 2.0, 4.0])).item() == 3.0
    assert mean_positive(torch.tensor([-1.0])).item() == 0.0


def test_merging_keeps_earlier_edits(tiny_tokenizer, irrelevant):
    """One edit per shard, merged after three: every edit that held in its own shard still
    holds after the merge, read from the merged memory. With the prefix scoring: with the
    released one the first of the three edits holds in its shard and not after the merge on
    this tiny model (its whole-row margins train a smaller delta: activation 5.2 against 6.2)."""
    handle = _handle(tiny_tokenizer)
    editor = WiseEditor(handle, _config(irrelevant, shard_size=1, merge_every=3, score_mean="prefix"))
    held = []
    for i, r in enumerate(REQUESTS):
        editor.edit([r])
        if i < 2:  # saved, not merged yet: the shard is still routed
            assert len(editor.shards) == i + 1 and editor.merged is None
        target, predicted = argmax_at_targets(handle, [(r.prompt, r.target_new)])[0]
        held.append(predicted == target)
    assert editor.merged is not None and not editor.shards and editor.side_edits == 0
    assert all(held), held
    routes, _ = editor.routes([r.prompt for r in REQUESTS])
    assert routes == ["merged"] * len(REQUESTS)
    after = argmax_at_targets(handle, [(r.prompt, r.target_new) for r in REQUESTS])
    for ok, (target, predicted) in zip(held, after, strict=True):
        if ok:
            assert predicted == target


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_resumes_bit_identically(tiny_tokenizer, irrelevant):
    """The unbroken editor edits everything in one step, the resumed one in two: WISE edits
    request by request, so a run's steps-of-10 cell for it is its one-step cell."""
    config = _config(irrelevant, shard_size=1, merge_every=2)
    straight_handle = _handle(tiny_tokenizer)
    straight = WiseEditor(straight_handle, config)
    straight.edit(REQUESTS)

    first = _handle(tiny_tokenizer)
    interrupted = WiseEditor(first, config)
    interrupted.edit(REQUESTS[:1])  # one shard saved, not merged
    state = _roundtrip(interrupted.state_dict())

    second = _handle(tiny_tokenizer)
    resumed = WiseEditor(second, config)
    resumed.load_state_dict(state)
    prompts = [r.prompt for r in REQUESTS] + UNRELATED
    assert resumed.routes(prompts) == interrupted.routes(prompts)
    resumed.edit(REQUESTS[1:])
    assert torch.equal(resumed.merged, straight.merged) and torch.equal(resumed.side, straight.side)
    assert resumed.min_act == straight.min_act and resumed.edits_done == straight.edits_done
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tiny_tokenizer(p)["input_ids"]])
            assert torch.equal(straight_handle.model(input_ids=ids).logits, second.model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_other_families_and_detach(tiny_tokenizer, irrelevant, family):
    handle = _handle(tiny_tokenizer, family)
    prompts = [r.prompt for r in REQUESTS]
    with torch.no_grad():
        ids = torch.tensor([tiny_tokenizer(prompts[0])["input_ids"]])
        clean = handle.model(input_ids=ids).logits
    editor = WiseEditor(handle, _config(irrelevant))
    editor.edit(REQUESTS[:1])
    assert editor.routes(prompts[:1])[0] == ["side"]
    editor.detach()
    with torch.no_grad():
        assert torch.equal(handle.model(input_ids=ids).logits, clean)

