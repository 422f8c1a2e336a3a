"""The edit loop: requests in steps, checkpoints between (and inside) steps, curve points.

:func:`edit_sequentially` is the sequential protocol itself (tests and benchmarks call it
bare); :class:`EditLoop` is the run's version of it, which also writes ``steps.jsonl``,
asks the evaluation phases for curve points and saves checkpoints a resumed run continues
from.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editbench import faults
from editbench.api import BaseEditor, EditRequest
from editbench.errors import EditbenchError
from editbench.evaluate import Evaluator, PreEdit
from editbench.run.record import (
    CHECKPOINT_FORMAT,
    edited_weights,
    restore_weights,
    rng_states,
    set_rng_states,
)
from editbench.run.rundir import RunDir

if TYPE_CHECKING:
    from editbench.run.phases import Evaluations


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs of a run's spec."""

    step: int  # requests per editing step
    checkpoint_every: int | None  # request-passes between checkpoints
    edit_hint: str  # what to lower after an out-of-memory error while editing


class EditLoop:
    """The edit loop of one run: steps, curve points between them, checkpoints."""

    def __init__(self, settings: LoopSettings, requests: Sequence[EditRequest], out: RunDir,
                 editor: BaseEditor, evaluations: Evaluations, run_id: str) -> None:
        self.settings, self.requests, self.out = settings, requests, out
        self.editor, self.evaluations, self.run_id = editor, evaluations, run_id
        self.first, self.edit_time, self.steps_done = 0, 0.0, 0
        self.stage = "editing"
        self.passes_since = 0
        self._step_start: float | None = None
        self._step_first = 0
        self._reported_in_step = False
        self.steps = out.stream("steps.jsonl")

    # -- resume ---------------------------------------------------------------------------

    def restore(self, checkpoint: dict[str, Any] | None) -> None:
        """Continue from ``checkpoint`` (None: a fresh start): weights, editor state, RNG
        states, and every stream cut back to what the checkpoint covers."""
        if checkpoint is not None:
            self.editor.load_state_dict(checkpoint["editor_state"])
            restore_weights(self.editor.handle, checkpoint["weights"])
            self.first, self.edit_time = checkpoint["edits_done"], checkpoint["edit_time"]
            self.evaluations.eval_time = checkpoint["eval_time"]
            self.steps_done = checkpoint["steps_done"]
            self.stage, self.passes_since = checkpoint["stage"], checkpoint["passes_since"]
            set_rng_states(checkpoint["rng"])
        editing = self.stage == "editing"
        self.steps.uncommit()
        self.steps.truncate_at(lambda rec: editing and rec["start"] >= self.first)
        self.steps.open(append=True)
        self.evaluations.restore(self.first if editing else len(self.requests) - 1,
                                 keep_final=checkpoint is not None and not editing)

    # -- editing --------------------------------------------------------------------------

    def edit(self) -> None:
        if self.stage != "editing":
            return
        self.editor.set_boundary_hook(self._boundary)
        try:
            edit_sequentially(self.editor, self.requests, self.settings.step, first=self.first,
                              before_step=self._before_step, after_step=self._after_step,
                              hint=self.settings.edit_hint)
        finally:
            self.editor.set_boundary_hook(None)
        self.stage = "evaluating"
        self._checkpoint(len(self.requests), in_step=False)

    def finish(self) -> None:
        """After the final evaluation: ``steps.jsonl`` is complete."""
        self.steps.commit()

    def _before_step(self, start: int) -> None:
        self._step_first, self._reported_in_step = start, False
        self._step_start = time.perf_counter()

    def _after_step(self, start: int, size: int, info: dict[str, Any]) -> None:
        self.edit_time += time.perf_counter() - self._step_start
        self._step_start = None
        self.steps.write({"start": start, "size": size, **info})
        self.steps.flush()
        self.steps_done += 1
        faults.point("step")
        if not self._reported_in_step:
            self.passes_since += size
        done = start + size
        if done < len(self.requests):
            self.evaluations.curve_point(start, done, self.edit_time)
            every = self.settings.checkpoint_every
            if every and self.passes_since >= every:
                self._checkpoint(done, in_step=False)

    def _boundary(self, passes: int, last: bool) -> None:
        """The editor's safe point inside a step (e.g. an epoch's end); at the ``last`` one
        the step's own end checkpoints instead (a checkpoint there would be saved twice)."""
        self._reported_in_step = True
        self.passes_since += passes
        faults.point("boundary")
        every = self.settings.checkpoint_every
        if not last and every and self.passes_since >= every:
            self._checkpoint(self._step_first, in_step=True)

    def _checkpoint(self, edits_done: int, in_step: bool) -> None:
        now = time.perf_counter()
        running = (now - self._step_start) if self._step_start is not None else 0.0
        self.steps.flush()
        self.evaluations.flush()
        self.out.save_checkpoint({
            "format": CHECKPOINT_FORMAT, "run": self.run_id, "stage": self.stage,
            "edits_done": edits_done, "in_step": in_step, "steps_done": self.steps_done,
            "edit_time": self.edit_time + running, "eval_time": self.evaluations.eval_time,
            "passes_since": 0,
            "editor_state": self.editor.state_dict(),
            "weights": edited_weights(self.editor.handle, self.editor),
            "rng": rng_states(),
        })
        self.passes_since = 0
        if self._step_start is not None:  # checkpointing is not editing time
            self._step_start += time.perf_counter() - now


# -- shared by the runner, tests and benchmarks ---------------------------------------------------


def edit_sequentially(
    editor: BaseEditor,
    requests: Sequence[EditRequest],
    step: int,
    *,
    first: int = 0,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, int, dict[str, Any]], None] | None = None,
    hint: str = "lower --edits-per-step",
) -> float:
    """The sequential protocol's loop: ``requests`` in steps of ``step`` from ``first``,
    each edit checked for finite tensors, then ``finalize``; returns editing seconds.

    A run hangs its step records, curve points and checkpoints on ``after_step`` (start,
    size, the editor's step info); tests and benchmarks call it bare.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise EditbenchError(f"step: expected a positive integer, got {step!r}")
    seconds = 0.0
    for start in range(first, len(requests), step):
        chunk = requests[start : start + step]
        where = f"requests {start}-{start + len(chunk) - 1}"
        if before_step is not None:
            before_step(start)
        t0 = time.perf_counter()
        with oom_guard(f"editing {where}", hint):
            stats = editor.edit(chunk)
        seconds += time.perf_counter() - t0
        check_finite(editor, f"after editing {where}")
        if after_step is not None:
            after_step(start, len(chunk), stats.info)
    t0 = time.perf_counter()
    editor.finalize()
    check_finite(editor, "after finalize")
    return seconds + time.perf_counter() - t0


def edit_and_evaluate(
    editor: BaseEditor,
    requests: Sequence[EditRequest],
    step: int,
    evaluator: Evaluator,
    baseline: PreEdit,
) -> tuple[dict[str, Any], float]:
    """Edit ``requests`` in steps of ``step``, evaluate once after the last step, then write
    the edited weights back; returns (evaluation, editing seconds).

    Why: tests, benchmarks and ``editbench tune`` score several editors, or single edits on
    a fresh model, on one loaded model without the result files of a run (same step
    semantics).
    """
    restore = editor.handle.snapshot(editor.edited_parameters())
    try:
        seconds = edit_sequentially(editor, requests, step)
        return evaluator.evaluate(requests, baseline), seconds
    finally:
        restore()


def check_finite(editor: BaseEditor, where: str) -> None:
    """The edited tensors (and any tensor of the editor's state) hold no NaN or inf.

    Why: an optimizer step can leave non-finite weights after its last finite loss (fp16,
    a huge lr); scoring such a model would write numbers that mean nothing.
    """
    import torch

    params = dict(editor.handle.model.named_parameters())
    tensors = [(n, params[n]) for n in editor.edited_parameters() if n in params]
    tensors += list(_state_tensors(editor.state_dict(), "state"))
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise EditbenchError(
                f"editor {editor.name!r}: non-finite values in {name} {where}; the edit diverged "
                "(lower lr, or use --dtype float32); no results were written"
            )


def _state_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _state_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _state_tensors(v, f"{prefix}[{i}]")


@contextlib.contextmanager
def oom_guard(what: str, hint: str) -> Iterator[None]:
    """Turn a GPU out-of-memory error into one line that says what to lower."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise EditbenchError(f"out of memory while {what}; {hint}") from exc
