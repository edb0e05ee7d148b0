"""Where cosine_topk's time goes: torch.profiler over a few calls per case, printing the wall time per call,
the device-busy share of it and the kernels (or CPU ops) by total time, so the next device run can tell launch
overhead and host syncs from slow kernels. The 2026-12-04 H200 run found one query against 1M fp16 rows at
~1 ms whatever the dtype, against 0.34 ms for torch.topk(q @ c.T) and ~0.2 ms of reading the corpus, and
k = 4096 at 28 ms against 8.7 ms.

    python benchmarks/profile_topk.py --device cuda --json out.json
    python benchmarks/profile_topk.py --device cpu --corpus 100000   # the same table on CPU ops
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_encode import device_busy_seconds

import sentfuse
from bench_topk import unit_rows

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (queries, k, dtype, metric): the cases of the GPU issue's goals that were furthest from them. One query under
# "cosine" takes the fused few-query scan, under "dot" cuBLAS (since the 2026-12-04 run): both are listed.
CASES = [(1, 10, "fp16", "dot"), (1, 10, "fp16", "cosine"), (1, 10, "fp32", "dot"), (1000, 10, "fp16", "dot"),
         (1000, 10, "fp32", "dot"), (1000, 4096, "fp16", "dot")]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_case(queries: torch.Tensor, corpus: torch.Tensor, k: int, metric: str, calls: int, rows: int) -> dict:
    """Wall ms per call, device-busy share and the top `rows` ops of `calls` profiled calls."""
    device = str(queries.device)
    cuda = device.startswith("cuda")
    sentfuse.cosine_topk(queries, corpus, k, metric=metric)  # warm-up: allocator, attributes, kernels loaded
    sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            sentfuse.cosine_topk(queries, corpus, k, metric=metric)
        sync(device)
        wall = time.perf_counter() - start
    busy = device_busy_seconds(prof) / wall if cuda else None
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=rows)
    return {"wall_ms_per_call": wall / calls * 1e3, "device_busy": busy, "top_ops": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--calls", type=int, default=5, help="profiled calls per case")
    parser.add_argument("--rows", type=int, default=12, help="ops listed per case")
    parser.add_argument("--json", type=argparse.FileType("w"))
    args = parser.parse_args()

    base = unit_rows(args.corpus, 0, args.device, args.dim)
    results = []
    for m, k, dtype_name, metric in CASES:
        corpus = base.to(DTYPES[dtype_name])
        queries = unit_rows(m, 1, args.device, args.dim).to(DTYPES[dtype_name])
        row = {"queries": m, "corpus": args.corpus, "k": k, "dtype": dtype_name, "metric": metric}
        row |= profile_case(queries, corpus, k, metric, args.calls, args.rows)
        busy = "" if row["device_busy"] is None else f", device busy {row['device_busy']:.0%} of wall"
        print(f"\n== {m} x {args.corpus:,} x {args.dim}, k = {k}, {dtype_name}, {metric}: "
              f"{row['wall_ms_per_call']:.3f} ms a call{busy}")
        print(row["top_ops"])
        results.append(row)
        del corpus, queries
    if args.json:
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        json.dump({"device": name, "torch": torch.__version__, "results": results}, args.json, indent=1)


if __name__ == "__main__":
    main()
