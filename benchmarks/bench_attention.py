"""packed_attention vs the attention it replaces (SDPA on contiguous bf16 heads + the context's transpose copy, as
FusedSelfAttention ran it), side by side in one run, on the rerank shapes (MiniLM: 12 heads x 32, a batch of
question + paragraph pairs of --width tokens with per-row lengths spread below it).

Rows alternate round by round; each row's figure is its median over --rounds, as ms and GFLOP/s of the attention
actually needed (4 x valid queries x valid keys x head size per head, the softmax not counted), beside the bf16
GEMM ceiling (gemm_ceiling.py) measured in the same run.

    python benchmarks/bench_attention.py [--rows 32 --width 256 --heads 12 --head-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bench_encode
import gemm_ceiling
import sentfuse._ops  # noqa: F401  (registers torch.ops.sentfuse)


def sdpa_path(qkv: torch.Tensor, mask: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    rows, width, _ = qkv.shape
    q, k, v = qkv.view(rows, width, 3, heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return context.transpose(1, 2).reshape(rows, width, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = bench_encode.machine(torch.device("cpu")) | {"load_average": os.getloadavg()}
    print(f"CPU: {info['cpu']}; flags: {' '.join(info['flags'])}; torch threads {torch.get_num_threads()}")
    gen = torch.Generator().manual_seed(0)
    hidden = args.heads * args.head_size
    qkv = torch.randn(args.rows, args.width, 3 * hidden, generator=gen).bfloat16()
    # lengths spread over [width / 2, width], the longest row exactly width (a bucket of pairs padded to its longest)
    lengths = torch.randint(args.width // 2, args.width + 1, (args.rows,), generator=gen)
    lengths[0] = args.width
    keep = torch.arange(args.width)[None] < lengths[:, None]
    mask = torch.zeros(args.rows, 1, 1, args.width, dtype=torch.bfloat16).masked_fill_(~keep[:, None, None], float("-inf"))
    scale = args.head_size ** -0.5
    flop = float(4 * args.heads * args.head_size * (lengths.double() ** 2).sum())
    rows = {
        "SDPA (bf16, contiguous heads)": lambda: sdpa_path(qkv, mask, args.heads, scale),
        "sentfuse packed_attention": lambda: torch.ops.sentfuse.packed_attention(qkv, lengths, args.heads, scale),
    }
    times = {name: [] for name in rows}
    with torch.inference_mode():
        for fn in rows.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in rows.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    ceiling = gemm_ceiling.ceilings()
    base = statistics.median(times[next(iter(rows))])
    print(f"{args.rows} rows x {args.width} tokens (lengths {int(lengths.min())}-{int(lengths.max())}), "
          f"{args.heads} heads x {args.head_size}; {flop / 1e9:.2f} GFLOP; load average {info['load_average'][0]:.1f}; "
          f"GEMM ceilings (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()))
    table = []
    for name, t in times.items():
        med = statistics.median(t)
        table.append({"row": name, "ms": med * 1e3, "ms_range": [min(t) * 1e3, max(t) * 1e3],
                      "gflops": flop / med / 1e9, "speedup_vs_sdpa": base / med})
        print(f"{name:<40}{med * 1e3:>9.2f} ms ({min(t) * 1e3:.2f}-{max(t) * 1e3:.2f}){flop / med / 1e9:>9.1f} GFLOP/s"
              f"{base / med:>7.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)},
                                         "rows": table, "bf16_ceiling": ceiling}, indent=2))


if __name__ == "__main__":
    main()
