"""The evaluation phases of a run: the pre-edit baseline, curve points, the final evaluation
and capability, each written to the run directory chunk by chunk and resumable.

Every phase that scores requests goes through :func:`resumable`: the stream is cut back to
its complete chunks, the evaluator folds them back in, and scoring continues with the next
chunk; the stream is committed when the phase is complete.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from editbench import faults
from editbench.api import EditRequest
from editbench.evaluate import Evaluator, PreEdit, Resumed
from editbench.run.loop import oom_guard
from editbench.run.plan import Plan
from editbench.run.rundir import JsonlStream, RunDir

if TYPE_CHECKING:
    from editbench.models import ModelHandle

T = TypeVar("T")
_EVAL_HINT = "lower --eval-batch-size"


def flushing(stream: JsonlStream, fault: str) -> Callable[[dict[str, Any]], None]:
    """A sink that writes a record and makes every complete chunk durable."""
    last: list[int] = []

    def sink(record: dict[str, Any]) -> None:
        if last and record["chunk"] != last[0]:
            stream.flush()
        last[:] = [record["chunk"]]
        stream.write(record)
        faults.point(fault)

    return sink


def resumable(stream: JsonlStream, evaluator: Evaluator, requests: Sequence[EditRequest],
              fault: str, score: Callable[[Callable[[dict[str, Any]], None], Resumed | None], T]) -> T:
    """Run ``score(sink, resume)`` over ``requests`` into ``stream``, continuing after the
    complete chunks an interrupted run left; commit the stream when done."""
    done = stream.complete_chunks(evaluator.chunk_records(requests))
    resume = evaluator.resumed(stream.records(), done) if done else None
    stream.open(append=True)
    try:
        result = score(flushing(stream, fault), resume)
        stream.commit()
    finally:
        stream.close()
    return result


class Evaluations:
    """Every scoring of one run's model: the baseline before the first edit, curve points
    between steps, the final evaluation and capability, with the seconds they took."""

    def __init__(self, plan: Plan, out: RunDir, handle: ModelHandle, evaluator: Evaluator) -> None:
        self.plan, self.out, self.handle, self.evaluator = plan, out, handle, evaluator
        self.eval_time = 0.0  # curve points and the final evaluation
        self.capability_time = 0.0
        self.capability_pre: dict[str, Any] | None = None
        self.capability_cached = False
        self.baselines: dict[str, PreEdit] = {}
        self.curve = out.stream("curve.jsonl") if plan.spec.eval_every else None

    # -- before the first edit ------------------------------------------------------------

    def compute_baselines(self) -> float:
        """The unedited model's records for the final set (and the curve set when it
        differs), computed once per run, chunk by chunk, resumable; returns seconds."""
        t0 = time.perf_counter()
        sets = {"final": (self.plan.final_set, "pre_edit.jsonl")}
        if self.plan.curve_set is not self.plan.final_set and self.plan.spec.eval_every:
            sets["curve"] = (self.plan.curve_set, "pre_edit.curve.jsonl")
        for name, (requests, filename) in sets.items():
            stream = self.out.stream(filename)
            if not stream.path.is_file():
                def score(sink, resume, requests=requests):
                    with oom_guard("computing the pre-edit baseline", _EVAL_HINT):
                        self.evaluator.baseline(requests, targets=True, sink=sink, resume=resume)

                resumable(stream, self.evaluator, requests, "baseline-record", score)
            self.baselines[name] = PreEdit(stream.path)
        self.baselines.setdefault("curve", self.baselines["final"])
        return time.perf_counter() - t0

    def capability_before(self) -> None:
        if self.plan.capability is None:
            return
        from editbench.capability import cached_pre_edit

        with self._capability_clock(), oom_guard(
                "scoring pre-edit capability", "lower --eval-batch-size or --capability-limit"):
            self.capability_pre, self.capability_cached = cached_pre_edit(self.handle, *self.plan.capability)

    # -- resume ---------------------------------------------------------------------------

    def restore(self, kept_edits: int, keep_final: bool) -> None:
        """Cut the streams back to a checkpoint after ``kept_edits`` edits; the final
        evaluation's records are kept only when editing had finished (``keep_final``)."""
        cases = self.out.stream("cases.jsonl")
        cases.uncommit()
        if not keep_final:
            cases.part.unlink(missing_ok=True)
        if self.curve is not None:
            self.curve.uncommit()
            self.curve.truncate_at(lambda point: point["edits"] > kept_edits)
            self.curve.open(append=True)

    def flush(self) -> None:
        if self.curve is not None:
            self.curve.flush()

    # -- between steps and after the last -------------------------------------------------

    def curve_point(self, start: int, done: int, edit_time: float) -> None:
        """Score the curve set's edited requests once ``done`` crosses a multiple of
        ``--eval-every`` (the step started at ``start``)."""
        every = self.plan.spec.eval_every
        if self.curve is None or done // every <= start // every:
            return
        edited = {r.case_id for r in self.plan.requests[:done]}
        requests = self.plan.curve_set
        upto = sum(1 for r in requests if r.case_id in edited)
        t0 = time.perf_counter()
        with oom_guard(f"evaluating after {done} edits", _EVAL_HINT):
            point: dict[str, Any] = self.evaluator.evaluate(
                requests, self.baselines["curve"], desc=f"evaluate@{done}", upto=upto, quality=False)
        self.eval_time += time.perf_counter() - t0
        if self.plan.spec.capability_at_checkpoints:
            point["capability"] = self.capability_after(done)
        self.curve.write({"edits": done, "evaluated": upto, "edit_time_s": edit_time,
                          "results": point})
        self.curve.flush()

    def final(self) -> tuple[dict[str, Any], float]:
        """The final evaluation (``cases.jsonl``); returns the results and its seconds."""
        requests = self.plan.final_set
        t0 = time.perf_counter()

        def score(sink, resume):
            with oom_guard("the final evaluation", _EVAL_HINT):
                return self.evaluator.evaluate(requests, self.baselines["final"], sink=sink,
                                               resume=resume)

        results = resumable(self.out.stream("cases.jsonl"), self.evaluator, requests,
                            "case-record", score)
        seconds = time.perf_counter() - t0
        self.eval_time += seconds
        return results, seconds

    def capability_after(self, edits: int) -> dict[str, Any] | None:
        """The suite scored on the model as it is now, compared with the pre-edit score."""
        if self.plan.capability is None:
            return None
        from editbench.capability import compare, evaluate_suite

        suite, settings = self.plan.capability
        with self._capability_clock(), oom_guard(
                f"scoring capability after {edits} edits", "lower --eval-batch-size or --capability-limit"):
            post = evaluate_suite(self.handle, suite, settings, desc=f"capability@{edits}")
        return {**compare(self.capability_pre, post), "time_s": post["time_s"]}

    def close_curve(self, results: dict[str, Any], capability: dict[str, Any] | None,
                    edit_time: float) -> None:
        """The curve's last point is the final evaluation."""
        if self.curve is None:
            return
        if capability is not None and self.plan.spec.capability_at_checkpoints:
            results = {**results, "capability": capability}
        self.curve.write({"edits": len(self.plan.requests), "evaluated": len(self.plan.final_set),
                          "edit_time_s": edit_time, "results": results})
        self.curve.commit()

    @contextlib.contextmanager
    def _capability_clock(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.capability_time += time.perf_counter() - t0


class PhaseTimer:
    """Seconds and peak memory of each phase of a run (``metrics.json["phases"]``).

    Peak RSS is the process's high-water mark at the end of the phase (so it includes the
    phases before); on a GPU also the peak allocated GPU memory during the phase.
    """

    def __init__(self) -> None:
        self.record: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        import resource

        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield
        entry = {"seconds": round(time.perf_counter() - t0, 3),
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if cuda:
            entry["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.record[name] = entry
