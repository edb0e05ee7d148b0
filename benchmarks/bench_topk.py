"""Exact cosine top-k: sentfuse vs sentence-transformers, torch.topk(q @ c.T) and FAISS, side by side.

Normalized random 384-d embeddings, so every method scores with a plain dot product (for unit
vectors it is the cosine; sentence-transformers gets util.dot_score) and returns the exact top-k. Reported per method:
median milliseconds, peak extra memory during the call (on CPU resident memory sampled every
millisecond after returning freed memory to the OS; on CUDA the allocator's peak), and sentfuse's
speedup over it. The GEMM column is the
fraction of this machine's measured fp32 matrix-multiply throughput that sentfuse reached.

    python benchmarks/bench_topk.py [--corpus 100000 1000000] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _openblas_coretype() -> str | None:
    """The OpenBLAS kernel set for this CPU's vector extensions (x86 Linux), None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "avx512f" in flags:
        return "SkylakeX"
    return "Haswell" if "avx2" in flags and "fma" in flags else None


# faiss-cpu's bundled OpenBLAS misdetects some CPUs (this project's AMD EPYC dev machine as "Prescott", with
# no AVX kernels: 2.3x slower here), so FAISS is given the kernels the CPU has, unless the caller chose.
# Read when the library loads: set before numpy or faiss is imported.
if "OPENBLAS_CORETYPE" not in os.environ and _openblas_coretype():
    os.environ["OPENBLAS_CORETYPE"] = _openblas_coretype()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from peak_memory import peak_memory  # noqa: E402
from sentfuse.search.topk import search_topk  # noqa: E402
from sentfuse.search.similarity import dot_score  # noqa: E402

DIM = 384


def timed(fn, repeats: int, device: str) -> tuple[float, float, object]:
    """(median ms, peak extra MB over all runs, last result); one warm-up run first."""
    on_cuda = device.startswith("cuda")
    result = fn()
    times, extra = [], 0.0
    for _ in range(repeats):
        with peak_memory(device) as mem:
            start = time.perf_counter()
            result = fn()
            if on_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        extra = max(extra, mem.extra_mb)
    return float(np.median(times)), extra, result


def gemm_gflops(device: str) -> float:
    """Measured fp32 matrix-multiply throughput of this machine (all threads)."""
    a = torch.randn(2048, DIM, device=device)
    b = torch.randn(16384, DIM, device=device)
    a @ b.T
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start, runs = time.perf_counter(), 5
    for _ in range(runs):
        a @ b.T
    sync()
    return 2 * 2048 * 16384 * DIM * runs / (time.perf_counter() - start) / 1e9


def unit_rows(rows: int, seed: int, device: str) -> torch.Tensor:
    x = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 16, 1000])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (1 for cells over 5 s)")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out: st, torch, faiss")
    parser.add_argument("--bf16-rescore", action="store_true", help="also time sentfuse's bf16-rescored path")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    from sentence_transformers import util

    faiss = None
    if "faiss" not in args.skip and args.device == "cpu":
        try:
            import faiss
        except ImportError:
            print("faiss not installed: pip install faiss-cpu (benchmark-only dependency)")
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']}:{i.get('architecture') or '-'}" for i in threadpool_info())
    except ImportError:
        pass

    device = args.device
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    peak = gemm_gflops(device)
    print(f"device: {device_name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"BLAS threadpools: {blas or 'unknown'} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    print(f"measured fp32 GEMM throughput: {peak:.1f} GFLOP/s\n")
    header = (f"{'N':>9} {'M':>5} {'k':>4} | {'sentfuse ms':>11} {'MB':>6} {'GEMM%':>5} | {'ST ms':>9} {'MB':>6} "
              f"{'x':>5} | {'topk ms':>9} {'MB':>6} {'x':>5} | {'faiss ms':>9} {'MB':>6} {'x':>5}")
    print(header)
    print("-" * len(header))

    rows = []
    for n in args.corpus:
        corpus = unit_rows(n, 0, device)
        corpus_np = corpus.cpu().numpy()
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(DIM)
            index.add(corpus_np)
        for m in args.queries:
            queries = unit_rows(m, 1, device)
            for k in args.k:
                flops = 2.0 * m * n * DIM
                repeats = args.repeats if flops < 2e11 else 1
                ours_ms, ours_mb, (ours_s, ours_i) = timed(
                    lambda: search_topk(queries, corpus, k, score_function=dot_score), repeats, device)
                cells = {}
                if args.bf16_rescore:
                    cells["bf16"] = timed(lambda: search_topk(queries, corpus, k, score_function=dot_score,
                                                              bf16_rescore=True), repeats, device)
                    # Same answer: equal scores (indices may swap only among near-ties).
                    torch.testing.assert_close(cells["bf16"][2][0], ours_s, atol=1e-5, rtol=0)
                if "st" not in args.skip:
                    cells["st"] = timed(
                        lambda: util.semantic_search(queries, corpus, top_k=k, score_function=util.dot_score), repeats,
                        device)
                if "torch" not in args.skip:
                    cells["torch"] = timed(lambda: torch.topk(queries @ corpus.T, k, dim=1), repeats, device)
                if index is not None:
                    q_np = queries.cpu().numpy()
                    cells["faiss"] = timed(lambda: index.search(q_np, k), repeats, device)
                # Every method must agree with sentfuse on the scores (indices may differ on ties).
                if "torch" in cells:
                    torch.testing.assert_close(ours_s, cells["torch"][2].values.float(), atol=1e-4, rtol=0)
                row = dict(corpus=n, queries=m, k=k, sentfuse_ms=ours_ms, sentfuse_extra_mb=ours_mb,
                           gemm_fraction=flops / (ours_ms * 1e6) / peak)
                line = f"{n:>9} {m:>5} {k:>4} | {ours_ms:11.1f} {ours_mb:6.0f} {100 * row['gemm_fraction']:5.0f} |"
                if "bf16" in cells:
                    row.update(bf16_rescore_ms=cells["bf16"][0], bf16_rescore_extra_mb=cells["bf16"][1])
                    line += f" bf16 {cells['bf16'][0]:9.1f} {cells['bf16'][1]:6.0f} |"
                for name in ("st", "torch", "faiss"):
                    if name in cells:
                        ms, mb, _ = cells[name]
                        row.update({f"{name}_ms": ms, f"{name}_extra_mb": mb, f"speedup_vs_{name}": ms / ours_ms})
                        line += f" {ms:9.1f} {mb:6.0f} {ms / ours_ms:5.2f} |"
                    else:
                        line += f" {'-':>9} {'-':>6} {'-':>5} |"
                print(line.rstrip("|"), flush=True)
                rows.append(row)
        del corpus, corpus_np, index

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, device_name=device_name, torch=torch.__version__, blas=blas,
                           threads=torch.get_num_threads(), gemm_gflops=peak, results=rows), f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
