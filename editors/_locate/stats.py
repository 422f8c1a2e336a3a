"""Layer statistics C = E[k k^T] of the inputs of the edited modules, cached on disk.

One forward pass over the corpus collects every requested module at once and stops after
the deepest one (the originals run one pass per layer). Per batch, X^T X is accumulated in
float32 on the module's device and flushed every ``flush_every`` batches into a float64
sum on the CPU, so a 7-8B model's matrices never sit on the GPU in float64 and a long pass
keeps float64 precision.

Cache: one file per module under ``$EDITBENCH_STATS_CACHE`` (default
``<editbench cache>/stats``), named by a hash of everything the numbers depend on: the
model's identity (repo id + revision, or a weights hash) and a fingerprint of its weights,
the module, the corpus identity (file path + SHA-256, HF name/config/split/revision, or the
self-generation seed and size), the token count, the sequence length and the dtype. Files
are written atomically and carry the SHA-256 of the tensor bytes; a file whose metadata
or hash does not match is recomputed (with a warning), never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from editbench.errors import EditbenchError
from editbench.files import atomic_write, file_lock, json_digest, read_jsonl, sha256_file
from editbench.models import weights_fingerprint
from editbench.progress import bar
from editbench.resources import cache_dir
from editbench.tokens import pad_batch
from editors._locate.keys import capture, forward

if TYPE_CHECKING:
    from editbench.models import ModelHandle

log = logging.getLogger(__name__)
CACHE_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def stats_cache_root() -> Path:
    env = os.environ.get("EDITBENCH_STATS_CACHE")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("stats")


@dataclass(frozen=True)
class Corpus:
    """Where the statistics' text comes from, and a string that identifies it exactly."""

    kind: str  # "file" | "hf" | "self"
    spec: str
    identity: str
    path: Path | None = None
    seed: int = 0
    samples: tuple[str, ...] | None = field(default=None, compare=False)  # read back from the cache
    record: list[str] | None = field(default=None, compare=False)  # collects what a self-generated corpus yields, to cache it

    def texts(self, handle: ModelHandle, num_tokens: int, seq_len: int) -> Iterator[str]:
        if self.samples is not None:
            yield from self.samples
        elif self.kind == "file":
            yield from _file_texts(self.path)
        elif self.kind == "hf":
            yield from _hf_texts(self.spec)
        else:
            for text in _self_texts(handle, num_tokens, seq_len, self.seed):
                if self.record is not None:
                    self.record.append(text)
                yield text


SELF_TEXT_VERSION = 2  # v2: one batched sampling call per 256 rows (v1: 64 rows per starter)


def resolve_corpus(spec: str, seed: int = 0) -> Corpus:
    """``self`` | ``hf:<name>[:<config>[:<split>]]`` | a local .jsonl / text file."""
    if spec == "self":
        return Corpus("self", spec, f"self-generated:v{SELF_TEXT_VERSION}:seed={seed}", seed=seed)
    if spec.startswith("hf:"):
        return Corpus("hf", spec[3:], f"hf:{_hf_identity(spec[3:])}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EditbenchError(
            f"stats_corpus {spec!r}: no such file; expected 'self', 'hf:<dataset>[:<config>[:<split>]]' "
            "or a .jsonl/.txt file"
        )
    path = path.resolve()
    return Corpus("file", spec, f"file:{path.name}:sha256={sha256_file(path)}", path=path)


def _file_texts(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        for lineno, record in read_jsonl(path):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise EditbenchError(f"{path}: line {lineno}: expected an object with a 'text' string")
            yield record["text"]
        return
    with path.open(encoding="utf-8") as fh:
        block: list[str] = []
        for line in fh:  # paragraphs separated by blank lines
            if line.strip():
                block.append(line.strip())
            elif block:
                yield " ".join(block)
                block = []
        if block:
            yield " ".join(block)


def _hf_parts(spec: str) -> tuple[str, str | None, str]:
    parts = spec.split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def _hf_identity(spec: str) -> str:
    name, config, split = _hf_parts(spec)
    revision = "unknown"
    try:
        from huggingface_hub import HfApi

        revision = HfApi().dataset_info(name).sha or "unknown"
    except Exception as exc:  # offline: the identity still names the dataset and split
        log.warning("could not resolve the revision of dataset %s (%s)", name, exc)
    return f"{name}:{config}:{split}@{revision}"


def _hf_texts(spec: str) -> Iterator[str]:
    import datasets

    name, config, split = _hf_parts(spec)
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for record in ds:
        text = record.get("text")
        if isinstance(text, str) and text.strip():
            yield text


SELF_TEXT_ROWS = 256


def _self_texts(handle: ModelHandle, num_tokens: int, seq_len: int, seed: int) -> Iterator[str]:
    """Model samples (top-k 20) from the starter words, ``SELF_TEXT_ROWS`` sequences per
    batched sampling call, until the budget: few large calls keep a CPU busy where many
    small ones (a batch per starter) left it waiting on Python."""
    from editors._locate.keys import STARTERS

    length = min(seq_len, 128)
    produced, batch = 0, 0
    while produced < num_tokens:
        rows = min(SELF_TEXT_ROWS, -(-(num_tokens - produced) // length))
        prompts = [STARTERS[i % len(STARTERS)] for i in range(rows)]
        for text in sample_batch(handle, prompts, length, seed * 100_003 + batch, top_k=20):
            produced += length
            yield text
        batch += 1


@torch.no_grad()
def sample_batch(handle: ModelHandle, prompts: Sequence[str], length: int, seed: int, top_k: int) -> list[str]:
    """Seeded top-k samples of ``length`` new tokens continuing ``prompts``, all rows in one
    ``generate`` call (left-padded); the global RNG is left as it was."""
    from editbench.tokens import encode_prompt

    tok, model = handle.tokenizer, handle.model
    encoded = [encode_prompt(tok, p) for p in prompts]
    ids, mask = pad_batch(encoded, tok.pad_token_id, left=True)
    device = handle.input_device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.to(handle.input_device), attention_mask=mask.to(handle.input_device),
            do_sample=True, top_k=top_k, top_p=None, temperature=1.0, max_new_tokens=length,
            min_new_tokens=length, pad_token_id=tok.pad_token_id, repetition_penalty=1.0)
    width = ids.shape[1]  # each row: left padding, its prompt, then the new tokens
    return [tok.decode(row[width - len(enc):].tolist(), skip_special_tokens=True)
            for row, enc in zip(out.cpu(), encoded, strict=True)]


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class StatsRequest:
    """What a statistics matrix depends on."""

    model: str
    weights: str
    corpus: str
    tokens: int
    seq_len: int
    dtype: str

    def meta(self, module: str, kind: str = "mom2") -> dict[str, Any]:
        return {"version": CACHE_VERSION, "kind": kind, "module": module, "model": self.model,
                "weights": self.weights, "corpus": self.corpus, "tokens": self.tokens,
                "seq_len": self.seq_len, "dtype": self.dtype}


def cache_path(root: Path, meta: dict[str, Any]) -> Path:
    key = json_digest(meta, 32)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in meta["module"])
    return root / f"{meta['kind']}-{safe}-{key}.pt"


def save_cached(path: Path, meta: dict[str, Any], tensor: torch.Tensor, extra: dict[str, Any]) -> None:
    tensor = tensor.detach().contiguous().cpu()
    payload = {"meta": meta, "sha256": tensor_sha256(tensor), "tensor": tensor, "extra": extra}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_cached(path: Path, meta: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The cached tensor if ``path`` holds exactly ``meta`` and intact bytes; else None."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            isinstance(payload, dict)
            and payload.get("meta") == meta
            and tensor_sha256(payload["tensor"]) == payload.get("sha256")
        )
    except Exception as exc:
        log.warning("statistics cache %s unreadable (%s): recomputing", path, exc)
        return None
    if not ok:
        log.warning("statistics cache %s does not match (stale or corrupt): recomputing", path)
        return None
    return payload["tensor"], payload.get("extra", {})


def self_text_path(root: Path, req: StatsRequest) -> tuple[Path, dict[str, Any]]:
    """Where the text a self-generated corpus sampled from this model is kept (it depends on
    the model, its weights, the seed and the budget, not on the module or the dtype)."""
    meta = {"version": CACHE_VERSION, "kind": "selftext", "module": "corpus", "model": req.model,
            "weights": req.weights, "corpus": req.corpus, "tokens": req.tokens,
            "seq_len": req.seq_len}
    return cache_path(root, meta).with_suffix(".json"), meta


def _texts_sha256(texts: Sequence[str]) -> str:
    return json_digest(list(texts))


def save_self_texts(path: Path, meta: dict[str, Any], texts: Sequence[str]) -> None:
    payload = {"meta": meta, "sha256": _texts_sha256(texts), "texts": list(texts)}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload), encoding="utf-8"))


def load_self_texts(path: Path, meta: dict[str, Any]) -> tuple[str, ...] | None:
    """The cached samples if ``path`` holds exactly ``meta`` and intact text; else None."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        texts = payload["texts"]
        ok = (payload.get("meta") == meta and isinstance(texts, list)
              and all(isinstance(t, str) for t in texts) and _texts_sha256(texts) == payload.get("sha256"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("self-generated corpus cache %s unreadable (%s): sampling again", path, exc)
        return None
    if not ok:
        log.warning("self-generated corpus cache %s does not match (stale or corrupt): sampling again", path)
        return None
    return tuple(texts)


def _batches(handle: ModelHandle, corpus: Corpus, num_tokens: int, seq_len: int, batch_size: int):
    """Right-padded batches of token ids, length-sorted within windows to limit padding."""
    tok = handle.tokenizer
    window: list[list[int]] = []
    budget = num_tokens

    def flush(window):
        window.sort(key=len)
        for i in range(0, len(window), batch_size):
            yield window[i : i + batch_size]

    for text in corpus.texts(handle, num_tokens, seq_len):
        ids = tok(text, add_special_tokens=True, truncation=False)["input_ids"][:seq_len]
        if len(ids) < 2:
            continue
        ids = ids[:budget]
        budget -= len(ids)
        window.append(ids)
        if len(window) >= 16 * batch_size:
            yield from flush(window)
            window = []
        if budget <= 0:
            break
    if window:
        yield from flush(window)
    if budget > 0:
        log.warning("corpus %s ran out after %d of %d tokens", corpus.identity,
                    num_tokens - budget, num_tokens)


def compute_second_moments(
    handle: ModelHandle,
    modules: Sequence[str],
    corpus: Corpus,
    num_tokens: int,
    seq_len: int = 256,
    batch_size: int = 16,
    dtype: str = "float32",
    flush_every: int = 32,
) -> tuple[dict[str, torch.Tensor], int]:
    """One pass: ``{module: E[k k^T]}`` (CPU, ``dtype``) and the number of tokens seen."""
    model = handle.model
    device = handle.input_device
    sums64: dict[str, torch.Tensor] = {}
    partial: dict[str, torch.Tensor] = {}
    count = 0
    specs = dict.fromkeys(modules, "input")
    with bar(f"layer statistics ({len(modules)} modules)", num_tokens, "tok") as pbar, \
            torch.no_grad():
        for b, seqs in enumerate(_batches(handle, corpus, num_tokens, seq_len, batch_size)):
            ids, mask = pad_batch(seqs, handle.tokenizer.pad_token_id)
            with capture(model, specs, stop=True) as store:
                forward(model, ids.to(device), mask.to(device))
            for name in modules:
                x = store[name]
                keep = mask.to(x.device).bool()
                k = x[keep].float()
                if name not in partial:
                    partial[name] = torch.zeros(k.shape[1], k.shape[1], device=k.device)
                partial[name].addmm_(k.T, k)
            n = int(mask.sum())
            count += n
            pbar.update(n)
            if (b + 1) % flush_every == 0:
                _flush(partial, sums64)
    _flush(partial, sums64)
    if count == 0:
        raise EditbenchError(f"stats corpus {corpus.identity}: no text to compute statistics from")
    out_dtype = DTYPES[dtype]
    return {name: (s / count).to(out_dtype) for name, s in sums64.items()}, count


def _flush(partial: dict[str, torch.Tensor], sums64: dict[str, torch.Tensor]) -> None:
    for name, p in partial.items():
        p64 = p.to("cpu", torch.float64)
        if name in sums64:
            sums64[name] += p64
        else:
            sums64[name] = p64
        p.zero_()


def second_moments(
    handle: ModelHandle,
    modules: Sequence[str],
    corpus: Corpus,
    num_tokens: int,
    seq_len: int = 256,
    batch_size: int = 16,
    dtype: str = "float32",
    root: Path | None = None,
    fingerprint: str | None = None,
    companions: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Cached ``E[k k^T]`` of each module's input; missing ones computed in one pass.

    ``companions``: modules whose matrices the pass also computes and caches when it runs
    anyway (not returned), so a later editor at other layers reads them instead of running
    a pass of its own. Returns the matrices (CPU) and an info dict (cache hits, tokens,
    seconds).
    """
    if dtype not in DTYPES:
        raise EditbenchError(f"stats_dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    root = root or stats_cache_root()
    req = StatsRequest(handle.identity, fingerprint or weights_fingerprint(handle.model),
                       corpus.identity, num_tokens, seq_len, dtype)
    out, missing = _cached_moments(root, req, modules)
    notes: dict[str, Any] = {}
    if missing:
        # One process computes a request's missing matrices; another asking for them
        # meanwhile (a parallel run, a test worker) waits, then reads them from the cache.
        # (A fully cached request takes no lock, so a read-only cache still serves.)
        with file_lock(root / f"mom2-{json_digest(asdict(req), 16)}.lock"):
            out, missing = _cached_moments(root, req, modules)
            if missing:
                made, notes = _compute_and_cache(handle, root, req, corpus, missing, companions, batch_size)
                out.update(made)
    info: dict[str, Any] = {"cached": sorted(set(modules) - set(missing)), "computed": missing,
                            "corpus": corpus.identity, "tokens": num_tokens, **notes}
    return out, info


def _cached_moments(root: Path, req: StatsRequest, modules: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The cached matrices of ``modules`` and the names of those not cached."""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for name in modules:
        meta = req.meta(name)
        hit = load_cached(cache_path(root, meta), meta)
        if hit is None:
            missing.append(name)
        else:
            out[name] = hit[0]
    return out, missing


def _compute_and_cache(handle: ModelHandle, root: Path, req: StatsRequest, corpus: Corpus,
                       missing: list[str], companions: Sequence[str],
                       batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One pass over the corpus for ``missing`` (and uncached ``companions``), all cached;
    returns the ``missing`` ones and notes on what it did."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    text_path, text_meta = self_text_path(root, req) if corpus.kind == "self" else (None, None)
    if text_path is not None:
        samples = load_self_texts(text_path, text_meta)
        corpus = replace(corpus, samples=samples, record=[] if samples is None else None)
        info["self_text"] = "cached" if samples is not None else "sampled"
    extra = [m for m in companions if m not in missing
             and load_cached(cache_path(root, req.meta(m)), req.meta(m)) is None]
    computed, count = compute_second_moments(
        handle, missing + extra, corpus, req.tokens, req.seq_len, batch_size, req.dtype
    )
    info["companions"] = extra
    if corpus.record:
        save_self_texts(text_path, text_meta, corpus.record)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    info["tokens_seen"] = count
    out = {}
    for name, mat in computed.items():
        meta = req.meta(name)
        save_cached(cache_path(root, meta), meta, mat, {"tokens_seen": count})
        if name in missing:
            out[name] = mat
    return out, info


def stats_companions(handle: ModelHandle, config) -> list[str]:
    """Every layer's ``mlp_down`` when ``config.stats_layers`` asks for all of them (or
    ``auto`` and they fit in ``stats_all_layers_mb`` together); else none."""
    if config.stats_layers == "edited":
        return []
    names = [handle.module_name("mlp_down", layer) for layer in range(handle.num_layers)]
    if config.stats_layers == "auto":
        width = _input_width(handle.model.get_submodule(names[0]))
        if width is None or len(names) * width * width * 4 / 2**20 > config.stats_all_layers_mb:
            return []
    return names


def _input_width(module: torch.nn.Module) -> int | None:
    """The input width of a linear-like module (``in_features``, or a Conv1D's weight)."""
    width = getattr(module, "in_features", None)
    if width is None and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        width = module.weight.shape[0]  # GPT-2's Conv1D stores [in, out]
    return width
