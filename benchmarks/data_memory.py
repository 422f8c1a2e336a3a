"""Peak memory of reading a large dataset file, streamed vs whole; prints JSON.

Writes N generated requests (``editbench.data.synthetic``) as one JSON array in the
zsRE/MEND layout (the layout of ``zsre-train``), then reads it in a fresh process per mode:

- ``streamed``: ``read_file`` (the loader every dataset goes through), which parses the
  array one record at a time while hashing the bytes;
- ``whole``: the file's text read at once, ``json.loads`` and the same record parser
  (what loaders commonly do, and what editbench did before).

For each: the file size, the process's peak RSS above its RSS before reading
(``VmHWM``), the RSS the parsed requests keep afterwards, and the difference (what
reading needed on top of the result). The result, a list of requests, is the same in both.

Usage: python benchmarks/data_memory.py [--records 100000] [--output memory.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """The process's peak RSS: VmHWM (``ru_maxrss`` would include the parent's, since it
    survives ``fork`` and ``exec`` on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_file(path: Path, records: int) -> int:
    from editbench.data.synthetic import generate, zsre_records

    with path.open("w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i, record in enumerate(zsre_records(generate(records))):
            fh.write(("" if i == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        fh.write("\n]\n")
    return path.stat().st_size


def measure(path: Path, mode: str) -> dict:
    """Run in its own process: the RSS numbers are this process's alone."""
    import gc

    from editbench.data.formats import parse_text, read_file

    gc.collect()
    before, peak_before = rss_mb(), peak_mb()
    t0 = time.perf_counter()
    if mode == "streamed":
        parsed = read_file(path)
    else:
        parsed = parse_text(path, path.read_text(encoding="utf-8"))
    seconds = time.perf_counter() - t0
    gc.collect()
    peak, after = peak_mb(), rss_mb()
    return {"mode": mode, "requests": len(parsed.requests), "seconds": round(seconds, 2),
            "rss_before_mb": round(before, 1), "peak_before_mb": round(peak_before, 1),
            "peak_above_start_mb": round(peak - before, 1),
            "kept_by_requests_mb": round(after - before, 1),
            "needed_for_reading_mb": round(peak - after, 1)}


def run(records: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="editbench-data-memory-") as tmp:
        path = Path(tmp) / "zsre_mend_train.json"
        size = write_file(path, records)
        result: dict = {"records": records, "file_mb": round(size / 2**20, 1), "modes": {}}
        for mode in ("streamed", "whole"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), "--mode", mode],
                                 capture_output=True, text=True, check=True)
            result["modes"][mode] = json.loads(out.stdout)
    for m in result["modes"].values():
        m["peak_over_file_size"] = round(m["peak_above_start_mb"] / result["file_mb"], 2)
        m["reading_over_file_size"] = round(m["needed_for_reading_mb"] / result["file_mb"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--output", default=None)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.mode)))
        return 0
    result = run(args.records)
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
