"""`sentfuse mine` (near-duplicate pairs) and `sentfuse cluster` (communities) over the items of one file.

Blank items are skipped; every other item keeps its number (item i is line i + 1 of a text file),
so the numbers printed are those of the input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from .args import add_input_options, add_model_options, cosine, plural, positive
from .inputs import Items, read_items, shown
from .model import load_encoder

# mine's --threshold admits scores this many float32 steps below it: a text and its exact copy score
# 0.99999994, not 1, after rounding, and `--threshold 1` must still find them. (The library compares
# exactly, as sentence-transformers does.)
THRESHOLD_ULPS = 4
NUMBERING = " Items are numbered from 0 (item i is line i + 1 of a text file); blank lines are skipped."


def add_parsers(commands: argparse._SubParsersAction) -> None:
    mine = _add_command(
        commands, "mine", run_mine, help="find near-duplicate pairs among the lines of a file",
        description="Embed every item of a text or .jsonl file and print the pairs scoring at least --threshold "
        "(cosine), best first, with both texts side by side. Each item's --top-k most similar items are the "
        "candidates, as in sentence-transformers' paraphrase_mining.",
    )
    mine.add_argument("--threshold", type=cosine, default=0.9,
                      help=f"lowest cosine similarity reported (default 0.9); scores up to {THRESHOLD_ULPS} float32 steps "
                      "below it count, so that --threshold 1 finds exact duplicates scoring 0.99999994")
    mine.add_argument("-k", "--top-k", type=positive, default=100, help="candidates per item (default 100)")

    cluster = _add_command(
        commands, "cluster", run_cluster, help="group the lines of a file into communities of similar texts",
        description="Embed every item of a text or .jsonl file and print its communities, largest first: groups "
        "of at least --min-size items whose cosine similarity to the group's first item is at least "
        "--threshold (sentence-transformers' community_detection).",
    )
    cluster.add_argument("--threshold", type=cosine, default=0.75, help="cosine similarity to the center (default 0.75)")
    cluster.add_argument("--min-size", type=positive, default=10, help="smallest community reported (default 10)")


def _add_command(commands: argparse._SubParsersAction, name: str, run: Any, help: str, description: str):
    """A command over the items of one input file, with the options mine and cluster share."""
    command = commands.add_parser(name, help=help, description=description + NUMBERING)
    command.add_argument("input", metavar="FILE", help="text or .jsonl file, or - for stdin")
    add_input_options(command)
    add_model_options(command)
    command.add_argument("--json", action="store_true", help="print JSON instead of text")
    command.set_defaults(run=run)
    return command


def _embed_items(args: argparse.Namespace) -> tuple[Items, list[int], Any]:
    """The input, the numbers of its non-blank items, and their unit-length embeddings (one row per number)."""
    items = read_items(args.input, args.format, args.field)
    ids = items.non_blank()
    encoder = load_encoder(args)
    embeddings = encoder.encode(
        [items.texts[i] for i in ids], batch_size=args.batch_size, show_progress_bar=not args.no_progress,
        normalize_embeddings=True, convert_to_tensor=True,
    )
    return items, ids, embeddings


def _counted(items: Items, ids: list[int]) -> str:
    blank = len(items.texts) - len(ids)
    return plural(len(ids), "text") + (f" ({plural(blank, 'blank line')} skipped)" if blank else "")


def tolerant(threshold: float, ulps: int = THRESHOLD_ULPS) -> float:
    """threshold lowered by ulps float32 steps (not below -1, the lowest min_score a cosine takes)."""
    value = np.float32(threshold)
    for _ in range(ulps):
        value = np.nextafter(value, np.float32(-np.inf))
    return max(float(value), -1.0)


def run_mine(args: argparse.Namespace) -> int:
    from ..search import paraphrase_mining_embeddings

    items, ids, embeddings = _embed_items(args)
    found = paraphrase_mining_embeddings(embeddings, top_k=args.top_k, max_pairs=2**62,
                                         min_score=tolerant(args.threshold))
    pairs = [(score, ids[i], ids[j]) for score, i, j in found]
    texts = items.texts
    if args.json:
        results = [{"score": s, "i": i, "j": j, "text_i": texts[i], "text_j": texts[j]} for s, i, j in pairs]
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for score, i, j in pairs:
            print(f"{score:.4f}  [{i}] {shown(texts[i])}  |  [{j}] {shown(texts[j])}")
    print(f"{len(pairs)} pairs with cosine >= {args.threshold} among {_counted(items, ids)}", file=sys.stderr)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from ..search import community_detection

    items, ids, embeddings = _embed_items(args)
    communities = [[ids[i] for i in c] for c in community_detection(embeddings, args.threshold, args.min_size)]
    texts = items.texts
    if args.json:
        results = [{"size": len(c), "ids": c, "texts": [texts[i] for i in c]} for c in communities]
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for number, community in enumerate(communities, start=1):
            print(f"community {number}: {plural(len(community), 'text')}")
            for i in community:
                print(f"  [{i}] {shown(texts[i])}")
    clustered = sum(len(c) for c in communities)
    print(
        f"{len(communities)} communities of >= {args.min_size} texts at cosine >= {args.threshold}, "
        f"{clustered} of {_counted(items, ids)} clustered",
        file=sys.stderr,
    )
    return 0
