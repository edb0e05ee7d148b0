"""contrastive_loss (tiled, logits never kept) vs the plain formula, forward + backward, side by side.

Baselines: sentence-transformers' MultipleNegativesRankingLoss.compute_loss_from_embeddings (what its trainer
runs on the embeddings) and sentfuse.reference (the whole [B, B * (1 + n)] logits matrix, autograd keeping it).
On CUDA the peak memory each step allocates beyond its inputs is reported too.

    python benchmarks/bench_contrastive_loss.py [--device cuda] [--json out.json] [--shapes small]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from torch.utils import benchmark

from sentfuse import _ops, reference

# (batch, hard negatives per anchor, dim)
SHAPES = {"small": [(64, 1, 384), (256, 1, 384)], "all": [(64, 1, 384), (256, 1, 384), (1024, 1, 768), (4096, 3, 768)]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_isa() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    return " ".join(flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags) or "none"


def sentence_transformers_loss(symmetric: bool):
    """MNRL's loss on embeddings, or None when sentence-transformers is absent."""
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        return None
    kwargs = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if symmetric else {}
    loss = MultipleNegativesRankingLoss(None, scale=20.0, **kwargs)
    return lambda a, c: loss.compute_loss_from_embeddings([a, *c.split(a.shape[0])], None)


def step_ms_and_peak(loss_fn, anchors, candidates, min_run_time: float) -> tuple[float, float | None]:
    """Median ms of forward + backward, and (CUDA) the MiB allocated beyond the inputs at the peak of one step."""
    a = anchors.detach().requires_grad_(True)
    c = candidates.detach().requires_grad_(True)

    def step():
        return torch.autograd.grad(loss_fn(a, c), (a, c))

    step()
    peak = None
    if a.is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    timer = benchmark.Timer(stmt="step()", globals={"step": step})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds of timing per measurement")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="small")
    parser.add_argument("--symmetric", action="store_true", help="add the positives-vs-anchors term")
    args = parser.parse_args()
    device = args.device
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {device_name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu flags: {cpu_isa()}, symmetric={args.symmetric}")
    contenders = {"sentfuse": lambda a, c: _ops.contrastive_loss(a, c, 20.0, args.symmetric),
                  "reference": lambda a, c: reference.contrastive_loss(a, c, 20.0, args.symmetric)}
    st_loss = sentence_transformers_loss(args.symmetric)
    if st_loss is not None:
        contenders["sentence-transformers"] = st_loss
    header = f"{'B x (1+n) x D':>16} {'dtype':>5} " + " ".join(f"{name + ' ms':>24}" for name in contenders)
    print(header + "  (forward + backward; x = time over sentfuse's; CUDA: peak MiB beyond the inputs)")
    rows = []
    g = torch.Generator().manual_seed(0)
    for batch, negatives, dim in SHAPES[args.shapes]:
        for dtype_name, dtype in DTYPES.items():
            anchors = torch.randn(batch, dim, generator=g).to(device=device, dtype=dtype)
            candidates = torch.randn(batch * (1 + negatives), dim, generator=g).to(device=device, dtype=dtype)
            results = {name: step_ms_and_peak(fn, anchors, candidates, args.min_run_time)
                       for name, fn in contenders.items()}
            ours = results["sentfuse"][0]
            cells = []
            for ms, peak in results.values():
                cells.append(f"{ms:9.2f} {ms / ours:5.1f}x" + (f" {peak:6.0f}MiB" if peak is not None else " " * 9))
            shape = f"{batch}x{1 + negatives}x{dim}"
            print(f"{shape:>16} {dtype_name:>5} " + " ".join(f"{cell:>24}" for cell in cells))
            rows.append(dict(batch=batch, negatives=negatives, dim=dim, dtype=dtype_name,
                             **{name: dict(ms=ms, peak_mib=peak) for name, (ms, peak) in results.items()}))
            del anchors, candidates
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(device=device, device_name=device_name, torch=torch.__version__, cpu_flags=cpu_isa(),
                           threads=torch.get_num_threads(), symmetric=args.symmetric, results=rows), f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
