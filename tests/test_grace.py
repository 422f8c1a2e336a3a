"""GRACE on tiny random models: the codebook's defining properties.

An edited key retrieves its value; an input outside every deferral radius leaves the model's
output bitwise unchanged; the radius rules (new / within / expand / split); cached greedy
decoding and teacher forcing agree; the state round trip resumes bit-identically.

The value replaces one position's output (the last prompt token's): it sets the first target
token; what follows must come through attention to that position, which a random 4-layer
model cannot learn, so these tests check the first target token (the smollm2 test checks
whole answers).
"""

from __future__ import annotations

import io

import pytest
import torch

from conftest import FACTS, generate_like_one_forward, make_tiny
from editbench.api import EditRequest
from editbench.config import build_config
from editbench.errors import EditbenchError
from editbench.evaluate.generation import generate, generate_answers
from editbench.evaluate.teacher_forced import argmax_at_targets
from editbench.registry import EDITORS
from editbench.tokens import encode_prompt_target
from editors.grace import Codebook, GraceConfig, GraceEditor

REQUESTS = [EditRequest(case_id=str(f["case_id"]), prompt=f["prompt"], subject=f["subject"],
                        target_new=f["target_new"]) for f in FACTS]
UNRELATED = ["The largest planet is", "nq question: who wrote hamlet?", "0 1 2 3 4 5",
             "Paris is a city in"]


def _config(**kw) -> GraceConfig:
    base = dict(module="mlp_down@2", eps=1e-3, lr=1.0, n_iter=60, loss_threshold=1e-3)
    config = GraceConfig(**{**base, **kw})
    config.validate()
    return config


def _logits(handle, prompts: list[str]) -> list[torch.Tensor]:
    tok = handle.tokenizer
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p)["input_ids"]])
            out.append(handle.model(input_ids=ids).logits)
    return out


def test_registered_with_a_typed_config():
    assert EDITORS.get("grace") is GraceEditor
    assert GraceConfig.tune_lr_key == "lr"
    assert GraceConfig().tuning_location(7, "mlp_down") == {"module": "mlp_down@7"}


@pytest.mark.parametrize(("raw", "needle"), [
    ({"eps": 0}, "eps:"), ({"n_iter": 0}, "n_iter:"), ({"module": "mlp_down"}, "module:"),
    ({"lr": -1}, "lr:"), ({"eps_expand": "decay"}, "eps_expand"),
])
def test_bad_config_names_the_key(raw, needle):
    with pytest.raises(EditbenchError, match=needle):
        build_config(GraceConfig, raw, "grace.yaml")


def test_edited_key_retrieves_its_value(tiny_handle):
    before = {n: p.clone() for n, p in tiny_handle.model.named_parameters()}
    editor = GraceEditor(tiny_handle, _config())
    request = REQUESTS[0]
    stats = editor.edit([request])
    assert stats.info["codebook_entries"] == 1 and stats.info["actions"] == {"new": 1}
    assert editor.edited_parameters() == []
    # The base weights never change.
    assert all(torch.equal(before[n], p) for n, p in tiny_handle.model.named_parameters())

    tok = tiny_handle.tokenizer
    prompt_ids = tok(request.prompt)["input_ids"]
    key = editor.key(prompt_ids)
    hit, index = editor.book.lookup(key[None])
    assert bool(hit[0]) and int(index[0]) == 0
    seen = {}
    hook = editor.module.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    try:
        with torch.no_grad():
            tiny_handle.model(input_ids=torch.tensor([prompt_ids]))
    finally:
        hook.remove()
    # The module's output at the key position is the entry's value (the lookup's output is
    # what the hooks after ours see: the registered lookup runs first).
    assert torch.equal(seen["out"][0, -1].float(), editor.book.values[0])
    # ... and the value makes the model produce the target, teacher-forced and generated.
    target_ids, predicted = argmax_at_targets(tiny_handle, [(request.prompt, request.target_new)])[0]
    assert predicted == target_ids
    assert generate(tiny_handle, [request.prompt], 4)[0][1][0] == target_ids[0]


def test_an_entry_its_request_cannot_reach_is_a_miss_not_a_crash(tiny_handle):
    """When a request's own query falls outside the entry it trains (a key left on its
    radius's boundary, where rounding decides), the loss does not depend on the value: the
    training reports the miss (not reached, no step taken), keeps the value, and the run goes on."""
    from editors._finetune import encode_requests

    editor = GraceEditor(tiny_handle, _config())
    request = REQUESTS[0]
    editor.edit([request])
    editor.book.keys[0] = editor.book.keys[0] + 1.0  # the request's query now misses it
    value = editor.book.values[0].clone()
    (item,) = encode_requests(tiny_handle, [request], True)
    loss, taken, reached = editor._train(0, item, request.case_id)
    assert not reached and taken == 0 and loss > 0
    assert torch.equal(editor.book.values[0], value)


def test_inputs_outside_every_radius_are_bitwise_unchanged(tiny_handle):
    before = _logits(tiny_handle, UNRELATED)
    gen_before = generate_answers(tiny_handle, UNRELATED, 6)
    editor = GraceEditor(tiny_handle, _config())
    editor.edit(REQUESTS[:3])
    editor.lookup.hits = 0
    after = _logits(tiny_handle, UNRELATED)
    assert editor.lookup.hits == 0
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert generate_answers(tiny_handle, UNRELATED, 6) == gen_before
    # The edits' own prompts do hit.
    _logits(tiny_handle, [REQUESTS[0].prompt])
    assert editor.lookup.hits >= 1
    editor.detach()
    assert all(torch.equal(a, b) for a, b in zip(before, _logits(tiny_handle, UNRELATED), strict=True))


def test_cached_generation_and_teacher_forcing_agree(tiny_llama):
    """Every position is its own query, so greedy decoding with a KV cache (left-padded
    batches) makes the decisions of one uncached forward over prompt + generated tokens."""
    editor = GraceEditor(tiny_llama, _config())
    editor.edit(REQUESTS)
    generated = generate_like_one_forward(tiny_llama, [r.prompt for r in REQUESTS] + UNRELATED, 6, 4)
    for r, new in zip(REQUESTS, generated[: len(REQUESTS)], strict=True):
        first = encode_prompt_target(tiny_llama.tokenizer, r.prompt, r.target_new).target_ids[0]
        assert new[0] == first, r.prompt


def _unit(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_radius_rules():
    book = Codebook(2, 1, torch.device("cpu"))
    value = torch.zeros(1)
    assert book.update(_unit(0, 0), value, "a", eps=1.0, expand="coverage") == (0, "new")
    # Out of reach (distance 3 > eps 1 + radius 1): a new key with the initial radius.
    assert book.update(_unit(3, 0), value, "b", eps=1.0, expand="coverage") == (1, "new")
    assert book.radii.tolist() == [1.0, 1.0]
    # Same label inside the radius: nothing changes, entry 0 trains further.
    assert book.update(_unit(0.5, 0), value, "a", eps=1.0, expand="coverage") == (0, "within")
    assert book.radii.tolist() == [1.0, 1.0] and len(book) == 2
    # Same label within reach (1.5 <= eps + radius), outside the radius: it expands to 1.5.
    assert book.update(_unit(0, 1.5), value, "a", eps=1.0, expand="coverage") == (0, "expand")
    assert book.radii.tolist() == [1.5, 1.0] and len(book) == 2
    # Another label within reach of key 1 (distance 1.2): a new key, both radii halved.
    index, action = book.update(_unit(3, 1.2), value, "c", eps=1.0, expand="coverage")
    assert (index, action) == (2, "split")
    assert book.radii.tolist() == pytest.approx([1.5, 0.6, 0.6])
    # The split keeps the two keys' regions apart: the midpoint belongs to one of them.
    hit, idx = book.lookup(torch.stack([_unit(3, 0.5), _unit(3, 0.7)]))
    assert hit.tolist() == [True, True] and idx.tolist() == [1, 2]
    # moving_average: the key moves halfway and the radius becomes the distance.
    moving = Codebook(2, 1, torch.device("cpu"))
    moving.update(_unit(0, 0), value, "a", eps=1.0, expand="moving_average")
    assert moving.update(_unit(2, 0), value, "a", eps=1.0, expand="moving_average") == (0, "expand")
    assert moving.keys[0].tolist() == [1.0, 0.0] and moving.radii.tolist() == [2.0]
    # Outside every radius: no hit.
    assert book.lookup(_unit(10, 10)[None])[0].tolist() == [False]


def test_buffers_grow_without_losing_entries():
    book = Codebook(3, 2, torch.device("cpu"))
    for i in range(40):
        book.update(torch.full((3,), 10.0 * i), torch.full((2,), float(i)), str(i), 1.0, "coverage")
    assert len(book) == 40 and book.values[:, 0].tolist() == [float(i) for i in range(40)]
    assert book.lookup(torch.full((1, 3), 390.0))[1].tolist() == [39]


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_resumes_bit_identically(tiny_tokenizer):
    """The unbroken editor edits everything in one step, the resumed one in two: GRACE edits
    request by request, so a run's steps-of-10 cell for it is its one-step cell."""
    straight = make_tiny("llama", tiny_tokenizer)
    editor = GraceEditor(straight, _config(val_init="cold"))
    editor.edit(REQUESTS)

    first = make_tiny("llama", tiny_tokenizer)
    interrupted = GraceEditor(first, _config(val_init="cold"))
    interrupted.edit(REQUESTS[:3])
    state = _roundtrip(interrupted.state_dict())

    second = make_tiny("llama", tiny_tokenizer)
    resumed = GraceEditor(second, _config(val_init="cold"))
    resumed.load_state_dict(state)
    prompts = [r.prompt for r in REQUESTS] + UNRELATED
    # Outputs right after loading equal the interrupted editor's.
    assert all(torch.equal(a, b) for a, b in zip(_logits(first, prompts), _logits(second, prompts), strict=True))
    resumed.edit(REQUESTS[3:])
    for key in ("keys", "values", "radii"):
        assert torch.equal(getattr(resumed.book, key), getattr(editor.book, key)), key
    assert resumed.book.labels == editor.book.labels
    assert all(torch.equal(a, b) for a, b in zip(_logits(straight, prompts), _logits(second, prompts), strict=True))


def test_warm_values_and_a_state_for_another_module_is_refused(tiny_tokenizer):
    handle = make_tiny("llama", tiny_tokenizer)
    editor = GraceEditor(handle, _config(val_init="warm"))
    editor.edit(REQUESTS[:1])
    other = GraceEditor(make_tiny("llama", tiny_tokenizer), _config(module="attn_q@1"))
    state = editor.state_dict()
    state["codebook"] = {**state["codebook"], "keys": torch.zeros(1, 5)}
    with pytest.raises(EditbenchError, match="another module"):
        other.load_state_dict(state)

