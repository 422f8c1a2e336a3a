"""Layer statistics for every editor in one pass, and the batched self-generated corpus."""

from __future__ import annotations

import torch

from editors._locate.stats import (
    compute_second_moments,
    resolve_corpus,
    sample_batch,
    second_moments,
    stats_companions,
)
from editors.memit import MemitConfig
from editors.rome import RomeConfig


def test_one_pass_serves_editors_at_other_layers(tiny_llama, corpus_file, stats_cache):
    corpus = resolve_corpus(str(corpus_file))
    every = stats_companions(tiny_llama, RomeConfig(stats_layers="all"))
    assert every == [tiny_llama.module_name("mlp_down", i) for i in range(tiny_llama.num_layers)]
    # A tiny model's matrices fit the auto budget; none fits a budget of 0 MB.
    assert stats_companions(tiny_llama, RomeConfig(stats_layers="auto")) == every
    assert stats_companions(tiny_llama, RomeConfig(stats_layers="auto", stats_all_layers_mb=0)) == []
    assert stats_companions(tiny_llama, MemitConfig(stats_layers="edited")) == []
    first = [every[1]]
    mats, info = second_moments(tiny_llama, first, corpus, 300, seq_len=32, batch_size=4,
                                companions=every)
    assert list(mats) == first and info["computed"] == first
    assert info["companions"] == [m for m in every if m not in first]
    # A later editor at other layers runs no pass: every matrix is in the cache, and equal
    # to what a pass of its own computes.
    others = [every[0], every[3]]
    cached, info = second_moments(tiny_llama, others, corpus, 300, seq_len=32, batch_size=4)
    assert info["computed"] == [] and info["cached"] == sorted(others)
    fresh, _ = compute_second_moments(tiny_llama, others, corpus, 300, seq_len=32, batch_size=4)
    for name in others:
        torch.testing.assert_close(cached[name], fresh[name])


def test_batched_samples_are_seeded_and_leave_the_global_rng(tiny_llama):
    state = torch.get_rng_state()
    a = sample_batch(tiny_llama, ["The", "A longer", "The"], 6, seed=7, top_k=20)
    assert torch.equal(torch.get_rng_state(), state)
    b = sample_batch(tiny_llama, ["The", "A longer", "The"], 6, seed=7, top_k=20)
    c = sample_batch(tiny_llama, ["The", "A longer", "The"], 6, seed=8, top_k=20)
    assert a == b != c
    assert all(text.startswith(p) for text, p in zip(a, ["The", "A longer", "The"], strict=True))
    new = [tiny_llama.tokenizer(t[len(p):].strip(), add_special_tokens=False)["input_ids"]
           for t, p in zip(a, ["The", "A longer", "The"], strict=True)]
    assert all(len(ids) >= 4 for ids in new)  # 6 sampled tokens (a few merge when decoded)


def test_concurrent_requests_compute_the_matrices_once(tiny_llama, corpus_file, stats_cache):
    """Two callers asking for the same uncached matrices at once (parallel runs, test
    workers): one computes them, the other waits and reads them from the cache."""
    import threading

    corpus = resolve_corpus(str(corpus_file))
    names = [tiny_llama.module_name("mlp_down", i) for i in (0, 2)]
    start = threading.Barrier(2)
    infos: list[dict] = []
    mats: list[dict] = []

    def ask() -> None:
        start.wait()
        m, info = second_moments(tiny_llama, names, corpus, 300, seq_len=32, batch_size=4)
        mats.append(m)
        infos.append(info)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(i["computed"]) for i in infos) == [0, 2], infos
    for name in names:
        torch.testing.assert_close(mats[0][name], mats[1][name])
