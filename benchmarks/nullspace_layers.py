"""Which layers give AlphaEdit a null space worth projecting onto (prints one JSON object).

AlphaEdit writes each update into the span of C's small-eigenvalue eigenvectors, so it
protects unrelated prompts only where their keys have little energy in that span while
the edit keys (the subject's token) have a lot. Per layer this reports: the null space's
dimensions and the share of the corpus keys' energy in it (C's own), the share of the
edit keys' energy and of the locality prompts' keys' energy (every position but the
first), and their ratio (selectivity: ~1 means the projection cannot tell edits from
unrelated prompts, so it either blocks both or protects neither).

Measured on smollm2-135m (zsRE, threshold 0.02): layers 3-5 have selectivity ~1.1 (edit
keys 61-73% in the null space, locality keys 57-67%), layer 2 has ~10 and layer 9 ~2.5.

    EDITBENCH_PROGRESS=0 python benchmarks/nullspace_layers.py --data-dir ../shared/data \
        --layers 0-8 --num 200
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from editbench.config import load_hparams
from editbench.data import load_dataset
from editbench.models import load_model
from editbench.tokens import encode_prompt
from editors._locate.keys import locate, read_positions
from editors._locate.solve import nullspace_energy, nullspace_projector
from editors._locate.stats import resolve_corpus, second_moments
from editors.alphaedit import AlphaEditConfig


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``"all"``, ``"3"``, ``"0-8"`` or ``"2,3,5"``."""
    if spec == "all":
        return list(range(num_layers))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    bad = [x for x in out if not 0 <= x < num_layers]
    if bad:
        raise SystemExit(f"--layers: {bad} outside 0..{num_layers - 1}")
    return out


def second_moment(keys: torch.Tensor) -> torch.Tensor:
    k = keys.double()
    return k.T @ k / max(len(k), 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    p.add_argument("--dataset", default="zsre-3k")
    p.add_argument("--num", type=int, default=200, help="requests whose keys are probed")
    p.add_argument("--layers", default="all")
    p.add_argument("--thresholds", default=None, help="comma-separated (default: the hparams' and 0.005)")
    p.add_argument("--corpus", default=None, help="statistics corpus (default: the shared wiki passages)")
    args = p.parse_args(argv)
    # The model's AlphaEdit hparams give the statistics settings, so C is the editor's own (cached).
    corpus = args.corpus or os.path.relpath(Path(args.data_dir) / "corpus" / "wiki_passages.jsonl")
    cfg, _ = load_hparams(AlphaEditConfig, "alphaedit", args.model, {"stats_corpus": corpus})
    thresholds = args.thresholds or f"{cfg.nullspace_threshold},0.005"
    handle = load_model(args.model, device=args.device)
    tok = handle.tokenizer
    layers = parse_layers(args.layers, handle.num_layers)
    names = {layer: handle.module_name("mlp_down", layer) for layer in layers}
    stats, _ = second_moments(handle, list(names.values()), resolve_corpus(corpus), cfg.stats_tokens,
                              cfg.stats_seq_len, cfg.stats_batch_size, cfg.stats_dtype)

    requests = load_dataset(args.dataset, data_dir=args.data_dir, num=args.num).requests
    found = [locate(tok, r.prompt, r.subject, cfg.fact_token) for r in requests]
    edit = read_positions(handle, [f.ids for f in found], [[f.position] for f in found],
                          {n: "input" for n in names.values()})
    loc_ids = [encode_prompt(tok, lp.prompt) for r in requests for lp in r.locality]
    loc = read_positions(handle, loc_ids, [list(range(1, len(s))) for s in loc_ids],
                         {n: "input" for n in names.values()})

    rows = []
    for layer, name in names.items():
        C = stats[name].double()
        row: dict = {"layer": layer, "corpus_trace": round(float(C.trace()), 3)}
        for t in (float(x) for x in thresholds.split(",")):
            P, dims = nullspace_projector(C, t)
            share = {"corpus": nullspace_energy(P, C), "edit": nullspace_energy(P, second_moment(edit[name])),
                     "locality": nullspace_energy(P, second_moment(loc[name]))}
            row[f"threshold_{t:g}"] = {
                "dims": dims, **{k: round(v, 4) for k, v in share.items()},
                "selectivity": round(share["edit"] / share["locality"], 2) if share["locality"] > 0 else None,
            }
        rows.append(row)
    out = {"model": args.model, "dataset": args.dataset, "num": len(requests),
           "locality_prompts": len(loc_ids), "stats_corpus": corpus, "stats_tokens": cfg.stats_tokens, "layers": rows}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
