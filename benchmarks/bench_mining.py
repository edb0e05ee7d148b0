"""Paraphrase mining, community detection and threshold pairs: sentfuse vs sentence-transformers, side by side.

Normalized 384-d embeddings: random rows with planted clusters (members at several spreads around
random centers, so pair scores cross the thresholds at many levels), and optionally real SQuAD
question embeddings (encoded once with the bundled model and cached under --cache). Reported per
operation: seconds (the fastest of --rounds, sentfuse and the other side alternated), peak extra resident
memory during the first call (sampled every millisecond after returning freed memory to the OS), and
sentence-transformers' time over sentfuse's (with --rounds > 1, also the range of per-round ratios). threshold_pairs
(the plain kernel) and prefix_bound.self_pairs (the same pairs, with the prefix-bound first pass where its
cost model expects a saving; the check column says which pass it chose) are compared with a chunked
torch.mm + mask baseline. sentence-transformers is skipped where its estimated time exceeds
--st-limit seconds, and both it and the baseline above --other-max rows. On a GPU (--device cuda) the rows
live on the device, times include a synchronize and memory is the allocator's peak.

    python benchmarks/bench_mining.py [--sizes 20000 100000] [--data planted squad] [--rounds 3] [--json out.json]
    python benchmarks/bench_mining.py --device cuda --sizes 100000 1000000 --data planted --other-max 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from bench_topk import gemm_gflops
from peak_memory import peak_memory
from sentfuse import _ops
from sentfuse.search import community_detection, paraphrase_mining_embeddings, prefix_bound

DIM = 384
QUESTIONS = Path(__file__).resolve().parents[1] / "data/squad/questions.txt"


def planted(rows: int, seed: int = 0) -> torch.Tensor:
    """Unit rows: half in clusters of 2..200 members around random centers, half noise."""
    g = torch.Generator().manual_seed(seed)
    clustered = rows // 2
    sizes = []
    while sum(sizes) < clustered:
        sizes.append(int(torch.randint(2, 201, (1,), generator=g)))
    sizes[-1] -= sum(sizes) - clustered
    centers = torch.nn.functional.normalize(torch.randn(len(sizes), DIM, generator=g), dim=1)
    spreads = torch.tensor([0.3, 0.45, 0.6, 0.8])[torch.randint(0, 4, (len(sizes),), generator=g)]
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    members = centers[owner] + spreads[owner, None] * torch.randn(clustered, DIM, generator=g) / DIM**0.5
    x = torch.cat([members, torch.randn(rows - clustered, DIM, generator=g)])
    return torch.nn.functional.normalize(x[torch.randperm(rows, generator=g)], dim=1).contiguous()


def squad(rows: int, cache: Path, questions: Path = QUESTIONS) -> torch.Tensor:
    """Unit embeddings of the first `rows` questions of the file (all of them if fewer), cached as .npy."""
    texts = questions.read_text(encoding="utf-8").splitlines()[:rows]
    path = cache / f"{questions.stem}-{len(texts)}.npy"
    if not path.exists():
        from sentfuse import Encoder

        start = time.perf_counter()
        embeddings = Encoder().encode(texts, batch_size=64, normalize_embeddings=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, embeddings.astype(np.float32))
        print(f"encoded {len(texts)} SQuAD questions in {time.perf_counter() - start:.0f} s -> {path}")
    return torch.from_numpy(np.load(path))


def measured(fn, device: str = "cpu") -> tuple[float, float, object]:
    """(seconds, peak extra MB, result) of one call, its device work included."""
    with peak_memory(device) as mem:
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, mem.extra_mb, result


def mm_mask_pairs(x: torch.Tensor, threshold: float, chunk: int = 2048):
    """Baseline for threshold_pairs(x, None, ...): chunked x @ x.T, mask >= threshold, keep i < j."""
    rows, cols, scores = [], [], []
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk] @ x[start:].T
        block.triu_(1)  # only j > i: column c of this block is row start + c
        r, c = torch.nonzero(block >= threshold, as_tuple=True)
        scores.append(block[r, c])
        rows.append(r + start)
        cols.append(c + start)
    return torch.cat(rows), torch.cat(cols), torch.cat(scores)


def agree_threshold_pairs(ours, theirs) -> str:
    """Both lists are in (row, col) order; pairs within float rounding of the threshold may differ."""
    if torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]):
        return f"same {len(ours[0])} pairs"
    n = int(max(ours[1].max(), theirs[1].max())) + 1 if len(ours[0]) and len(theirs[0]) else 1
    a, b = set((ours[0] * n + ours[1]).tolist()), set((theirs[0] * n + theirs[1]).tolist())
    return f"{len(a)} vs {len(b)} pairs, {len(a ^ b)} differ"


def agree_pairs(ours, theirs, x: torch.Tensor, top_k: int = 100) -> str:
    """[score, i, j] lists compared as sets of pairs. Pairs in one list only are expected where rounding
    decides: near-ties with a row's top_k-th score (sentence-transformers ranks by its fp32 GEMM's scores,
    sentfuse by its exact fp32 scores, lower index first on equal ones), or with the cut of a full list."""
    a = {(min(i, j), max(i, j)): s for s, i, j in ours}
    b = {(min(i, j), max(i, j)): s for s, i, j in theirs}
    common = a.keys() & b.keys()
    gap = max((abs(a[p] - b[p]) for p in common), default=0.0)
    only = [(p, s) for p, s in a.items() if p not in common] + [(p, s) for p, s in b.items() if p not in common]
    pairs = f"same {len(common)} pairs" if not only else f"{len(common)} common pairs, {len(only)} in one list only"
    if only:
        cut = max(min(a.values()), min(b.values()))
        rows = sorted({r for p, _ in only for r in p})
        exact = torch.nn.functional.normalize(x.double(), dim=1)
        scores = exact[rows] @ exact.T  # fp64 scores of the rows involved
        scores[torch.arange(len(rows)), rows] = -float("inf")
        kth = dict(zip(rows, scores.topk(min(top_k, len(x) - 1), dim=1).values[:, -1].tolist()))
        at_kth = sum(min(abs(s - kth[i]), abs(s - kth[j])) <= 2e-6 for (i, j), s in only)
        at_cut = sum(abs(s - cut) <= 2e-6 for _, s in only)
        pairs += (f" ({at_kth} within 2e-6 of a row's top_k-th score, {at_cut} of the cut score {cut:.6f}, "
                  f"{sum(min(abs(s - kth[i]), abs(s - kth[j]), abs(s - cut)) > 2e-6 for (i, j), s in only)} neither)")
    return f"{pairs} ({len(a)} vs {len(b)}; common scores within {gap:.1e})"


def prune_choice(x: torch.Tensor, threshold: float) -> str:
    """Which first pass prefix_bound.self_pairs' cost model picks for x (not timed)."""
    plan = prefix_bound.first_pass(x, threshold)
    return "plain kernel" if plan is None else f"prefix {plan[1]}, predicted {plan[2]:.2%} candidates"


def agree_communities(ours, theirs) -> str:
    same = [len(c) for c in ours] == [len(c) for c in theirs] and all(
        a[0] == b[0] and sorted(a) == sorted(b) for a, b in zip(ours, theirs))
    if same:
        return f"same {len(ours)} communities"
    # How far apart: communities compared as sets, and the rows they hold.
    a, b = {frozenset(c) for c in ours}, {frozenset(c) for c in theirs}
    if a == b:
        return f"DIFFERENT order or centres, same {len(a)} member sets"
    rows = set().union(*(a - b), *(b - a))
    return (f"DIFFERENT {len(ours)} vs {len(theirs)} communities: {len(a - b)} vs {len(b - a)} not in the other "
            f"list, holding {len(rows)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--data", nargs="+", choices=("planted", "squad"), default=["planted", "squad"])
    parser.add_argument("--threshold", type=float, default=0.75, help="community detection / pairs threshold")
    parser.add_argument("--min-size", type=int, default=10, help="min_community_size")
    parser.add_argument("--st-limit", type=float, default=180.0, help="skip ST calls estimated to take longer (s)")
    parser.add_argument("--st-skip", nargs="*", default=[], choices=("paraphrase_mining", "community_detection"),
                        help="operations whose sentence-transformers run is left out")
    parser.add_argument("--other-max", type=int, default=None,
                        help="run sentence-transformers and the mm+mask baseline only up to this many rows")
    parser.add_argument("--device", default="cpu", help="where the embeddings live: cpu or cuda")
    parser.add_argument("--cpu-check", type=int, default=0, metavar="N",
                        help="on a GPU, also run sentfuse on a CPU copy of inputs of up to N rows and compare")
    parser.add_argument("--questions", type=Path, default=QUESTIONS,
                        help="questions file for --data squad, one per line (e.g. the full SQuAD set)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sentfuse-bench"), help="folder for SQuAD embeddings")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per operation, sentfuse and the other side alternated; each side's fastest counts")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import sentence_transformers
    from sentence_transformers import util

    st_version = tuple(int(p) for p in re.findall(r"\d+", sentence_transformers.__version__)[:2])

    device = args.device
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    gflops = gemm_gflops(device)
    print(f"device: {device_name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"measured fp32 GEMM throughput: {gflops:.1f} GFLOP/s")
    print(f"community detection: threshold {args.threshold}, min_community_size {args.min_size}; "
          "paraphrase mining: ST defaults (top_k 100, max_pairs 500000)")
    # 6.0.1 (the H200 run) counted max_pairs before dropping the (j, i) twin of each (i, j) pair and returned
    # about half as many pairs; 6.2.0 keeps max_pairs distinct pairs, as sentfuse does.
    # Before 6.2 community_detection also kept a proposal whose centre an earlier (larger) community had taken
    # (6.0.1's answer on 100,000 planted rows: 485 communities, 6.2's and sentfuse's: 419, on CPU and GPU alike).
    print(f"sentence-transformers {sentence_transformers.__version__}"
          + ("" if st_version >= (6, 2) else ": an older paraphrase_mining that returns fewer than max_pairs "
             "distinct pairs, and an older community_detection that keeps proposals whose centre is taken; "
             "sentfuse follows 6.2") + "\n")
    header = (f"{'data':>7} {'N':>7} {'operation':<22} | {'sentfuse s':>10} {'MB':>6} | {'other':<10} {'s':>8} "
              f"{'MB':>6} | {'x':>5} | check")
    print(header)
    print("-" * len(header))

    # Warm-up: thread pools, allocator, and on a GPU the fused pair scan and the top-k kernels.
    warm = planted(20_000 if device.startswith("cuda") else 2000).to(device)
    community_detection(warm, args.threshold, args.min_size)
    paraphrase_mining_embeddings(warm)
    results = []
    for data in args.data:
        for size in args.sizes:
            x = planted(size) if data == "planted" else squad(size, args.cache, args.questions)
            x = x.to(device)
            n = len(x)
            run_other = args.other_max is None or n <= args.other_max
            # ST computes the full n x n scores with torch.mm, then topk / Python work on top of them.
            st_estimate = 3 * 2 * n * n * DIM / (gflops * 1e9)
            # sentfuse's side takes the rows as an argument: --cpu-check runs it again on a CPU copy.
            cases = [
                ("paraphrase_mining", paraphrase_mining_embeddings,
                 "ST", lambda: util.paraphrase_mining_embeddings(x), lambda ours, theirs: agree_pairs(ours, theirs, x)),
                ("community_detection", lambda t: community_detection(t, args.threshold, args.min_size),
                 "ST", lambda: util.community_detection(x, args.threshold, args.min_size), agree_communities),
                ("threshold_pairs " + str(args.threshold),
                 lambda t: _ops.threshold_pairs(t, None, args.threshold, metric="dot"),
                 "mm+mask", lambda: mm_mask_pairs(x, args.threshold), agree_threshold_pairs),
                ("self_pairs " + str(args.threshold), lambda t: prefix_bound.self_pairs(t, args.threshold),
                 "mm+mask", lambda: mm_mask_pairs(x, args.threshold),
                 lambda ours, theirs: f"{agree_threshold_pairs(ours, theirs)}; {prune_choice(x, args.threshold)}"),
            ]
            cpu_check = device != "cpu" and n <= args.cpu_check
            for name, ours_on, other_name, other_fn, check in cases:
                ours_fn = lambda f=ours_on: f(x)  # noqa: E731
                ours_s, ours_mb, ours = measured(ours_fn, device)
                row = dict(data=data, n=n, operation=name, sentfuse_s=ours_s, sentfuse_extra_mb=ours_mb,
                           other=other_name)
                skipped = None
                if not run_other:
                    skipped = (f"{n} rows > --other-max {args.other_max}", "over --other-max")
                elif other_name == "ST" and name in args.st_skip:
                    skipped = ("--st-skip", "--st-skip")
                elif other_name == "ST" and st_estimate > args.st_limit:
                    skipped = (f"estimated {st_estimate:.0f} s > --st-limit {args.st_limit:.0f} s",
                               f"ST estimated {st_estimate:.0f} s, over --st-limit")
                if skipped:
                    ours_all = [ours_s] + [measured(ours_fn, device)[0] for _ in range(args.rounds - 1)]
                    row.update(sentfuse_s=min(ours_all), sentfuse_s_rounds=ours_all, other_skipped=skipped[0])
                    line = (f"{data:>7} {n:>7} {name:<22} | {min(ours_all):10.2f} {ours_mb:6.0f} | {other_name:<10} "
                            f"{'skipped':>8} {'-':>6} | {'-':>5} | {skipped[1]}")
                else:
                    # Rounds alternate sentfuse and the other side, so that load drifting on a shared machine
                    # reaches both; the figures are each side's fastest round, and the range of per-round ratios.
                    other_s, other_mb, other = measured(other_fn, device)
                    ours_all, other_all = [ours_s], [other_s]
                    for _ in range(args.rounds - 1):
                        ours_all.append(measured(ours_fn, device)[0])
                        other_all.append(measured(other_fn, device)[0])
                    ratios = [o / s for o, s in zip(other_all, ours_all)]
                    verdict = check(ours, other)
                    best, best_other = min(ours_all), min(other_all)
                    row.update(sentfuse_s=best, other_s=best_other, other_extra_mb=other_mb, speedup=best_other / best,
                               sentfuse_s_rounds=ours_all, other_s_rounds=other_all,
                               speedup_range=[min(ratios), max(ratios)], check=verdict)
                    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if args.rounds > 1 else ""
                    line = (f"{data:>7} {n:>7} {name:<22} | {best:10.2f} {ours_mb:6.0f} | {other_name:<10} "
                            f"{best_other:8.2f} {other_mb:6.0f} | {best_other / best:5.2f}{spread} | {verdict}")
                if cpu_check:
                    start = time.perf_counter()
                    row["cpu_check"] = check(ours, ours_on(x.cpu()))
                    line += f"; sentfuse on CPU ({time.perf_counter() - start:.1f} s): {row['cpu_check']}"
                print(line, flush=True)
                results.append(row)
            del x

    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, torch=torch.__version__, threads=torch.get_num_threads(),
                           gemm_gflops=gflops, threshold=args.threshold, min_size=args.min_size, results=results), f,
                      indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
