"""packed_attention vs the attention it replaces (SDPA on contiguous bf16 heads + the context's transpose copy, as
FusedSelfAttention ran it), side by side in one run, on the rerank shapes (MiniLM: 12 heads x 32, a batch of
question + paragraph pairs of --width tokens with per-row lengths spread below it).

Rows alternate round by round; each row's figure is its median over --rounds, as ms and GFLOP/s of the attention
actually needed (4 x valid queries x valid keys x head size per head, the softmax not counted), beside the bf16
GEMM ceiling (gemm_ceiling.py) measured in the same run.

With --encode N: the bundled all-MiniLM-L6-v2 Encoder in bf16-mixed encoding the first N SQuAD questions (short
sequences, the encoder's shapes), with packed_attention and with SDPA (SENTFUSE_CPU_ATTENTION=sdpa at load),
alternated over --encode-rounds rounds: questions/s (median, min-max) and the min cosine between the two.

    python benchmarks/bench_attention.py [--rows 32 --width 256 --heads 12 --head-size 32] [--encode 2000]
        [--json out.json]
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
from sentfuse.model.fused_blocks import ATTENTION_ENV

QUESTIONS = Path(__file__).resolve().parents[1] / "data/squad/questions.txt"


def sdpa_path(qkv: torch.Tensor, mask: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    rows, width, _ = qkv.shape
    q, k, v = qkv.view(rows, width, 3, heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return context.transpose(1, 2).reshape(rows, width, -1)


def encode_ab(count: int, rounds: int) -> dict:
    """bf16-mixed encode of `count` questions with packed_attention and with SDPA, alternated: questions/s, min cosine."""
    from sentfuse import Encoder

    texts = [t for t in QUESTIONS.read_text(encoding="utf-8").splitlines() if t.strip()][:count]
    models = {}
    for name, forced in (("bf16-mixed, SDPA attention", "sdpa"), ("bf16-mixed, packed_attention", None)):
        if forced:
            os.environ[ATTENTION_ENV] = forced
        models[name] = Encoder(device="cpu", dtype="bf16-mixed")
        os.environ.pop(ATTENTION_ENV, None)
    rates, embeddings = {name: [] for name in models}, {}
    for name, model in models.items():
        model.encode(texts[:64], show_progress_bar=False)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            embeddings[name] = model.encode(texts, convert_to_tensor=True, show_progress_bar=False)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    a, b = embeddings.values()
    cosine = float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())
    base = statistics.median(next(iter(rates.values())))
    print(f"\nencode {len(texts)} questions, bf16-mixed, {rounds} alternated rounds; min cosine between the two "
          f"{cosine:.6f}")
    for name, r in rates.items():
        print(f"{name:<40}{statistics.median(r):>9.0f} questions/s ({min(r):.0f}-{max(r):.0f})"
              f"{statistics.median(r) / base:>7.2f}x")
    return {"questions": len(texts), "min_cosine": cosine,
            "rows": {name: {"median": statistics.median(r), "range": [min(r), max(r)]} for name, r in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--encode", type=int, default=0, metavar="N", help="also A/B bf16-mixed encode of N questions")
    parser.add_argument("--encode-rounds", type=int, default=3)
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
          f"GEMM ceilings (GFLOP/s): " + gemm_ceiling.summary(ceiling))
    table = []
    for name, t in times.items():
        med = statistics.median(t)
        table.append({"row": name, "ms": med * 1e3, "ms_range": [min(t) * 1e3, max(t) * 1e3],
                      "gflops": flop / med / 1e9, "speedup_vs_sdpa": base / med})
        print(f"{name:<40}{med * 1e3:>9.2f} ms ({min(t) * 1e3:.2f}-{max(t) * 1e3:.2f}){flop / med / 1e9:>9.1f} GFLOP/s"
              f"{base / med:>7.2f}x")
    encode = encode_ab(args.encode, args.encode_rounds) if args.encode else None
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)},
                                         "rows": table, "gemm_ceilings": ceiling, "encode": encode}, indent=2))


if __name__ == "__main__":
    main()
