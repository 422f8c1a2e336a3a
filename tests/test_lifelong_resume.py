"""GRACE and WISE through the runner: a run checkpointed after every edit and killed inside a
later one resumes to the numbers of an uninterrupted run (codebook / side memory, shards,
merged memory and router statistics come back from the checkpoint)."""

from __future__ import annotations

import pytest

from conftest import CORPUS, Interrupted, interrupt_edit
from editbench.registry import EDITORS
from editbench.run import RunSpec, run

HPARAMS = {
    # Crash inside the third edit: two codebook entries in the checkpoint.
    "grace": ("module: mlp_down@2\neps: 0.001\nn_iter: 20\n", 3),
    # Crash inside the fourth edit: shards saved and merged before it, one pending.
    "wise": ("modules: [mlp_down@1]\nmax_steps: 10\nalpha: 1.0\nbeta: 4.0\ngamma: 2.0\n"
             "shard_size: 1\nmerge_every: 2\ncontext_template_lengths: [3]\n"
             "context_templates_per_length: 1\nirrelevant_tokens: 12\n", 4),
}


@pytest.mark.parametrize("editor", sorted(HPARAMS))
def test_a_run_interrupted_between_steps_resumes_to_the_same_numbers(editor, tiny_run, monkeypatch):
    tmp, model_dir, data, _ = tiny_run
    text, crash_at = HPARAMS[editor]
    hparams = tmp / f"{editor}.yaml"
    hparams.write_text(text)
    irrelevant = tmp / "irrelevant.txt"
    irrelevant.write_text("\n\n".join(CORPUS[:-1]))
    overrides = {"irrelevant_corpus": str(irrelevant)} if editor == "wise" else {}

    def spec(out: str, **kw) -> RunSpec:
        return RunSpec(editor=editor, model=str(model_dir), hparams_file=str(hparams), dataset=str(data),
                       device="cpu", max_new_tokens=4, protocols=("generation", "teacher_forced"),
                       output=out, checkpoint_every=1, overrides=overrides, **kw)

    interrupt_edit(monkeypatch, EDITORS.get(editor), crash_at)
    with pytest.raises(Interrupted):
        run(spec(str(tmp / "run")))
    monkeypatch.undo()
    resumed = run(spec(str(tmp / "run"), resume=True)).load()[1]
    reference = run(spec(str(tmp / "ref"))).load()[1]
    assert resumed["resumed"] and resumed["results"] == reference["results"]
