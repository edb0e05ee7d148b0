"""Exact cosine top-k: sentfuse vs sentence-transformers, torch.topk(q @ c.T) and FAISS, side by side.

Normalized random 384-d embeddings, so every method scores with a plain dot product (for unit
vectors it is the cosine; sentence-transformers gets util.dot_score) and returns the exact top-k. Reported per method:
median milliseconds (CUDA-event medians on a GPU), peak extra memory during the call (on CPU resident memory
sampled every millisecond after returning freed memory to the OS; on CUDA the allocator's peak), and sentfuse's
speedup over it. GEMM% is the fraction of this machine's measured dense matrix-multiply rate (fp32 on CPU; on a
GPU the 16-bit tensor-core rate, which sentfuse's scan uses for every input dtype) that the M x N x D product
reached inside sentfuse; the `gemm` column times `queries @ corpus.T` alone in the input dtype, with its own
share of the dense rate of that dtype.

    python benchmarks/bench_topk.py [--corpus 100000 1000000] [--device cuda] [--json out.json]
    python benchmarks/bench_topk.py --device cuda --gpu-table    # issue 13's table, about a minute on an H100
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

import gemm_ceiling  # noqa: E402
from peak_memory import peak_memory  # noqa: E402
from sentfuse.search.topk import search_topk  # noqa: E402
from sentfuse.search.similarity import dot_score  # noqa: E402

DIM = 384


def timed(fn, repeats: int, device: str) -> tuple[float, float, object] | None:
    """(median ms, peak extra MB over all runs, last result); one warm-up run first. On CUDA the times are
    CUDA-event intervals; None when the device runs out of memory."""
    on_cuda = device.startswith("cuda")
    try:
        result = fn()
        times, extra = [], 0.0
        for _ in range(repeats):
            with peak_memory(device) as mem:
                if on_cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    result = fn()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    begin = time.perf_counter()
                    result = fn()
                    times.append((time.perf_counter() - begin) * 1e3)
            extra = max(extra, mem.extra_mb)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    return float(np.median(times)), extra, result


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def gemm_gflops(device: str, dtype: torch.dtype = torch.float32) -> float:
    """Measured dense matrix-multiply rate of this machine in `dtype` (all threads; TF32 stays off)."""
    on_cuda = device.startswith("cuda")
    size = (8192, 8192, 8192) if on_cuda and dtype != torch.float32 else (2048, 16384, DIM)
    if on_cuda and dtype == torch.float32:
        size = (4096, 4096, 4096)
    a = torch.randn(size[0], size[2], device=device).to(dtype)
    b = torch.randn(size[1], size[2], device=device).to(dtype)
    ms = timed(lambda: a @ b.T, 5, device)[0]
    return 2 * size[0] * size[1] * size[2] / (ms * 1e-3) / 1e9


CPU_FLAG_PREFIXES = ("avx2", "avx512", "amx", "fma")


def cpu_flags_line() -> str:
    """This CPU's vector and matrix extensions, as /proc/cpuinfo names them."""
    from sentfuse import cpu_features

    return " ".join(sorted(f for f in cpu_features.cpu_flags() if f.startswith(CPU_FLAG_PREFIXES))) or "unknown"


# The compute-bound shape of encode's matrix products, where the matrix units reach their ceiling.
CEILING_SHAPE = (2048, 384, 1536)


def cpu_ceilings() -> dict[str, float]:
    """Measured GEMM rate on CEILING_SHAPE per dtype: fp32 and bf16 (torch.mm), int8 (torch._int_mm), G(FL)OP/s,
    each its fastest round (gemm_ceiling's timing). cpu_ab re-measures them before every round and keeps the best
    (gemm_ceiling.best): a shared VM's matrix units run at a third of their speed while a neighbour uses them."""
    m, d, n = CEILING_SHAPE
    flop = 2 * m * d * n
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(m, d).to(dtype), torch.randn(d, n).to(dtype)
        out[name] = gemm_ceiling.best_rate(lambda: a @ b, flop)
    a8, b8 = torch.randint(-64, 64, (m, d), dtype=torch.int8), torch.randint(-64, 64, (d, n), dtype=torch.int8)
    try:
        out["int8"] = gemm_ceiling.best_rate(lambda: torch._int_mm(a8, b8), flop)
    except RuntimeError:  # no int8 GEMM in this torch build
        pass
    return out


def ceilings_line(ceilings: dict[str, float]) -> str:
    return ("GEMM ceiling on " + " x ".join(map(str, CEILING_SHAPE)) + " (fastest timing round, best of the rounds): "
            + ", ".join(f"{k} {v:,.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in ceilings.items()))


def cpu_ab(args, rounds: int) -> tuple[dict[str, float], list[dict]]:
    """sentfuse's two CPU paths (fp32 tiles, bf16 tiles + fp32 rescoring) and the peers, alternated `rounds`
    times on each (N, M, k) so that the machine's drift hits all alike: min-max of the per-round medians."""
    from sentfuse import cpu_features

    faiss = None
    if "faiss" not in args.skip:
        try:
            import faiss
        except ImportError:
            print("faiss not installed: pip install faiss-cpu (benchmark-only dependency)")
    ceilings = cpu_ceilings()
    print(f"CPU flags: {cpu_flags_line()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; default top-k path: "
          f"{'bf16 tiles + fp32 rescore' if cpu_features.topk_bf16_default() else 'fp32 tiles'}")
    print(ceilings_line(ceilings) + " (so far)\n")
    results = []
    for n in args.corpus:
        corpus = unit_rows(n, 0, "cpu")
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(DIM)
            index.add(corpus.numpy())
        corpus16 = corpus.bfloat16()
        for m in args.queries:
            queries = unit_rows(m, 1, "cpu")
            queries16 = queries.bfloat16()
            for k in args.k:
                methods = {
                    "sentfuse default": lambda: search_topk(queries, corpus, k, score_function=dot_score),
                    "sentfuse fp32 tiles": lambda: search_topk(queries, corpus, k, score_function=dot_score,
                                                               bf16_rescore=False),
                    "sentfuse bf16 tiles": lambda: search_topk(queries, corpus, k, score_function=dot_score,
                                                               bf16_rescore=True),
                    "sentfuse bf16 inputs": lambda: search_topk(queries16, corpus16, k, score_function=dot_score),
                    "torch.topk fp32": lambda: torch.topk(queries @ corpus.T, k, dim=1),
                    "torch.topk bf16": lambda: torch.topk(queries16 @ corpus16.T, k, dim=1),
                }
                if index is not None:
                    q_np = queries.numpy()
                    methods["faiss IndexFlatIP"] = lambda: index.search(q_np, k)
                expected = methods["sentfuse fp32 tiles"]()
                for name in ("sentfuse default", "sentfuse bf16 tiles"):  # exact: the fp32 answer
                    torch.testing.assert_close(methods[name]()[0], expected[0], atol=1e-5, rtol=0)
                times = {name: [] for name in methods}
                for _ in range(rounds):
                    ceilings = gemm_ceiling.best(ceilings, cpu_ceilings())
                    for name, fn in methods.items():
                        times[name].append(timed(fn, args.repeats, "cpu")[0])
                results.append(print_ab(n, m, k, times, ceilings, cpu_features.topk_bf16_default(m)))
    print(ceilings_line(ceilings))
    return ceilings, results


def print_ab(n: int, m: int, k: int, times: dict[str, list[float]], ceilings: dict[str, float],
             default_bf16: bool) -> dict:
    """One A/B block: each method's range of per-round medians, its rate as a fraction of its dtype's ceiling,
    and how many times slower than sentfuse's default it ran (the ratio of the medians, per round)."""
    flops = 2.0 * m * n * DIM
    ours = times["sentfuse default"]
    print(f"N={n:,} M={m:,} k={k} ({flops / 1e9:.1f} GFLOP)")
    print(f"  {'method':<22} {'ms (min-max)':>17} {'of ceiling':>14} {'x default (min-max)':>20}")
    row = dict(corpus=n, queries=m, k=k, methods={})
    for name, ts in times.items():
        on_bf16 = "bf16" in name or (name == "sentfuse default" and default_bf16)
        ceiling = ceilings["bf16" if on_bf16 else "fp32"]
        ratios = [t / o for t, o in zip(ts, ours)]
        frac = [flops / (t * 1e-3) / 1e9 / ceiling for t in ts]
        print(f"  {name:<22} {min(ts):8.1f}-{max(ts):<8.1f} {100 * min(frac):5.0f}-{100 * max(frac):<4.0f}%"
              f"   {min(ratios):8.2f}-{max(ratios):<8.2f}")
        row["methods"][name] = dict(ms=ts, fraction_of_ceiling=frac, times_default=ratios)
    return row


def unit_rows(rows: int, seed: int, device: str, dim: int = DIM) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator(device).manual_seed(seed), device=device)
    return torch.nn.functional.normalize(x, dim=1)


# The scores every method must agree on, per input dtype (torch's 16-bit GEMM rounds its output).
AGREE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 16, 1000])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32"], help="input dtypes")
    parser.add_argument("--big-k", type=int, nargs="*", default=[],
                        help="extra k values timed once, at the largest corpus and query count under 10,000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (1 for cells over 5 s)")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out: st, torch, gemm, faiss")
    parser.add_argument("--bf16-rescore", action="store_true", help="also time sentfuse's bf16-rescored path")
    parser.add_argument("--gpu-table", action="store_true",
                        help="issue 13's table: 1M corpus; 1, 1,000, 10,000 queries; k 10, 100 (and 4,096 once, "
                             "fp16); fp32, bf16, fp16; sentence-transformers only at 1,000 queries")
    parser.add_argument("--ab", type=int, metavar="ROUNDS",
                        help="CPU: A/B sentfuse's fp32 and bf16 paths against torch.topk and FAISS, alternated "
                             "ROUNDS times, with CPU flags and the fp32/bf16/int8 GEMM ceilings")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.gpu_table:
        args.corpus, args.queries, args.k = [1_000_000], [1, 1000, 10_000], [10, 100]
        args.dtypes, args.big_k = ["fp32", "bf16", "fp16"], [4096]
    return args


def cases(args) -> list[tuple[int, int, int, list[str]]]:
    """(corpus, queries, k, dtypes) in table order; the --big-k rows last, once each, in the last dtype."""
    out = [(n, m, k, args.dtypes) for n in args.corpus for m in args.queries for k in args.k]
    if args.big_k:
        m_big = max([m for m in args.queries if m < 10_000] or [min(args.queries)])
        out += [(max(args.corpus), m_big, k, args.dtypes[-1:]) for k in args.big_k]
    return out


def main() -> None:
    args = parse_args()
    if args.ab:
        ceilings, results = cpu_ab(args, args.ab)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(cpu_flags=cpu_flags_line(), ceiling_shape=CEILING_SHAPE, ceilings=ceilings,
                               threads=torch.get_num_threads(), torch=torch.__version__, results=results), f, indent=2)
            print(f"\nwrote {args.json}")
        return
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
    on_cuda = device.startswith("cuda")
    device_name = torch.cuda.get_device_name(device) if on_cuda else platform.processor() or "cpu"
    peaks = {name: gemm_gflops(device, DTYPES[name]) for name in (["fp32", "fp16", "bf16"] if on_cuda else ["fp32"])}
    # sentfuse's GPU scan multiplies 16-bit tiles whatever the input dtype.
    ours_peak = peaks["fp16"] if on_cuda else peaks["fp32"]
    print(f"device: {device_name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"BLAS threadpools: {blas or 'unknown'} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    print("measured dense GEMM rate: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()) + "\n")
    header = (f"{'N':>9} {'M':>5} {'k':>4} {'dtype':>5} | {'sentfuse ms':>11} {'MB':>6} {'GEMM%':>5} | {'ST ms':>9} "
              f"{'MB':>6} {'x':>5} | {'topk ms':>9} {'MB':>6} {'x':>5} | {'gemm ms':>9} {'%rate':>5} {'x':>5} | "
              f"{'faiss ms':>9} {'MB':>6} {'x':>5}")
    print(header)
    print("-" * len(header))

    rows = []
    base_corpus, index = None, None
    for n, m, k, dtypes in cases(args):
        if base_corpus is None or base_corpus.shape[0] != n:
            base_corpus, index = None, None  # one corpus in memory at a time
            base_corpus = unit_rows(n, 0, device)
            if faiss is not None:
                index = faiss.IndexFlatIP(DIM)
                index.add(base_corpus.cpu().numpy())
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            corpus = base_corpus.to(dtype)
            queries = unit_rows(m, 1, device).to(dtype)
            row = run_case(args, util, index, queries, corpus, k, device, dtype_name, ours_peak, peaks)
            rows.append(row)
            del corpus, queries
            if on_cuda:
                torch.cuda.empty_cache()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, device_name=device_name, torch=torch.__version__, blas=blas,
                           threads=torch.get_num_threads(), gemm_gflops=peaks, results=rows), f, indent=2)
        print(f"\nwrote {args.json}")


def run_case(args, util, index, queries, corpus, k, device, dtype_name, ours_peak, peaks) -> dict:
    """Times every method on one (queries, corpus, k), prints the table line and returns its JSON row."""
    m, n = queries.shape[0], corpus.shape[0]
    flops = 2.0 * m * n * DIM
    # Long cells (CPU, or the k > 1024 sort path) are timed once after the warm-up.
    repeats = args.repeats if (flops < 2e11 or device.startswith("cuda")) and k <= 1024 else 1
    ours_ms, ours_mb, (ours_s, ours_i) = timed(
        lambda: search_topk(queries, corpus, k, score_function=dot_score), repeats, device)
    cells = {}
    if args.bf16_rescore:
        cells["bf16"] = timed(lambda: search_topk(queries, corpus, k, score_function=dot_score, bf16_rescore=True),
                              repeats, device)
        # Same answer: equal scores (indices may swap only among near-ties).
        torch.testing.assert_close(cells["bf16"][2][0], ours_s, atol=1e-5, rtol=0)
    # sentence-transformers' semantic_search walks 100,000-row corpus chunks in Python: only at moderate sizes.
    if "st" not in args.skip and (not args.gpu_table or m == 1000) and k <= 1000:
        cells["st"] = timed(lambda: util.semantic_search(queries, corpus, top_k=k, score_function=util.dot_score),
                            repeats, device)
    if "torch" not in args.skip:
        cells["torch"] = timed(lambda: torch.topk(queries @ corpus.T, k, dim=1), repeats, device)
    if "gemm" not in args.skip and device.startswith("cuda"):
        cells["gemm"] = timed(lambda: queries @ corpus.T, repeats, device)
    if index is not None and dtype_name == "fp32":
        q_np = queries.cpu().numpy()
        cells["faiss"] = timed(lambda: index.search(q_np, k), repeats, device)
    # Every method must agree with sentfuse on the scores (indices may differ on ties).
    if cells.get("torch") is not None:
        tol = AGREE[queries.dtype]
        torch.testing.assert_close(ours_s, cells["torch"][2].values.float(), atol=tol, rtol=0)
    row = dict(corpus=n, queries=m, k=k, dtype=dtype_name, sentfuse_ms=ours_ms, sentfuse_extra_mb=ours_mb,
               gemm_fraction=flops / (ours_ms * 1e6) / ours_peak)
    line = f"{n:>9} {m:>5} {k:>4} {dtype_name:>5} | {ours_ms:11.2f} {ours_mb:6.0f} {100 * row['gemm_fraction']:5.0f} |"
    if "bf16" in cells:
        row.update(bf16_rescore_ms=cells["bf16"][0], bf16_rescore_extra_mb=cells["bf16"][1])
        line += f" bf16 {cells['bf16'][0]:9.2f} {cells['bf16'][1]:6.0f} |"
    for name in ("st", "torch", "gemm", "faiss"):
        cell = cells.get(name)
        if cell is None:
            line += f" {('OOM' if name in cells else '-'):>9} {'-':>6} {'-':>5} |"
            continue
        ms, mb, _ = cell
        row.update({f"{name}_ms": ms, f"{name}_extra_mb": mb, f"speedup_vs_{name}": ms / ours_ms})
        if name == "gemm":
            row["gemm_alone_fraction"] = flops / (ms * 1e6) / peaks[dtype_name]
            line += f" {ms:9.2f} {100 * row['gemm_alone_fraction']:5.0f} {ms / ours_ms:5.2f} |"
        else:
            line += f" {ms:9.2f} {mb:6.0f} {ms / ours_ms:5.2f} |"
    print(line.rstrip("|"), flush=True)
    return row


if __name__ == "__main__":
    main()
