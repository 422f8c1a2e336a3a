"""The shared fine-tuning trainer and the tokenization it relies on (tiny random models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editbench.api import EditbenchError, EditRequest
from editbench.evaluate import EvalSettings, Evaluator
from editbench.evaluate.generation import generate_answers
from editbench.models import family_templates
from editbench.run import edit_and_evaluate
from editbench.tokens import collate_targets, encode_prompt_target, target_logits
from editors._finetune import FinetuneConfig, FinetuneEditor, target_loss
from editors.ft_m import FTMConfig, FTMEditor
from editors.locft_bf import LocFTBFConfig, LocFTBFEditor


def req(i: int, prompt: str, target: str) -> EditRequest:
    return EditRequest(case_id=str(i), prompt=prompt, subject=prompt.split()[1], target_new=target)


REQUESTS = [
    req(0, "The capital of France is", "Rome"),
    req(1, "The capital of Italy is", "Paris"),
    req(2, "The Eiffel Tower is located in the city of", "Rome"),
    req(3, "The chemical symbol for gold is", "Jupiter"),
]


def test_target_ids_are_the_in_context_tokens(tiny_tokenizer):
    pt = encode_prompt_target(tiny_tokenizer, "The capital of France is ", "Paris")
    joint = tiny_tokenizer("The capital of France is Paris")["input_ids"]
    assert pt.prompt_ids + pt.target_ids == joint
    assert tiny_tokenizer.decode(pt.target_ids) == " Paris"
    with_eos = encode_prompt_target(tiny_tokenizer, "The capital of France is", "Paris", append_eos=True)
    assert with_eos.target_ids == pt.target_ids + [tiny_tokenizer.eos_token_id]


def test_target_logits_equal_full_forward(tiny_handle):
    items = [encode_prompt_target(tiny_handle.tokenizer, r.prompt, r.target_new) for r in REQUESTS]
    batch = collate_targets(items, tiny_handle.tokenizer.pad_token_id)
    picked = target_logits(tiny_handle.model, batch)
    for i, it in enumerate(items):
        ids = torch.tensor([it.ids])
        full = tiny_handle.model(input_ids=ids).logits[0]
        start = len(it.prompt_ids)
        expected = full[start - 1 : start - 1 + len(it.target_ids)]
        got = picked[batch.sample_index == i]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_loss_is_target_only_and_per_sample(tiny_handle):
    tok = tiny_handle.tokenizer
    items = [encode_prompt_target(tok, r.prompt, r.target_new, append_eos=True) for r in REQUESTS[:2]]
    device = tiny_handle.input_device
    both = target_loss(tiny_handle.model, items, tok.pad_token_id, device)
    singles = [target_loss(tiny_handle.model, [it], tok.pad_token_id, device) for it in items]
    # Per-sample mean then batch mean, and padding does not leak into the loss.
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2, atol=1e-5, rtol=1e-5)
    # Manual: cross-entropy over the target positions only.
    it = items[0]
    logits = tiny_handle.model(input_ids=torch.tensor([it.ids])).logits[0]
    start = len(it.prompt_ids)
    manual = nn.functional.cross_entropy(
        logits[start - 1 : start - 1 + len(it.target_ids)], torch.tensor(it.target_ids)
    )
    torch.testing.assert_close(singles[0], manual, atol=1e-5, rtol=1e-5)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("pipeline", ["depth_first", "breadth_first"])
def test_only_the_chosen_tensor_changes_and_edits_stick(tiny_handle, pipeline):
    config = FinetuneConfig(pipeline=pipeline, modules=["block@3"], lr=1e-2, batch_size=2,
                            epochs=100, max_steps=60, loss_threshold=1e-3, epoch_stop_threshold=1e-3)
    editor = FinetuneEditor(tiny_handle, config)
    before = _snapshot(tiny_handle.model)
    editor.edit(REQUESTS)
    after = _snapshot(tiny_handle.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(editor.edited_parameters())
    block = tiny_handle.module_name("block", 3)
    assert changed and all(name.startswith(block + ".") for name in changed)
    assert not any(p.requires_grad for p in tiny_handle.model.parameters())
    # The generated continuation is exactly the trained target (+ EOS): the target ids the
    # trainer used are the ids greedy decoding produces after the prompt.
    # Depth-first on a 4-layer toy model forgets earlier requests: only the last must stick.
    checked = REQUESTS if pipeline == "breadth_first" else REQUESTS[-1:]
    outputs = generate_answers(tiny_handle, [r.prompt for r in checked], max_new_tokens=8, batch_size=4)
    assert [o.strip() for o in outputs] == [r.target_new for r in checked]


def test_edit_and_evaluate_scores_the_edits_then_restores_the_weights(tiny_llama):
    config = FinetuneConfig(pipeline="breadth_first", modules=["block@3"], lr=1e-2, batch_size=2,
                            epochs=100, max_steps=60, loss_threshold=1e-3, epoch_stop_threshold=1e-3)
    editor = FinetuneEditor(tiny_llama, config)
    evaluator = Evaluator(tiny_llama, EvalSettings(protocols=("generation",), max_new_tokens=8))
    baseline = evaluator.baseline(REQUESTS)
    before = _snapshot(tiny_llama.model)
    unedited = evaluator.evaluate(REQUESTS, baseline)["generation"]["reliability"]
    results, seconds = edit_and_evaluate(editor, REQUESTS, len(REQUESTS), evaluator, baseline)
    # Scored on the edited model, then the weights are put back.
    assert unedited < 1.0 and results["generation"]["reliability"] == 1.0 and seconds > 0
    assert all(torch.equal(before[k], v) for k, v in _snapshot(tiny_llama.model).items())
    # Steps of 3 over 4 requests: two edit calls, 3 then 1; restored again afterwards.
    sizes: list[int] = []
    edit = editor.edit
    editor.edit = lambda rs: (sizes.append(len(rs)), edit(rs))[1]
    edit_and_evaluate(editor, REQUESTS, 3, evaluator, baseline)
    assert sizes == [3, 1]
    assert all(torch.equal(before[k], v) for k, v in _snapshot(tiny_llama.model).items())
    with pytest.raises(EditbenchError, match="step: expected a positive integer"):
        edit_and_evaluate(editor, REQUESTS, 0, evaluator, baseline)


class RecordingEditor(FinetuneEditor):
    """Records which requests each optimizer-step candidate batch held (scheduling test)."""

    def __init__(self, handle, config) -> None:
        super().__init__(handle, config)
        self.batches: list[list[int]] = []

    def _step(self, model, data, index, params, opt, where):
        self.batches.append(index.tolist())  # the requests' case ids are their positions
        return super()._step(model, data, index, params, opt, where)


def test_depth_first_schedule(tiny_llama):
    config = FinetuneConfig(pipeline="depth_first", modules=["mlp_down@1"], lr=1e-4,
                            batch_size=1, max_steps=3, loss_threshold=1e-9)
    editor = RecordingEditor(tiny_llama, config)
    stats = editor.edit(REQUESTS)
    # Each request in the given order, max_steps times, never revisited.
    assert editor.batches == [[0]] * 3 + [[1]] * 3 + [[2]] * 3 + [[3]] * 3
    assert stats.info["optimizer_steps"] == 12


def test_breadth_first_schedule_is_seeded_epochs(tiny_llama):
    def run(seed: int) -> list[list[int]]:
        config = FinetuneConfig(pipeline="breadth_first", modules=["mlp_down@1"], lr=1e-5,
                                batch_size=2, epochs=3, loss_threshold=1e-9,
                                epoch_stop_threshold=1e-9, seed=seed)
        editor = RecordingEditor(tiny_llama, config)
        editor.edit(REQUESTS)
        return editor.batches

    batches = run(0)
    assert len(batches) == 6
    epochs = [sorted(sum(batches[i : i + 2], [])) for i in range(0, 6, 2)]
    assert epochs == [[0, 1, 2, 3]] * 3  # every request once per epoch
    assert run(0) == batches  # deterministic
    assert run(1) != batches  # and the seed matters


def test_skip_and_early_stop_thresholds(tiny_llama):
    before = _snapshot(tiny_llama.model)
    config = FinetuneConfig(pipeline="breadth_first", modules=["mlp_down@1"], batch_size=2,
                            epochs=5, loss_threshold=1e9, epoch_stop_threshold=1e9)
    stats = FinetuneEditor(tiny_llama, config).edit(REQUESTS)
    # Every batch is below the skip threshold: no step; first epoch's mean stops training.
    assert stats.info["optimizer_steps"] == 0 and stats.info["epochs_run"] == 1
    assert all(torch.equal(before[k], v) for k, v in _snapshot(tiny_llama.model).items())


class _Margin(FinetuneEditor):
    """A regularizer that stays above the threshold: with ``regularizer_in_threshold`` the
    batch keeps training although its target loss alone is below the threshold."""

    def regularizer(self) -> torch.Tensor:
        return self.trainable()[0].sum() * 0 + 1.0


def test_regularizer_counts_towards_the_threshold_when_asked(tiny_llama):
    # The tiny model's target NLL is about ln(vocab) ~ 6: a threshold of 6.5 skips every
    # step on it alone, not once the regularizer's +1 counts too.
    config = FinetuneConfig(pipeline="depth_first", modules=["mlp_down@1"], optimizer="sgd",
                            lr=1e-4, batch_size=4, max_steps=3, loss_threshold=6.5)
    before = _snapshot(tiny_llama.model)
    assert _Margin(tiny_llama, config).edit(REQUESTS).info["optimizer_steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in _snapshot(tiny_llama.model).items())
    counting = type("Counting", (_Margin,), {"regularizer_in_threshold": True})
    stats = counting(tiny_llama, config).edit(REQUESTS)
    assert stats.info["optimizer_steps"] == 3 and stats.info["mean_final_loss"] > 6.5
    assert not all(torch.equal(before[k], v) for k, v in _snapshot(tiny_llama.model).items())


def test_nan_loss_is_a_clear_error(tiny_llama):
    tiny_llama.get_module("mlp_down", 1).weight.data.fill_(float("nan"))
    editor = FTMEditor(tiny_llama, FTMConfig(modules=["mlp_down@1"]))
    with pytest.raises(EditbenchError, match=r"non-finite loss.*request '0'"):
        editor.edit(REQUESTS)


def test_editor_defaults_match_the_methods():
    assert FTMConfig().pipeline == "depth_first" and FTMConfig().batch_size == 1
    assert FTMConfig().edits_per_step == 1
    assert LocFTBFConfig().pipeline == "breadth_first" and LocFTBFConfig().edits_per_step is None
    assert LocFTBFEditor.config_class is LocFTBFConfig


def test_unknown_module_is_a_clear_error(tiny_llama):
    with pytest.raises(EditbenchError, match="no module template 'mlp_dwn'"):
        FinetuneEditor(tiny_llama, FinetuneConfig(modules=["mlp_dwn@1"]))


# -- the frozen-prefix cache -----------------------------------------------------------------

# Five requests of different lengths in batches of 2: padded batches and a short last one.
PADDED = [*REQUESTS, req(4, "Which company made the iPhone?", "Microsoft made Windows")]


def _train(handle, editor_cls, **overrides):
    config_cls = editor_cls.config_class
    base = dict(pipeline="breadth_first", lr=1e-3, batch_size=2, epochs=3, loss_threshold=0.0,
                epoch_stop_threshold=0.0)
    editor = editor_cls(handle, config_cls(**{**base, **overrides}))
    losses: list[float] = []  # every batch's loss, unrounded
    step = editor._step
    editor._step = lambda *args: losses.append(step(*args)) or losses[-1]
    info = editor.edit(PADDED).info
    return {**info, "losses": losses}, {k: p.detach().clone() for k, p in editor.params.items()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3_text", "gemma3"])
def test_prefix_cache_gives_the_uncached_losses_and_weights(family, tiny_tokenizer):
    """Rotary and learned position embeddings, Gemma's scaled embeddings and alternating
    sliding/full attention, the multimodal wrapper, padding: all computed by the model's
    own forward, only the lower layers are skipped. Full weights and LoRA adapters."""
    from conftest import make_tiny
    from editors.lora import LoraEditor

    cases = [(FinetuneEditor, dict(modules=["mlp_down@2", "mlp_down@3"])),
             (LoraEditor, dict(target_modules=["mlp_down"], layers=[2, 3], lr=1e-2))]
    for editor_cls, keys in cases:
        runs = {cache: _train(make_tiny(family, tiny_tokenizer), editor_cls, prefix_cache=cache, **keys)
                for cache in (False, True)}
        (info0, weights0), (info1, weights1) = runs[False], runs[True]
        assert info0["prefix_cache"] == "off" and info1["prefix_cache"].startswith("layer 2,")
        assert len(info1["losses"]) == 9
        torch.testing.assert_close(info1["losses"], info0["losses"], atol=1e-5, rtol=0)
        for name, value in weights0.items():
            torch.testing.assert_close(weights1[name], value, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("family", sorted(family_templates()))
@pytest.mark.parametrize("prefix_cache", [False, True])
def test_packed_batches_give_the_padded_losses_and_weights(family, prefix_cache, tiny_tokenizer):
    """Every family's own forward reads the restarting position ids of a packed row as
    sequence boundaries (sliding windows, learned positions and the multimodal wrapper too):
    the same batches train to the same losses and weights, with or without the cache."""
    from conftest import make_tiny

    keys = dict(modules=["mlp_down@2", "mlp_down@3"], prefix_cache=prefix_cache)
    (info0, weights0), (info1, weights1) = (
        _train(make_tiny(family, tiny_tokenizer), FinetuneEditor, packing=packing, **keys)
        for packing in (False, True))
    assert (info0["packing"], info1["packing"]) == ("off", "on")
    torch.testing.assert_close(info1["losses"], info0["losses"], atol=1e-5, rtol=0)
    for name, value in weights0.items():
        torch.testing.assert_close(weights1[name], value, atol=1e-5, rtol=0)


def test_packing_is_checked_against_padding_once(tiny_tokenizer):
    """A forward that ignores the position ids (as a custom model's may) lets packed
    sequences attend to each other: the check sees other losses and pads instead; active
    dropout (LoRA's) would draw other masks for a packed batch, so it pads too."""
    from conftest import make_tiny
    from editors.lora import LoraEditor

    keys = dict(modules=["mlp_down@2"], prefix_cache=False)
    padded, _ = _train(make_tiny("llama", tiny_tokenizer), FinetuneEditor, packing=False, **keys)
    handle = make_tiny("llama", tiny_tokenizer)

    def drop_positions(module, args, kwargs):
        kwargs.pop("position_ids", None)
        return args, kwargs

    handle.model.base_model.register_forward_pre_hook(drop_positions, with_kwargs=True)
    leaky, _ = _train(handle, FinetuneEditor, packing=True, **keys)
    assert leaky["packing"].startswith("off: packed losses differ from padded ones by up to")
    assert leaky["losses"] == padded["losses"]
    lora, _ = _train(make_tiny("llama", tiny_tokenizer), LoraEditor, target_modules=["mlp_down"],
                     layers=[2], lr=1e-2)
    assert lora["packing"] == "off: dropout is active (its random masks follow the batch layout)"
    lora, _ = _train(make_tiny("llama", tiny_tokenizer), LoraEditor, target_modules=["mlp_down"],
                     layers=[2], lr=1e-2, dropout=0.0)
    assert lora["packing"] == "on"


def test_prefix_cache_skips_the_lower_layers_depth_first_too(tiny_tokenizer):
    from conftest import make_tiny

    runs = {}
    for cache in (False, True):
        handle = make_tiny("llama", tiny_tokenizer)
        calls: list[int] = []
        handle.get_module("mlp", 0).register_forward_hook(lambda *_, calls=calls: calls.append(1))
        info = _train(handle, FTMEditor, pipeline="depth_first", modules=["mlp_down@2"],
                      max_steps=3, prefix_cache=cache)
        runs[cache] = (info, len(calls))
    (info0, weights0), calls0 = runs[False]
    (info1, weights1), calls1 = runs[True]
    # 5 requests in batches of 2, 3 steps each: 9 forwards uncached, 3 (one cache per
    # batch, so its memory does not grow with the step) cached; 2 more in both for the
    # packing check (the first batch padded and packed, once per editor).
    assert (calls0, calls1) == (9 + 2, 3 + 2)
    assert info0["packing"] == info1["packing"] == "on"
    assert info1["prefix_cache"].startswith("layer 2,") and info1["prefix_cache"].endswith("one per batch)")
    torch.testing.assert_close(info1["losses"], info0["losses"], atol=1e-5, rtol=0)
    for name, value in weights0.items():
        torch.testing.assert_close(weights1[name], value, atol=1e-5, rtol=0)


def test_prefix_cache_falls_back_where_it_cannot_help(tiny_llama):
    from editbench.config import ConfigError, build_config

    # One epoch forwards each request once: a cache would only add a pass (and memory).
    info, _ = _train(tiny_llama, FinetuneEditor, modules=["mlp_down@2"], epochs=1)
    assert info["prefix_cache"] == "off: one epoch" and len(info["losses"]) == 3

    info, _ = _train(tiny_llama, FinetuneEditor, modules=["mlp_down@2"], prefix_cache_max_mb=1e-6)
    assert info["prefix_cache"].startswith("off: it would take") and "prefix_cache_max_mb" in info["prefix_cache"]
    info, _ = _train(tiny_llama, FinetuneEditor, modules=["mlp_down@0"])
    assert info["prefix_cache"] == "off: the first layer is trained"
    info, _ = _train(tiny_llama, FinetuneEditor, modules=["embed", "mlp_down@2"])
    assert info["prefix_cache"] == "off: trained tensor model.embed_tokens.weight is used below layer 2"
    info, _ = _train(tiny_llama, FinetuneEditor, modules=["final_norm"])
    assert info["prefix_cache"] == "off: a trained tensor lies outside the decoder layers"
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="prefix_cache_max_mb: expected a positive number"):
            build_config(LocFTBFConfig, {"prefix_cache_max_mb": bad}, "h.yaml")
    with pytest.raises(ConfigError, match="prefix_cache.*true or false"):
        build_config(LocFTBFConfig, {"prefix_cache": "yes"}, "h.yaml")


# -- resuming inside a breadth-first step ------------------------------------------------------


def _roundtrip(obj):
    """Through torch.save / torch.load(weights_only=True), as a run's checkpoint goes."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _checkpoint_at_boundary(handle, ed, at: int) -> tuple[list[dict], list[tuple[int, bool]]]:
    """Hook ``ed`` so that its ``at``-th boundary saves what the runner's checkpoint holds
    (editor state, edited tensors, torch RNG), through a save/load round trip."""
    saved, calls = [], []

    def hook(passes: int, last: bool) -> None:
        calls.append((passes, last))
        if len(calls) == at:
            params = dict(handle.model.named_parameters())
            saved.append(_roundtrip({"editor": ed.state_dict(), "rng": torch.get_rng_state(),
                                     "weights": {n: params[n].detach().clone() for n in ed.edited_parameters()}}))

    ed.set_boundary_hook(hook)
    return saved, calls


def _load_checkpoint(handle, ed, saved: dict) -> None:
    ed.load_state_dict(saved["editor"])
    with torch.no_grad():
        for name, value in saved["weights"].items():
            handle.model.get_parameter(name).copy_(value)


@pytest.mark.parametrize("editor", ["locft_bf", "lora"])
def test_breadth_first_step_resumes_from_an_epoch_boundary(editor, tiny_tokenizer):
    """A checkpoint at an epoch's end (editor state, edited tensors, torch RNG) and a fresh
    editor that loads it continue the step to the bitwise result of the unbroken one."""
    from conftest import make_tiny
    from editors.lora import LoraEditor, LoraEditorConfig

    def build():
        handle = make_tiny("llama", tiny_tokenizer)
        common = dict(lr=1e-2, batch_size=2, epochs=4, loss_threshold=0.0, epoch_stop_threshold=0.0)
        if editor == "lora":  # dropout 0.1 draws from the torch RNG while training
            return handle, LoraEditor(handle, LoraEditorConfig(target_modules=["attn_v", "mlp_down"],
                                                               layers=[2, 3], **common))
        return handle, LocFTBFEditor(handle, LocFTBFConfig(modules=["mlp_down@2"], **common))

    handle, ed = build()
    saved, calls = _checkpoint_at_boundary(handle, ed, 2)
    torch.manual_seed(0)
    reference = ed.edit(PADDED).info
    ref_state = {n: p.detach().clone() for n, p in handle.model.named_parameters()}
    assert calls == [(5, False)] * 3 + [(5, True)]
    assert "in_step" in saved[0]["editor"] and "in_step" not in ed.state_dict()

    handle, ed = build()
    _load_checkpoint(handle, ed, saved[0])
    torch.set_rng_state(saved[0]["rng"])
    assert ed.edit(PADDED).info == reference
    for name, value in handle.model.named_parameters():
        assert torch.equal(value, ref_state[name]), name

    handle, ed = build()
    ed.load_state_dict(saved[0]["editor"])
    with pytest.raises(EditbenchError, match="inside another edit step"):
        ed.edit(PADDED[:4])


def test_depth_first_step_resumes_from_a_batch_boundary(tiny_tokenizer):
    """Every depth-first batch's end is a boundary: an editor loaded from a checkpoint taken
    after the second batch trains the remaining batches only and ends bitwise where the
    unbroken step ends (FT-M's fresh optimizer per batch leaves nothing else to restore)."""
    from conftest import make_tiny

    def build():
        handle = make_tiny("llama", tiny_tokenizer)
        config = FinetuneConfig(pipeline="depth_first", modules=["mlp_down@2"], lr=1e-2, batch_size=2,
                                max_steps=3, loss_threshold=0.0)
        return handle, RecordingEditor(handle, config)

    handle, ed = build()
    saved, calls = _checkpoint_at_boundary(handle, ed, 2)
    reference = ed.edit(PADDED).info
    ref_state = {n: p.detach().clone() for n, p in handle.model.named_parameters()}
    assert calls == [(2, False), (2, False), (1, True)]

    handle, ed = build()
    _load_checkpoint(handle, ed, saved[0])
    assert ed.edit(PADDED).info == reference
    assert ed.batches == [[4]] * 3  # only the last batch was trained again
    for name, value in handle.model.named_parameters():
        assert torch.equal(value, ref_state[name]), name

    handle, ed = build()
    ed.load_state_dict(saved[0]["editor"])
    ed.config.pipeline = "breadth_first"
    with pytest.raises(EditbenchError, match="inside another edit step"):
        ed.edit(PADDED)


@pytest.mark.parametrize(("editor", "invariant"), [(FTMEditor, True), (LocFTBFEditor, False)])
def test_ft_m_steps_do_not_change_its_edits(tiny_tokenizer, editor, invariant):
    """FT-M trains one request at a time with a fresh optimizer, so one step of 4 and steps
    of 1 + 3 give bit-identical weights: a run's steps-of-10 cell for FT-M is its one-step
    cell. LocFT-BF's epochs over the whole step are not (the contrast keeps the test honest)."""
    from conftest import make_tiny

    weights = []
    for split in (len(REQUESTS), 1):
        handle = make_tiny("llama", tiny_tokenizer)
        config = editor.config_class(modules=["mlp_down@2"], lr=1e-2, max_steps=3, epochs=3,
                                     loss_threshold=0.0)
        ed = editor(handle, config)
        ed.edit(REQUESTS[:split])
        if split < len(REQUESTS):
            ed.edit(REQUESTS[split:])
        weights.append({n: p.detach().clone() for n, p in handle.model.named_parameters()})
    one, split = weights
    assert all(torch.equal(one[n], split[n]) for n in one) is invariant


def test_target_table_reads_a_generator_once_and_selects_rows():
    from editbench.tokens import PromptTarget, TargetTable, collate_targets

    items = [PromptTarget([5, 6], [7]), PromptTarget([8], [9, 10, 11]), PromptTarget([12, 13, 14], [15])]
    consumed = []
    table = TargetTable.of((consumed.append(i) or it for i, it in enumerate(items)), pad_id=0)
    assert consumed == [0, 1, 2] and table.ids.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    sub = table.select(torch.tensor([2, 0]))
    want = collate_targets([items[2], items[0]], pad_id=0)
    got = sub.collate(torch.arange(2))
    for name, value in vars(want).items():
        assert (value is None and getattr(got, name) is None) or torch.equal(getattr(got, name), value), name
    assert len(TargetTable.of(iter([]), pad_id=0)) == 0


def test_a_packed_batch_is_the_padded_one_without_padding():
    from editbench.tokens import PromptTarget, TargetTable

    items = [PromptTarget([5, 6], [7]), PromptTarget([8], [9, 10, 11]), PromptTarget([12, 13, 14], [15])]
    table = TargetTable.of(items, pad_id=0)
    index = torch.tensor([2, 0, 1])
    padded, packed = table.collate(index), table.pack(index)
    assert packed.attention_mask is None
    assert packed.input_ids.tolist() == [[12, 13, 14, 15, 5, 6, 7, 8, 9, 10, 11]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]]
    # The same target tokens, each predicted from the position before it, per sample.
    assert torch.equal(packed.labels, padded.labels) and torch.equal(packed.sample_index, padded.sample_index)
    assert packed.rows.tolist() == [0] * 5 and packed.cols.tolist() == [2, 5, 7, 8, 9]
    assert torch.equal(packed.input_ids[0, packed.cols + 1], packed.labels)
    assert set(packed.model_inputs()) == {"input_ids", "attention_mask", "position_ids"}
    assert set(padded.model_inputs()) == {"input_ids", "attention_mask"}
