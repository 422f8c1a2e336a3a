"""The end-of-run summary ``editbench run`` prints: each metric before and after editing,
with notes where a metric rests on too few known locality prompts."""

from __future__ import annotations


def summary(config: dict, metrics: dict, path) -> str:
    """The end-of-run report: each metric before and after editing, the protocol in one
    line, the times and where the run directory is."""
    lines = [f"run directory: {path}"]
    protocol = config["protocol"]
    sample = protocol.get("eval_sample")
    lines.append(
        f"{config['editor']} on {config['model']['name']}, {metrics['num_edits']} edits of "
        f"{config['dataset']['name']} in steps of {metrics['edits_per_step']}; evaluated "
        f"{protocol['evaluation']} on {metrics.get('num_evaluated', metrics['num_edits'])} "
        f"requests{' (seeded sample)' if sample else ''}"
    )
    for name, res in metrics["results"].items():
        if name == "capability" or not res:
            continue
        pre = (metrics.get("results_pre") or {}).get(name) or {}
        lines.append(f"{name}: {protocol['definitions'][name]}")
        keys = _summary_order(name, [k for k, v in res.items() if isinstance(v, int | float)])
        width = max(len(k) for k in keys) if keys else 10
        lines.append(f"  {'metric':<{width}}  before  after")
        for key in keys:
            before = pre.get(key)
            shown = "   -  " if before is None else f"{before:6.3f}"
            lines.append(f"  {key:<{width}}  {shown}  {res[key]:.3f}")
        lines.extend(_few_cases(name, res))
        empty = res.get("locality_empty_pre")
        if empty is not None and empty > 0.2:
            lines.append(
                f"  warning: {100 * empty:.0f}% of the pre-edit locality answers are empty, so "
                "'locality' mostly says whether an empty answer stayed empty; see "
                "locality_nonempty and locality_argmax / locality_kl, or try --prompt-format qa|chat"
            )
    cap = metrics["results"].get("capability")
    if cap:
        lines.append(f"capability ({cap['suite']}): before {cap['pre']:.3f}, after {cap['post']:.3f}, "
                     f"delta {cap['delta']:+.3f} (chance {cap['chance']:.3f})")
    lines.append(
        f"times: editing {metrics['edit_time_s']:.1f} s ({metrics['edit_time_per_request_s']:.3f} "
        f"s/edit), pre-edit baseline {metrics['baseline_time_s']:.1f} s, evaluation "
        f"{metrics['eval_time_s']:.1f} s"
    )
    return "\n".join(lines)


def _few_cases(protocol: str, res: dict) -> list[str]:
    """A line per metric whose value rests on fewer cases than it asks for (or none)."""
    from editbench.evaluate.metrics import metrics
    from editbench.report.runs import few_cases

    few = few_cases({protocol: res}, protocol)
    counts = res.get("n") or {}
    out = []
    for m in metrics(protocol):
        if m.name not in few:
            continue
        if counts[m.name] == 0:
            out.append(f"  note: no locality prompt is known to the unedited model, so {m.name} "
                       "cannot be measured here (editbench known-facts builds data where it can)")
        else:
            out.append(f"  note: {m.name} rests on {counts[m.name]} requests with a known locality "
                       f"prompt (fewer than {m.min_n}): indicative only; known_pre says how many are known")
    return out


def _summary_order(protocol: str, keys: list[str]) -> list[str]:
    """Registered metrics in registry order (a split metric's kinds after it), then others."""
    from editbench.api import LOCALITY_KINDS
    from editbench.evaluate.metrics import reported_names

    kinds = sorted({k.rsplit("_", 1)[-1] for k in keys} | set(LOCALITY_KINDS))
    order: dict[str, int] = {}
    for i, name in enumerate(reported_names(protocol, kinds)):
        order.setdefault(name, i)  # a name's first place: locality_known is no kind of locality
    return sorted(keys, key=lambda k: order.get(k, len(order)))
