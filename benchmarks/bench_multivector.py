"""MaxSim top-k: sentfuse's maxsim_topk vs sentence-transformers' util.maxsim (default chunk_elements) + torch.topk.

100 queries of 32 token vectors against 10,000 documents whose token counts are those of the SQuAD paragraphs
shipped in data/squad (all-MiniLM-L6-v2's tokenizer, repeated to 10,000), random unit vectors of dim 128.
sentence-transformers gets the documents as a list of [n_i, 128] tensors (its multi-vector encode output),
sentfuse gets them packed [sum n_i, 128] with offsets. Times are medians of --repeat runs after a warm-up on
a slice; peak extra memory is resident memory above the level before each call (sampled every millisecond),
or the CUDA allocator's peak. Answers are checked: top-10 scores within the dtype's tolerance, and the
share of top-10 indices equal to sentence-transformers' (bf16 rounding reorders near-ties).

    python benchmarks/bench_multivector.py [--device cpu] [--dtype float32 bfloat16] [--json out.json]

--encode measures the other goal instead: encode_document of the 1,000 shipped paragraphs with a MultiVectorEncoder
folder that sentence-transformers builds on all-MiniLM-L6-v2's backbone (a random 384 -> 128 token projection, the
punctuation skiplist ColBERT uses, normalized), sentfuse vs sentence-transformers in fp32, in alternating rounds.

    python benchmarks/bench_multivector.py --encode [--rounds 3] [--json out.json]

The path column says which sentfuse kernel ran: float32 inputs take the bf16 scan + exact fp32 rescoring
(csrc/cpu/maxsim_bf16.h) on CPUs with AMX (cpu_features.maxsim_bf16_default(), SENTFUSE_CPU_MAXSIM=bf16|fp32),
else the fp32 tiles; 16-bit inputs take tiles in their own dtype.

--bound sizes that bf16 scan's candidates with a Python model of its bound: on the same collection it prints
how many candidates per query the rescoring takes for the top-k under two provable bounds on |fp32 MaxSim - bf16-input MaxSim| (fp32 accumulation): the
worst case for unit vectors, n_q (2u + u^2 + D 2^-23), and one from each token's actual rounding error,
sum_t |q_t - bf16(q_t)| max_s |d_s| + |bf16(q_t)| max_s |d_s - bf16(d_s)| (+ the accumulation terms).

    python benchmarks/bench_multivector.py --bound --docs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_splade import machine  # noqa: E402
from peak_memory import peak_memory  # noqa: E402

from sentfuse import _ops, cpu_features  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data" / "squad" / "paragraphs.jsonl"


def paragraph_lengths() -> list[int]:
    """Token counts of the shipped paragraphs under all-MiniLM-L6-v2's tokenizer, or, without the bundled model
    (the GPU machine), under bench_encode's stand-in tokenizer trained on the same data (close counts)."""
    from transformers import AutoTokenizer

    try:
        from sentfuse.model.resolve import bundled_model_path

        tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    except ImportError:
        import tempfile

        import bench_encode

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = bench_encode.stand_in_tokenizer(Path(tmp), DATA.parent)
        print("token counts from a stand-in tokenizer trained on the data (no bundled all-MiniLM-L6-v2 here)")
    texts = [json.loads(line)["text"] for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]


def collection(num_docs: int, num_queries: int, query_tokens: int, dim: int, device: str, dtype: torch.dtype):
    lengths = paragraph_lengths()
    lengths = (lengths * (num_docs // len(lengths) + 1))[:num_docs]
    g = torch.Generator().manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(sum(lengths), dim, generator=g), dim=-1).to(device, dtype)
    queries = torch.nn.functional.normalize(torch.randn(num_queries, query_tokens, dim, generator=g), dim=-1)
    offsets = torch.zeros(num_docs + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    return queries.to(device, dtype), docs, offsets.to(device), lengths


def timed(fn, repeat: int, device: str):
    """(median seconds, peak extra MB of the first timed run, result)."""
    times, extra = [], None
    for i in range(repeat):
        with peak_memory(device) as mem:
            start = time.perf_counter()
            result = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        extra = mem.extra_mb if i == 0 else extra
    return sorted(times)[len(times) // 2], extra, result


def sentfuse_path(device: str, dtype: torch.dtype) -> str:
    """The maxsim_topk kernel that runs for these inputs (see the module docstring)."""
    if device != "cpu" or dtype != torch.float32:
        return f"{str(dtype).removeprefix('torch.')} tiles"
    return "bf16 scan + fp32 rescore" if cpu_features.maxsim_bf16_default() else "fp32 tiles"


def bench(device: str, dtype: torch.dtype, args) -> dict:
    from sentence_transformers import util as st_util

    queries, docs, offsets, lengths = collection(args.docs, args.queries, args.query_tokens, args.dim, device, dtype)
    doc_list = list(torch.split(docs, lengths))  # views: what encode returns, without copies
    k = args.k

    def ours(n=len(lengths)):
        return _ops.maxsim_topk(queries, docs[: offsets[n]], offsets[: n + 1], k)

    def theirs(n=len(lengths)):
        return torch.topk(st_util.maxsim(queries, doc_list[:n]), min(k, n), dim=1)

    ours(200), theirs(200)  # warm-up on a slice
    ours_s, ours_mb, (scores, ids) = timed(ours, args.repeat, device)
    theirs_s, theirs_mb, expected = timed(theirs, args.repeat, device)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    same_scores = torch.allclose(scores.cpu(), expected.values.cpu(), rtol=tol, atol=tol)
    ids_match = float((ids.cpu() == expected.indices.cpu()).float().mean())
    return {"device": device, "dtype": str(dtype).removeprefix("torch."), "queries": args.queries,
            "query_tokens": args.query_tokens, "docs": args.docs, "doc_tokens": int(offsets[-1]), "dim": args.dim,
            "k": k, "path": sentfuse_path(device, dtype), "load_average": os.getloadavg(), "sentfuse_s": ours_s, "st_s": theirs_s, "speedup": theirs_s / ours_s,
            "sentfuse_extra_mb": ours_mb, "st_extra_mb": theirs_mb,
            "memory_ratio": theirs_mb / max(ours_mb, 1e-3), "same_scores": same_scores, "ids_match": ids_match}


def colbert_folder(out: Path) -> Path:
    """A MultiVectorEncoder folder saved by sentence-transformers: all-MiniLM-L6-v2 + a 128-dim projection."""
    import string

    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    from sentfuse.model.resolve import bundled_model_path

    torch.manual_seed(0)
    modules = [Transformer(str(bundled_model_path())),
               Dense(384, 128, bias=False, activation_function=torch.nn.Identity(), module_input_name="token_embeddings"),
               MultiVectorMask(skiplist_words=list(string.punctuation)), Normalize(module_input_name="token_embeddings")]
    STMultiVectorEncoder(modules=modules, device="cpu").save(str(out))
    return out


def bench_encode(args) -> dict:
    """Alternating rounds of encode_document over the paragraphs: sentfuse, then sentence-transformers (each round
    printed as it ends: on a loaded machine a run is long)."""
    import tempfile

    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from sentfuse import MultiVectorEncoder

    texts = [json.loads(line)["text"] for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = texts[: args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        folder = colbert_folder(Path(tmp) / "colbert")
        models = {"sentfuse": MultiVectorEncoder(folder, device="cpu"), "st": STMultiVectorEncoder(str(folder), device="cpu")}
    for model in models.values():
        model.encode_document(texts[:64])  # warm-up
    print(f"machine: {machine('cpu')}; load average {os.getloadavg()[0]:.2f}")
    print(f"encode_document of {len(texts)} SQuAD paragraphs, fp32, sentfuse vs sentence-transformers", flush=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    out = {}
    for i in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            out[name] = model.encode_document(texts)
            times[name].append(time.perf_counter() - start)
        print(f"  round {i + 1}: sentfuse {times['sentfuse'][-1]:6.2f} s  sentence-transformers {times['st'][-1]:6.2f} s"
              f"  {times['st'][-1] / times['sentfuse'][-1]:5.2f}x  (load average {os.getloadavg()[0]:.2f})", flush=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(out["sentfuse"], out["st"]))
    same_shapes = all(a.shape == b.shape for a, b in zip(out["sentfuse"], out["st"]))
    ratios = [t / s for s, t in zip(times["sentfuse"], times["st"])]
    return {"texts": len(texts), "tokens": sum(len(t) for t in out["st"]), "dim": out["st"][0].shape[1],
            "sentfuse_s": times["sentfuse"], "st_s": times["st"], "speedup_per_round": ratios,
            "speedup_median": statistics.median(ratios), "max_abs_diff": diff, "same_shapes": same_shapes,
            "load_average": os.getloadavg()}


def main_encode(args) -> None:
    row = bench_encode(args)
    print(f"{row['tokens']} scored tokens of dim {row['dim']}: speedup median {row['speedup_median']:.2f}x (range "
          f"{min(row['speedup_per_round']):.2f}-{max(row['speedup_per_round']):.2f}x); max |difference| "
          f"{row['max_abs_diff']:.2e}, same token counts: {row['same_shapes']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine("cpu"), "encode": row}, indent=2) + "\n")


def bound_candidates(args) -> dict:
    """Candidates per query for the top-k of a bf16 scan under the worst-case and the per-token bound."""
    queries, docs, offsets, lengths = collection(args.docs, args.queries, args.query_tokens, args.dim, "cpu",
                                                 torch.float32)
    qb, db = queries.bfloat16().float(), docs.bfloat16().float()
    exact = _ops.maxsim(queries, docs, offsets)
    approx = _ops.maxsim(qb, db, offsets)  # what bf16 tiles accumulated in fp32 give
    u, gamma = 2.0**-8, 1.01 * args.dim * 2.0**-23
    doc_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

    def doc_max(x):
        return torch.zeros(len(lengths)).scatter_reduce(0, doc_of, x, "amax")

    d_max, e_max = doc_max(docs.norm(dim=-1)), doc_max((docs - db).norm(dim=-1))
    q_err, q_norm = (queries - qb).norm(dim=-1).sum(1, keepdim=True), qb.norm(dim=-1).sum(1, keepdim=True)
    bounds = {"worst case": torch.full_like(approx, 1.01 * (2 * u + u * u + 2 * gamma) * args.query_tokens),
              "per token": 1.01 * (q_err * d_max + q_norm * e_max + 2 * gamma * q_norm * d_max)}
    row = {"docs": args.docs, "k": args.k, "max_error": float((exact - approx).abs().max())}
    for name, bound in bounds.items():
        assert bool(((exact - approx).abs() <= bound).all()), f"the {name} bound does not hold"
        kth = (approx - bound).topk(args.k, dim=1).values[:, -1:]
        count = (approx + bound >= kth).sum(1).float()
        row[name] = {"mean_bound": float(bound.mean()), "candidates_mean": float(count.mean()),
                     "candidates_max": int(count.max())}
        print(f"{name:>10}: bound {row[name]['mean_bound']:.4f} (observed error at most {row['max_error']:.4f}); "
              f"candidates per query for the top-{args.k} of {args.docs}: mean {count.mean():.1f}, max {count.max():.0f}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--encode", action="store_true", help="measure the end-to-end encode goal instead")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --encode")
    parser.add_argument("--texts", type=int, default=1000, help="paragraphs --encode encodes (all 1,000 by default)")
    parser.add_argument("--bound", action="store_true", help="size a bf16 scan with exact rescoring instead")
    args = parser.parse_args()
    if args.bound:
        print(f"machine: {machine(args.device)}")
        row = bound_candidates(args)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(args.device), "bound": row}, indent=2) + "\n")
        return
    if args.encode:
        main_encode(args)
        return
    print(f"machine: {machine(args.device)}")
    print(f"{'dtype':>9} {'sentfuse s':>11} {'ST s':>9} {'speedup':>8} {'sentfuse MB':>12} {'ST MB':>9} "
          f"{'mem ratio':>9} {'scores ok':>9} {'ids match':>9}  sentfuse path")
    rows = []
    for name in args.dtype:
        row = bench(args.device, getattr(torch, name), args)
        rows.append(row)
        print(f"{row['dtype']:>9} {row['sentfuse_s']:11.2f} {row['st_s']:9.2f} {row['speedup']:7.1f}x "
              f"{row['sentfuse_extra_mb']:12.1f} {row['st_extra_mb']:9.1f} {row['memory_ratio']:8.1f}x "
              f"{str(row['same_scores']):>9} {row['ids_match']:9.1%}  {row['path']} (load average "
              f"{row['load_average'][0]:.1f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
