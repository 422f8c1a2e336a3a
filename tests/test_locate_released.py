"""ROME / MEMIT / AlphaEdit against the authors' released algorithms, step by step, on tiny
random models (no extra package: these run in CI). The differential tests against
EasyEdit's port of the released code are in ``tests/test_locate_easyedit.py``.

Each test computes the released algorithm's quantity from its description, in the test,
and compares editbench's to it: the target optimisation's first steps, where the key is
read when a template or a longer word contains the subject, ROME's rank-one update and
the key averaging over context-template groups.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny, sharpen
from editbench.api import EditRequest
from editbench.registry import EDITORS
from editbench.tokens import encode_prompt_target, output_logits
from editors._locate.targets import KL_PROMPT, optimize_targets

F64 = torch.float64


def _key_index(tok, text_through_subject: str) -> int:
    """The subject's last token: the last token of the text up to the subject's end."""
    return len(tok(text_through_subject)["input_ids"]) - 1


# --- the target optimisation -------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_first_steps_are_adam_steps_on_the_full_loss(family, tiny_tokenizer):
    """Two optimisation steps from delta = 0 equal two Adam steps on NLL + KL + weight decay
    computed here. (With the delta attached only after the first forward, the first backward
    had no NLL/KL gradient and the first Adam step moved nothing.)"""
    handle = make_tiny(family, tiny_tokenizer)
    sharpen(handle)
    tok, model = handle.tokenizer, handle.model
    request = EditRequest("0", "The capital of France is", "France", "Rome")
    cls = EDITORS.get("rome").config_class
    cfg = cls(layers=[1], v_num_grad_steps=3, v_lr=0.5, v_weight_decay=0.5, kl_factor=0.0625,
              clamp_norm_factor=1e4, v_loss_threshold=0.0, target_suffix="none")
    module = handle.module_name("mlp_down", 1)
    got = optimize_targets(handle, [request], ["{}"], module, cfg)
    assert got.steps == 2

    pt = encode_prompt_target(tok, request.prompt, request.target_new)
    ids = torch.tensor([pt.prompt_ids + pt.target_ids[:-1]])
    key = _key_index(tok, "The capital of France")
    kl_ids = torch.tensor([tok(KL_PROMPT.format("France"))["input_ids"]])
    kl_key = _key_index(tok, "France")
    start = len(pt.prompt_ids) - 1
    labels = torch.tensor(pt.target_ids)

    def run(ids: torch.Tensor, pos: int, d: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        seen = {}

        def hook(mod, args, out):
            seen["h"] = out[0, pos].detach().clone()
            if d is None:
                return out
            out = out.clone()
            out[0, pos] += d
            return out

        h = model.get_submodule(module).register_forward_hook(hook)
        try:
            hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        finally:
            h.remove()
        return hidden[0], seen["h"]

    with torch.no_grad():
        _, h0 = run(ids, key, None)
        kl_hidden, _ = run(kl_ids, kl_key, None)
        kl0 = torch.log_softmax(output_logits(model, kl_hidden[kl_key]).float(), -1)

    def loss(d: torch.Tensor) -> torch.Tensor:
        hidden, _ = run(ids, key, d)
        logits = output_logits(model, hidden[start : start + len(labels)]).float()
        nll = torch.nn.functional.cross_entropy(logits, labels)
        kl_hidden, _ = run(kl_ids, kl_key, d)
        logp = torch.log_softmax(output_logits(model, kl_hidden[kl_key]).float(), -1)
        kl = (logp.exp() * (logp - kl0)).sum()
        return nll + cfg.kl_factor * kl + cfg.v_weight_decay * d.norm() / h0.norm() ** 2

    d = torch.zeros_like(h0, requires_grad=True)
    opt = torch.optim.Adam([d], lr=cfg.v_lr)
    for _ in range(2):
        opt.zero_grad()
        loss(d).backward()
        opt.step()
    torch.testing.assert_close(got.h_bare[0], h0, rtol=1e-5, atol=1e-6)
    assert d.norm() > 0.1  # both steps moved: the comparison is not of two zeros
    torch.testing.assert_close(got.delta[0], d.detach(), rtol=1e-4, atol=1e-6)


# --- where the key is read ---------------------------------------------------------------

POSITION_CASES = [
    # (template, prompt, subject, the text up to the subject's last character)
    pytest.param("France is nice. {}", "The capital of France is", "France",
                 "France is nice. The capital of France", id="template-mentions-subject"),
    pytest.param("{}", "The golden ratio of gold is", "gold", "The golden ratio of gold",
                 id="subject-inside-a-longer-word"),
    pytest.param("The golden gate. {}", "The chemical symbol for gold is", "gold",
                 "The golden gate. The chemical symbol for gold", id="longer-word-in-template"),
    pytest.param("France. {}", "the capital of france is", "France",
                 "France. the capital of france", id="case-fallback-only-in-prompt"),
]


@pytest.mark.parametrize(("template", "prompt", "subject", "through"), POSITION_CASES)
def test_key_is_the_prompts_own_mention_of_the_subject(template, prompt, subject, through,
                                                        tiny_tokenizer):
    """The released code substitutes the subject into the prompt's "{}", so the key is
    always there: never in a context template, never inside a longer word."""
    from editors._locate.config import LocateConfig
    from editors._locate.targets import rewriting_items, template_items

    request = EditRequest("0", prompt, subject, "Rome")
    want = _key_index(tiny_tokenizer, through)
    (keys,) = template_items(tiny_tokenizer, [request], [template], "subject_last")
    assert keys.subject_found and keys.position == want
    _, positions, _, missing = rewriting_items(tiny_tokenizer, request, [template],
                                               LocateConfig(target_suffix="none"))
    assert positions == [want] and missing == 0
    # The subject's first token follows the text before it (byte-level BPE: the space
    # belongs to the subject's token).
    first = template_items(tiny_tokenizer, [request], [template], "subject_first")[0].position
    before = through[: len(through) - len(subject)].rstrip()
    assert first == len(tiny_tokenizer(before)["input_ids"])


def test_subject_inside_a_longer_word_is_the_last_resort(tiny_tokenizer):
    """Only when the prompt has no standalone mention is a match inside a word taken (better
    than the prompt's last token); a subject absent from the prompt reads the last token."""
    from editors._locate.keys import locate_in_template

    loc = locate_in_template(tiny_tokenizer, "gold. {}", "The golden ratio is", "gold", "subject_last")
    assert loc.subject_found
    assert loc.position == _key_index(tiny_tokenizer, "gold. The gold")
    absent = locate_in_template(tiny_tokenizer, "Paris. {}", "The capital is", "Paris", "subject_last")
    assert not absent.subject_found and absent.position == len(absent.ids) - 1


# --- ROME's rank-one update and MEMIT's key average ---------------------------------------

GROUPS = [["{}"], ["France is nice. {}", "Because I said so. {}", "You are here today. {}"]]


def _rome(handle, corpus_file, **settings):
    cls = EDITORS.get("rome")
    cfg = cls.config_class(layers=[1], v_num_grad_steps=8, clamp_norm_factor=4.0,
                           target_suffix="none", context_templates_per_length=0,
                           stats_corpus=str(corpus_file), stats_tokens=300, stats_seq_len=32,
                           stats_batch_size=4, **settings)
    editor = cls(handle, cfg)
    editor.template_groups = [list(g) for g in GROUPS]
    return editor


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rome_update_key(family, tiny_tokenizer, corpus_file, stats_cache):
    """bare_prompt (released code): the bare prompt's key maps exactly to v*; template_mean
    (paper, eq. 2): the mean key does. Both are rank one in the direction C^-1 k*."""
    request = EditRequest("0", "The capital of France is", "France", "Rome")
    updates = {}
    for choice in ("bare_prompt", "template_mean"):
        handle = make_tiny(family, tiny_tokenizer)
        sharpen(handle)
        editor = _rome(handle, corpus_file, update_key=choice)
        name = editor.module_names[1]
        tg = editor.targets([request], name)
        v_star = (tg.h_bare[0] + tg.delta[0]).double()
        keys = editor.template_keys([request], layer=1)[name][0].double()
        W0 = editor.weight(1).detach().double().clone()
        editor.targets = lambda requests, module, tg=tg: tg  # type: ignore[method-assign]
        editor.edit([request])
        W = editor.weight(1).detach().double()
        updates[choice] = W - W0
        bias = tg.h_bare[0].double() - W0 @ keys[0]  # the MLP output's bias (zero for LLaMA)
        fitted = keys[0] if choice == "bare_prompt" else keys.mean(0)
        torch.testing.assert_close(W @ fitted + bias, v_star, rtol=1e-4, atol=1e-4)
        other = keys.mean(0) if choice == "bare_prompt" else keys[0]
        assert (W @ other + bias - v_star).norm() > 1e-3 * v_star.norm()
    a, b = updates["bare_prompt"], updates["template_mean"]
    for update in (a, b):  # rank one up to the float32 weights' rounding
        sv = torch.linalg.svdvals(update)
        assert sv[1] < 1e-4 * sv[0]
    # One left factor (the output change) may differ; the key direction C^-1 k* is shared.
    row_a, row_b = a[a.norm(dim=1).argmax()], b[b.norm(dim=1).argmax()]
    assert float((row_a @ row_b).abs() / (row_a.norm() * row_b.norm())) > 1 - 1e-6


def test_memit_key_average(tiny_llama, corpus_file, stats_cache):
    """grouped (released code): the mean of the bare prompt's key and of the sampled
    templates' mean key; uniform (paper): the mean over all templates."""
    cls = EDITORS.get("memit")
    requests = [EditRequest("0", "The capital of France is", "France", "Rome")]
    got = {}
    for choice in ("grouped", "uniform"):
        cfg = cls.config_class(layers=[1, 2], key_average=choice, stats_corpus=str(corpus_file),
                               stats_tokens=300, stats_seq_len=32, stats_batch_size=4,
                               context_templates_per_length=0)
        editor = cls(tiny_llama, cfg)
        editor.template_groups = [list(g) for g in GROUPS]
        keys = editor.template_keys(requests, layer=1)[editor.module_names[1]]
        got[choice] = editor.mean_keys(requests, layer=1)[editor.module_names[1]]
    torch.testing.assert_close(got["grouped"], (keys[:, 0] + keys[:, 1:].mean(1)) / 2)
    torch.testing.assert_close(got["uniform"], keys.mean(1))
    assert not torch.allclose(got["grouped"], got["uniform"])
    # The released code's choices are the defaults, and the resolved hparams a run writes
    # into config.json name them (runs that differ in them never share a leaderboard row).
    from editbench.config import load_hparams

    for editor, key, value in (("memit", "key_average", "grouped"),
                               ("alphaedit", "key_average", "grouped"),
                               ("emmet", "key_average", "grouped"),
                               ("rome", "update_key", "bare_prompt"),
                               ("memit", "accumulate_keys", False)):
        config_class = EDITORS.get(editor).config_class
        assert getattr(config_class(), key) == value, (editor, key)
        _, recorded = load_hparams(config_class, editor, "llama3-8b", {})
        assert recorded[key] == value, (editor, key)
