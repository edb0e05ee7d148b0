"""Where an encode call's wall time goes on a GPU: torch.profiler over one Encoder.encode call of SQuAD
questions (random weights with all-MiniLM-L6-v2's shapes), printing the device-busy share of wall time (the
GPU issue's goal: >= 70%), the top host and device ops, and a cProfile of the thread that feeds the GPU over one
more call, so the host side's cost can be read off.

    python benchmarks/profile_encode.py --device cuda --json out.json [--trace trace.json]
nsys is not on the lent machines; the profiler's CUDA activity tells host-bound from device-bound.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_encode import DATA, device_busy_seconds, load_texts, random_stand_in

import sentfuse

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def host_profile(encoder, texts: list[str], cuda: bool, rows: int) -> str:
    """cProfile of the calling thread over one more encode call: where the thread that feeds the GPU spends
    its time (waiting for a tokenized chunk shows as Future.result / Condition.wait, the batch gather as
    TokenStore.gather, launches and copies as their torch calls). The tokenizer threads are not in it."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    encoder.encode(texts, show_progress_bar=False)
    if cuda:
        torch.cuda.synchronize()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write("calling thread of one encode call (cProfile), by own time:\n")
    stats.sort_stats("tottime").print_stats(rows)
    out.write("by cumulative time:\n")
    stats.sort_stats("cumulative").print_stats(rows)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=20000, help="questions encoded in the profiled call")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    parser.add_argument("--host-rows", type=int, default=15, help="functions listed by the host profile")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")

    texts = load_texts(args.data, {"questions": args.limit})["questions"]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = sentfuse.Encoder(str(random_stand_in(Path(tmp), args.data)), device=args.device,
                                   dtype=DTYPES[args.dtype])
    encoder.encode(texts, show_progress_bar=False)  # warm-up: every shape captured, tokenizer threads started
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        encoder.encode(texts, show_progress_bar=False)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    busy = device_busy_seconds(prof) / wall if cuda else None
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=20)
    print(table)
    print(f"encode {len(texts):,} questions ({args.dtype}, {args.device}): {wall:.3f} s, "
          f"{len(texts) / wall:,.0f} sentences/s" + (f", device busy {busy:.1%} of wall time (goal >= 70%)" if cuda else ""))
    host = host_profile(encoder, texts, cuda, args.host_rows)
    print(host)
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    if args.json:
        name = torch.cuda.get_device_name() if cuda else "cpu"
        args.json.write_text(json.dumps({"device": name, "texts": len(texts), "dtype": args.dtype, "wall_s": wall,
                                         "sentences_per_s": len(texts) / wall, "device_busy": busy,
                                         "top_ops": table, "host_functions": host}, indent=1))


if __name__ == "__main__":
    main()
