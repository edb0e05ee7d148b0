"""cosine_topk on a GPU against the size of its score tiles (SENTFUSE_CUDA_TOPK_TILE_MB; default half the L2),
CUDA-event medians, one process. The 2026-12-04 H200 run spent ~5 of 6.75 ms of 1,000 x 1M fp16 (k = 10) in the
selects of 64 L2-sized tiles: larger tiles cut the per-tile overhead and spill the scores past L2. This sweep
says which wins, and by how much, before the default moves.

    python benchmarks/sweep_topk_tiles.py --json out.json [--sizes-mb 8 15 30 60 120 240 480]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import sentfuse
from bench_topk import unit_rows

ENV = "SENTFUSE_CUDA_TOPK_TILE_MB"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [(1000, 10, "fp16"), (1000, 10, "fp32"), (10000, 10, "fp16"), (1000, 100, "fp16")]  # (queries, k, dtype)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[8, 15, 30, 60, 120, 240, 480])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=argparse.FileType("w"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("sweep_topk_tiles: needs a CUDA device")
    l2_mb = torch.cuda.get_device_properties(0).L2_cache_size / 2**20
    print(f"{torch.cuda.get_device_name()}: L2 {l2_mb:.0f} MB (default tile: half of it); "
          f"corpus {args.corpus:,} x {args.dim}; CUDA-event medians of {args.repeats} calls, ms")
    base = unit_rows(args.corpus, 0, "cuda", args.dim)
    sizes = [None] + args.sizes_mb
    print(f"{'queries':>7} {'k':>4} {'dtype':>5} | " + " ".join(f"{'default' if s is None else f'{s} MB':>8}" for s in sizes))
    rows = []
    for m, k, dtype_name in CASES:
        corpus = base.to(DTYPES[dtype_name])
        queries = unit_rows(m, 1, "cuda", args.dim).to(DTYPES[dtype_name])
        reference = None
        times = {}
        for size in sizes:
            if size is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = str(size)
            times["default" if size is None else size] = median_ms(
                lambda: sentfuse.cosine_topk(queries, corpus, k, metric="dot"), args.repeats)
            scores, _ = sentfuse.cosine_topk(queries, corpus, k, metric="dot")
            if reference is None:
                reference = scores
            else:  # every tile size returns the same exact answer (ties may swap indices, never scores)
                torch.testing.assert_close(scores, reference, atol=0, rtol=0)
        os.environ.pop(ENV, None)
        print(f"{m:7d} {k:4d} {dtype_name:>5} | " + " ".join(f"{t:8.2f}" for t in times.values()), flush=True)
        rows.append({"queries": m, "k": k, "dtype": dtype_name, "ms": {str(s): t for s, t in times.items()}})
        del corpus, queries
    if args.json:
        json.dump({"device": torch.cuda.get_device_name(), "l2_mb": l2_mb, "corpus": args.corpus, "dim": args.dim,
                   "results": rows}, args.json, indent=1)


if __name__ == "__main__":
    main()
