"""sentfuse.distributed on a local Ray cluster vs the same work in one process, on the same machine.

encode: rows/s of encode_dataset (Parquet shards in, Parquet shards out, one actor per --cpus-per-worker
CPUs) vs one Encoder.encode call over the same texts (model already loaded). The encode_dataset time is
the whole call: the model-identity task, actor start and model load, reading, encoding, writing and
checksumming; the start-up part is also measured alone, on a one-row input.
search: distributed.search over the shards vs sentfuse.search_topk over the concatenated embeddings
(results checked equal). Texts: --data (one a line; default the shipped SQuAD questions) repeated up to
--rows.

    python benchmarks/bench_distributed.py --rows 50000 --shards 10 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from bench_encode import machine

import sentfuse
from sentfuse import distributed
from sentfuse.distributed.shards import read_embeddings

DATA = Path(__file__).resolve().parent.parent / "data" / "squad" / "questions.txt"


def write_shards(texts: list[str], folder: Path, shards: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(pa.table({"text": texts[a:b]}), folder / f"part-{i:04d}.parquet")
    return str(folder / "*.parquet")


def seconds(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_encode(args, texts: list[str], work: Path) -> tuple[dict, np.ndarray]:
    encoder = sentfuse.Encoder(args.model, dtype=args.dtype)
    single_s, single = seconds(lambda: encoder.encode(texts, normalize_embeddings=True))
    pattern = write_shards(texts, work / "in", args.shards)
    options = dict(model=args.model, dtype=args.dtype, normalize_embeddings=True,
                   cpus_per_worker=args.cpus_per_worker)
    startup_s, _ = seconds(lambda: distributed.encode_dataset(
        write_shards(texts[:1], work / "one", 1), work / "one-out", **options))
    dist_s, result = seconds(lambda: distributed.encode_dataset(pattern, work / "out", **options))
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    got = np.concatenate([read_embeddings(work / "out" / s["output"]) for s in manifest["shards"]])
    cos = float((got * single).sum(1).min())
    row = {"rows": len(texts), "shards": args.shards, "single_s": single_s, "single_rows_s": len(texts) / single_s,
           "distributed_s": dist_s, "distributed_rows_s": result.rows / dist_s, "startup_s": startup_s,
           "overhead": dist_s / single_s - 1, "overhead_after_startup": (dist_s - startup_s) / single_s - 1,
           "min_cos": cos}
    return row, single


def same_up_to_ties(got: tuple, want: tuple, tol: float = 1e-5) -> bool:
    """Both top-k lists hold the same hits, except that hits whose scores tie (within tol, the fp32 rounding of
    per-shard GEMMs) may come in either order, and a tie at the k-th place may be cut either way."""
    (gs, gi), (ws, wi) = got, want
    if not torch.allclose(gs, ws, atol=tol, rtol=0):
        return False
    for g_ids, w_ids, scores in zip(gi.tolist(), wi.tolist(), ws.tolist()):
        start = 0
        for end in range(1, len(scores) + 1):
            if end == len(scores) or scores[end - 1] - scores[end] > tol:  # a run of tied scores ends
                if end < len(scores) and set(g_ids[start:end]) != set(w_ids[start:end]):
                    return False
                start = end
    return True


def bench_search(args, corpus: np.ndarray, work: Path) -> dict:
    queries = torch.from_numpy(corpus[:: max(1, len(corpus) // args.queries)][: args.queries].copy())
    single_s, want = seconds(lambda: sentfuse.search_topk(queries, torch.from_numpy(corpus), args.k))
    dist_s, got = seconds(lambda: distributed.search(queries, work / "out", args.k))
    return {"queries": len(queries), "k": args.k, "single_s": single_s, "distributed_s": dist_s,
            "same_indices": bool(torch.equal(got[1], want[1])), "same_up_to_ties": same_up_to_ties(got, want),
            "max_score_diff": float((got[0] - want[0]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="texts, one a line")
    parser.add_argument("--rows", type=int, default=50_000, help="texts encoded (--data repeated as needed)")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--dtype", default=None, help="backbone dtype (float32, bfloat16, float16)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--cpus-per-worker", type=int, default=None, help="CPUs per encode actor (default: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    lines = args.data.read_text(encoding="utf-8").splitlines()
    texts = (lines * (args.rows // len(lines) + 1))[: args.rows]
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    info = machine(torch.device("cpu"))
    print(f"machine: {info['cpu']}, {info['cpus']} CPUs, torch {info['torch']} ({info['threads']} threads), "
          f"cpu capability {info['cpu_capability']}; ray {ray.__version__}, local cluster "
          f"{ray.cluster_resources().get('CPU')} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        encode, corpus = bench_encode(args, texts, work)
        print(f"encode {encode['rows']} texts in {encode['shards']} shards, model {args.model or 'all-MiniLM-L6-v2'}"
              f" ({args.dtype or 'checkpoint dtype'}):")
        print(f"  one Encoder.encode call   {encode['single_s']:8.2f} s  {encode['single_rows_s']:8.1f} rows/s")
        print(f"  encode_dataset (Ray)      {encode['distributed_s']:8.2f} s  {encode['distributed_rows_s']:8.1f} rows/s"
              f"  overhead {encode['overhead']:+.1%} (start-up {encode['startup_s']:.1f} s; without it "
              f"{encode['overhead_after_startup']:+.1%}); min cos {encode['min_cos']:.6f}")
        search = bench_search(args, corpus, work)
        print(f"search {search['queries']} queries, k={search['k']}, over {encode['rows']} rows:")
        print(f"  sentfuse.search_topk      {search['single_s']:8.2f} s")
        print(f"  distributed.search        {search['distributed_s']:8.2f} s  (same hits up to ties: {search['same_up_to_ties']},"
              f" max score diff {search['max_score_diff']:.1e})")
    ray.shutdown()
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "ray": ray.__version__, "encode": encode,
                                         "search": search}, indent=1))


if __name__ == "__main__":
    main()
