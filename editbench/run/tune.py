"""``editbench tune``: where to edit (and at what learning rate), chosen on held-out requests.

Which layer to tune is the question users of every editing tool ask most. This sweeps an
editor's tuning location (module template x layer, as the editor's config defines it:
``EditorConfig.tuning_location``) coarse then fine, and its learning rate, on a slice of
requests that evaluation does not use (the last N of the dataset by default, while runs take
the first T). Every point edits the slice on a freshly loaded model under the sequential
protocol and scores it with the evaluator (generation protocol): reliability,
generalization, locality by kind, seconds. It prints the table and the Pareto front, picks a
point by a rule the user can change (default: the best reliability + generalization whose
neighbourhood locality is at least 0.8), and writes ``hparams/<editor>/<model>.yaml`` with
the sweep table as its comment.

Points are appended to ``OUTPUT/tune.jsonl`` as they finish, so a killed sweep resumes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from editbench.api import LOCALITY_KINDS
from editbench.config import (
    build_config,
    hparams_for,
    hparams_model_key,
    hparams_name,
    load_hparams,
    read_yaml,
)
from editbench.data import load_dataset
from editbench.errors import EditbenchError
from editbench.evaluate.metrics import check_name, find, tune_columns
from editbench.evaluate.prompts import check_prompt_format, format_request
from editbench.files import (
    atomic_write_json,
    atomic_write_text,
    dumps,
    json_default,
    json_digest,
    read_jsonl,
)
from editbench.progress import bar
from editbench.registry import EDITORS
from editbench.run.rundir import git_revision


def columns() -> list[tuple[str, str]]:
    """(metric, short label) of the sweep table: the registry's tune columns, split metrics
    also per locality kind (``loc_n``, ``loc_d``)."""
    out = []
    for name, label in tune_columns():
        out.append((name, label))
        m = find(name)
        if m is not None and m.split:
            out.extend((f"{name}_{kind}", f"{label}_{kind[0]}") for kind in LOCALITY_KINDS)
    return out


_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(>=|<=)\s*([0-9.]+)\s*$")


@dataclass
class TuneSpec:
    editor: str
    model: str
    dataset: str | None = None  # None: the model's known-fact tuning slice (known-<model>-tune)
    num: int = 50
    take: str = "last"  # which end of the dataset the tuning slice comes from
    templates: tuple[str, ...] = ("mlp_down",)
    layers: tuple[int, ...] | None = None  # coarse layers (default: ~7 evenly spaced)
    lr_factors: tuple[float, ...] = (0.3, 3.0)  # fine stage: base lr times these
    objective: str = "reliability+generalization"
    constraints: tuple[str, ...] = ("locality_known>=0.8",)
    overrides: dict[str, Any] = field(default_factory=dict)
    hparams_file: str | None = None
    output: str | None = None
    write: str | None = None  # YAML to write (default hparams/<editor>/<model>.yaml here)
    dry: bool = False  # print the table and the pick, write nothing
    seed: int = 0
    device: str = "auto"
    dtype: str | None = None
    data_dir: str | None = None
    max_new_tokens: int = 32
    prompt_format: str = "raw"  # applied to every prompt of the slice, as `editbench run` does
    eval_batch_size: int = 32
    target: str | None = None



def parse_constraints(items: tuple[str, ...]) -> list[tuple[str, str, float]]:
    out = []
    for item in items:
        m = _CONSTRAINT.match(item)
        if not m:
            raise EditbenchError(f"--constraint {item!r}: expected METRIC>=NUMBER or METRIC<=NUMBER")
        check_name(m.group(1), "generation", f"--constraint {item!r}", LOCALITY_KINDS)
        out.append((m.group(1), m.group(2), float(m.group(3))))
    return out


def objective_terms(text: str) -> list[str]:
    terms = [t.strip() for t in text.split("+") if t.strip()]
    if not terms or not all(re.fullmatch(r"[a-z_]+", t) for t in terms):
        raise EditbenchError(f"--objective {text!r}: expected metric names joined by '+'")
    for term in terms:
        check_name(term, "generation", f"--objective {text!r}", LOCALITY_KINDS)
    return terms


def coarse_layers(num_layers: int, count: int = 7) -> list[int]:
    """~``count`` evenly spaced layers from the first to the last."""
    if num_layers <= count:
        return list(range(num_layers))
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


def _key(overrides: dict[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True)


def _score(row: dict[str, Any], terms: list[str]) -> float:
    return sum(row.get(t) or 0.0 for t in terms)


def _satisfies(row: dict[str, Any], constraints) -> bool:
    for metric, op, bound in constraints:
        value = row.get(metric)
        if value is None or (value < bound if op == ">=" else value > bound):
            return False
    return True


def pareto_front(rows: list[dict[str, Any]], terms: list[str], constraints) -> list[dict[str, Any]]:
    """Rows not dominated on (objective, each constrained metric in its direction)."""

    def point(row):
        values = [_score(row, terms)]
        for metric, op, _ in constraints:
            v = row.get(metric) or 0.0
            values.append(v if op == ">=" else -v)
        return values

    pts = [point(r) for r in rows]
    front = []
    for i, p in enumerate(pts):
        dominated = any(all(q[k] >= p[k] for k in range(len(p))) and q != p for q in pts)
        if not dominated:
            front.append(rows[i])
    return front


def shortfall(row: dict[str, Any], constraints, num: int) -> float:
    """How many requests a row is from meeting every constraint: the largest gap to a bound
    times the number of requests its metric rests on (``row["n"]``, else ``num``)."""
    worst = 0.0
    for metric, op, bound in constraints:
        value = row.get(metric)
        n = (row.get("n") or {}).get(metric, num)
        gap = 1.0 if value is None else max(0.0, bound - value if op == ">=" else value - bound)
        worst = max(worst, gap * max(n, 1))
    return worst


def pick(rows: list[dict[str, Any]], terms: list[str], constraints,
         num: int = 1) -> tuple[dict[str, Any], bool]:
    """The best objective among rows meeting every constraint (ties: the better first
    constrained metric, then the earlier row: seconds vary between machines and runs, so a
    resumed sweep would not pick the same); else, among the rows within one request of the
    closest one (a difference of one request is noise), the best objective."""
    ok = [r for r in rows if _satisfies(r, constraints)]
    first = constraints[0][0] if constraints else None
    order = {id(r): i for i, r in enumerate(rows)}

    def rank(r):
        return (_score(r, terms), (r.get(first) or 0.0) if first else 0.0, -order[id(r)])

    if ok:
        return max(ok, key=rank), True
    gaps = [shortfall(r, constraints, num) for r in rows]
    closest = min(gaps)
    near = [r for r, g in zip(rows, gaps, strict=True) if g <= closest + 1.0 + 1e-9]
    return max(near, key=rank), False


class Tuner:
    def __init__(self, spec: TuneSpec) -> None:
        if spec.dataset is None:  # the model's known-fact tuning slice
            spec = dataclasses.replace(spec, dataset=f"known-{hparams_model_key(spec.model)}-tune")
        self.spec = spec
        self.editor_cls = EDITORS.get(spec.editor)
        self.base, self.base_raw = load_hparams(
            self.editor_cls.config_class, spec.editor, spec.model,
            {"seed": spec.seed, **spec.overrides}, spec.hparams_file, data_dir=spec.data_dir)
        self.source = Path(spec.hparams_file) if spec.hparams_file else hparams_for(spec.editor, spec.model)
        self.terms = objective_terms(spec.objective)
        self.constraints = parse_constraints(spec.constraints)
        if spec.num < 1:
            raise EditbenchError(f"--num: expected a positive integer, got {spec.num}")
        full = load_dataset(spec.dataset, data_dir=spec.data_dir, target=spec.target)
        if spec.num > len(full.requests):
            raise EditbenchError(f"dataset {spec.dataset!r} has {len(full.requests)} requests, "
                                 f"--num {spec.num} were asked for")
        if spec.take not in ("last", "first"):
            raise EditbenchError(f"--take: expected 'last' or 'first', got {spec.take!r}")
        reqs = full.requests
        self.requests = reqs[-spec.num:] if spec.take == "last" else reqs[: spec.num]
        self.slice = (f"requests {len(reqs) - spec.num}-{len(reqs) - 1}" if spec.take == "last"
                      else f"requests 0-{spec.num - 1}") + f" of {len(reqs)} ({full.sha256[:12]})"
        check_prompt_format(spec.prompt_format)
        fmt = "" if spec.prompt_format == "raw" else f"-{spec.prompt_format}"
        self.out = Path(spec.output or f"runs/tune-{spec.editor}-{Path(spec.model).name}-"
                        f"{Path(spec.dataset).stem}{fmt}")
        self._formatted = spec.prompt_format == "raw"
        self._check_sweep_folder()
        self.rows: dict[str, dict[str, Any]] = {}
        self._baseline = None
        self._num_layers: int | None = None
        if self.base.tune_lr_key is None and self.base.tuning_location(0, "mlp_down") is None:
            raise EditbenchError(f"editor {spec.editor!r} declares nothing to tune")

    # -- one point ----------------------------------------------------------------------

    def _load(self):
        from editbench.models import load_model

        return load_model(self.spec.model, self.spec.device, self.spec.dtype)

    def evaluate_point(self, overrides: dict[str, Any], stage: str, label: str) -> dict[str, Any]:
        from editbench.evaluate import EvalSettings, Evaluator
        from editbench.run import edit_and_evaluate

        key = _key(overrides)
        if key in self.rows:
            return self.rows[key]
        merged = {**dataclasses.asdict(self.base), **overrides}
        config = build_config(self.editor_cls.config_class, merged, f"{self.source} with {overrides}")
        handle = self._load()  # a fresh model: adapters and edits of the last point are gone
        if not self._formatted:  # the chat format needs the tokenizer
            self.requests = [format_request(r, self.spec.prompt_format, handle.tokenizer) for r in self.requests]
            self._formatted = True
        evaluator = Evaluator(handle, EvalSettings(max_new_tokens=self.spec.max_new_tokens,
                                                   batch_size=self.spec.eval_batch_size,
                                                   prompt_format=self.spec.prompt_format))
        if self._baseline is None:
            self._baseline = evaluator.baseline(self.requests)
        t0 = time.perf_counter()
        editor = self.editor_cls(handle, config)
        step = config.edits_per_step or len(self.requests)
        results, _ = edit_and_evaluate(editor, self.requests, step, evaluator, self._baseline)
        res = results["generation"]
        row = {"stage": stage, "location": label, "overrides": overrides,
               "seconds": round(time.perf_counter() - t0, 1),
               **res}
        self.rows[key] = row
        with (self.out / "tune.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(dumps(row) + "\n")
        return row

    # -- the sweep ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_sweep_folder(write=True)
        done = self.out / "tune.jsonl"
        if done.is_file():
            for _, row in read_jsonl(done):
                self.rows[_key(row["overrides"])] = row
        num_layers = self._count_layers()
        lr_key = self.base.tune_lr_key
        base_lr = getattr(self.base, lr_key) if lr_key else None
        coarse = list(self.spec.layers) if self.spec.layers else coarse_layers(num_layers)
        bad = [layer for layer in coarse if not 0 <= layer < num_layers]
        if bad:
            raise EditbenchError(f"--layers {bad}: out of range for {self.spec.model} ({num_layers} layers)")
        plan = self._coarse_points(coarse)
        with bar("tune", None, "point") as pbar:
            for overrides, label in plan:
                self.evaluate_point(overrides, "coarse", label)
                pbar.update(1)
            # The fine stage centres on the best coarse point, so a resumed sweep (which
            # reads the fine points back too) plans the same fine points.
            coarse_rows = [r for r in self.rows.values() if r["stage"] == "coarse"]
            best, _ = pick(coarse_rows, self.terms, self.constraints, len(self.requests))
            for overrides, label in self._fine_points(best, coarse, num_layers, lr_key, base_lr):
                self.evaluate_point(overrides, "fine", label)
                pbar.update(1)
        rows = list(self.rows.values())
        chosen, meets = pick(rows, self.terms, self.constraints, len(self.requests))
        front = pareto_front(rows, self.terms, self.constraints)
        result = {"rows": rows, "front": front, "chosen": chosen, "meets_constraints": meets,
                  "rule": self.rule(), "slice": self.slice}
        if not self.spec.dry:
            result["written"] = str(self.write_yaml(chosen, rows, meets))
        return result

    def sweep_identity(self) -> dict[str, Any]:
        """What the points of a sweep folder depend on besides each point's own overrides."""
        spec = self.spec
        return {"editor": spec.editor, "model": spec.model, "hparams": str(self.source),
                "slice": f"{spec.dataset} {self.slice}", "target": spec.target, "seed": spec.seed,
                "overrides": spec.overrides, "prompt_format": spec.prompt_format,
                "max_new_tokens": spec.max_new_tokens, "settings": self._settings_digest()}

    def _settings_digest(self) -> str:
        """The base settings every point starts from: the hparams path alone would let a sweep
        resume on a file it has since rewritten with its pick (a silently mixed table)."""
        return json_digest(dataclasses.asdict(self.base), 16, default=json_default)

    def _check_sweep_folder(self, write: bool = False) -> None:
        """A sweep resumes only its own points: a folder of another sweep is refused
        (checked before the model loads, written when the sweep starts)."""
        path = self.out / "sweep.json"
        identity = json.loads(dumps(self.sweep_identity()))
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EditbenchError(f"{path}: unreadable ({exc}); delete the folder or pass another --output") from None
            if not isinstance(found, dict):
                found = {}
            diff = [k for k in identity if found.get(k) != identity[k]]
            if diff == ["settings"] and "settings" in found:
                raise EditbenchError(
                    f"{path}: the sweep ran from other settings than {self.source} holds now (the tune "
                    "may have written its pick there); pass the original with --hparams, or another --output")
            if diff:
                raise EditbenchError(
                    f"{path}: the folder holds another sweep ({diff[0]}: {found.get(diff[0])!r}, "
                    f"this one: {identity[diff[0]]!r}); pass another --output or delete it")
        elif (self.out / "tune.jsonl").is_file():
            raise EditbenchError(f"{self.out / 'tune.jsonl'}: points without a {path.name} (what they were "
                                 "swept on is unknown); pass another --output or delete it")
        elif write:
            atomic_write_text(path, dumps(identity) + "\n")

    def _count_layers(self) -> int:
        handle = self._load()
        return handle.num_layers

    def _location(self, layer: int, template: str) -> dict[str, Any] | None:
        return self.base.tuning_location(layer, template)

    def _coarse_points(self, layers: list[int]) -> list[tuple[dict[str, Any], str]]:
        points = []
        takes_modules = "modules" in self.base_raw or "module" in self.base_raw
        templates = self.spec.templates if takes_modules else ("-",)
        for template in templates:
            for layer in layers:
                loc = self._location(layer, template)
                if loc is None:
                    continue
                points.append((loc, _label(loc)))
        if not points:  # nothing but the learning rate to tune
            points.append(({}, "as configured"))
        return points

    def _fine_points(self, best, coarse, num_layers, lr_key, base_lr):
        loc = best["overrides"]
        spacing = max(1, (coarse[-1] - coarse[0]) // max(1, len(coarse) - 1))
        layer = _last_layer(loc)
        template = _template(loc)
        points = []
        if layer is not None:
            for d in sorted({-spacing // 2, -1, 1, spacing // 2} - {0}):
                cand = self._location(layer + d, template) if 0 <= layer + d < num_layers else None
                if cand is not None:
                    points.append((cand, _label(cand)))
        if lr_key is not None and base_lr is not None:
            for factor in self.spec.lr_factors:
                lr = float(f"{base_lr * factor:.3g}")
                points.append(({**loc, lr_key: lr}, f"{_label(loc)}, {lr_key} {lr:g}"))
        return points

    def rule(self) -> str:
        cons = " and ".join(f"{m} {op} {b:g}" for m, op, b in self.constraints) or "no constraint"
        return f"maximize {self.spec.objective} subject to {cons}"

    # -- the YAML ---------------------------------------------------------------------------

    def write_yaml(self, chosen: dict[str, Any], rows: list[dict[str, Any]], meets: bool) -> Path:
        path = Path(self.spec.write or Path("hparams") / hparams_name(self.spec.editor, self.spec.model))
        raw = read_yaml(self.source) if self.source.is_file() else {}
        raw.pop("seed", None)
        # The --set values were part of every point: the YAML keeps them, or the table in
        # its comment would describe settings it does not hold.
        fixed = {k: v for k, v in self.spec.overrides.items() if k != "seed"}
        for key, value in {**fixed, **chosen["overrides"]}.items():
            raw[key] = value
        build_config(self.editor_cls.config_class, raw, f"{path} (tuned)")  # still valid
        sidecar = path.with_name(path.stem + ".tune.json")
        with_set = "".join(f" --set {k}={v}" for k, v in fixed.items())
        # The YAML holds the settings and one line of provenance; what the sweep measured is
        # in the sidecar beside it.
        provenance = (f"# {self.spec.editor} on {self.spec.model}: "
                      + ("chosen" if meets else "closest to the rule") + f" by `editbench tune` "
                      f"({chosen['location']}) on {self.spec.dataset}, {self.rule()}"
                      + (f", with{with_set}" if with_set else "") + f"; the sweep: {sidecar.name}")
        body = yaml.dump(raw, Dumper=_HparamsDumper, sort_keys=False, default_flow_style=False)
        atomic_write_text(path, provenance + "\n" + body)
        atomic_write_json(sidecar, {
            "editor": self.spec.editor, "model": self.spec.model, "dataset": self.spec.dataset,
            "slice": self.slice, "prompt_format": self.spec.prompt_format,
            "protocol": "generation", "rule": self.rule(), "set": fixed,
            "chosen": chosen["location"], "meets_rule": meets, "table": format_table(rows, chosen),
            "points": rows, "git_revision": git_revision(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        return path


class _HparamsDumper(yaml.SafeDumper):
    """Block mappings with lists on one line, as the shipped YAMLs are written (PyYAML's
    ``default_flow_style=None`` puts a mapping of scalars alone, GRACE's whole file, on one line)."""


_HparamsDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def _modules(overrides: dict[str, Any]) -> list[str] | None:
    """The module locations of a point: ``modules``, or an editor's single ``module`` (GRACE)."""
    if "modules" in overrides:
        return list(overrides["modules"])
    return [overrides["module"]] if "module" in overrides else None


def _label(overrides: dict[str, Any]) -> str:
    if (modules := _modules(overrides)) is not None:
        return ",".join(modules)
    if "layers" in overrides:
        layers = overrides["layers"]
        return f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    return "as configured"


def _last_layer(overrides: dict[str, Any]) -> int | None:
    if (modules := _modules(overrides)) is not None:
        return int(modules[-1].partition("@")[2])
    if "layers" in overrides:
        return overrides["layers"][-1]
    return None


def _template(overrides: dict[str, Any]) -> str:
    modules = _modules(overrides)
    return modules[-1].partition("@")[0] if modules else "-"


def format_table(rows: list[dict[str, Any]], chosen: dict[str, Any] | None = None) -> str:
    """The sweep as a fixed-width table (the YAML comment and the terminal)."""
    shown = columns()
    head = ["point", *(label for _, label in shown), "s"]
    body = []
    for r in rows:
        label = r["location"] + (" <-" if chosen is not None and r is chosen else "")
        body.append([label, *(_f(r.get(k)) for k, _ in shown), f"{r['seconds']:.0f}"])
    width = max(len(b[0]) for b in [head, *body])
    out = [f"{head[0]:<{width}}  " + "  ".join(f"{h:>6}" for h in head[1:])]
    out += [f"{b[0]:<{width}}  " + "  ".join(f"{v:>6}" for v in b[1:]) for b in body]
    return "\n".join(out)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
