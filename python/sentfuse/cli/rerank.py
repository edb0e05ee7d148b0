"""`sentfuse rerank`: score the items of a corpus file against queries with a cross-encoder, best first.
Also the reranking step of `sentfuse search --rerank`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import add_backbone_options, add_corpus_arguments, add_run_options, positive
from .errors import CommandError
from .inputs import Items, read_items, shown

DESCRIPTION = """\
Score every non-blank item of a corpus (one text per line, or .jsonl with --field) against each query with a
cross-encoder (a sentence-transformers CrossEncoder folder or a Hugging Face sequence-classification folder),
and print each query's best items. Items are numbered from 0: item i is line i + 1 of a text file.
Every (query, item) pair goes through the model in one call, with one progress bar.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    rerank = commands.add_parser("rerank", help="score the lines of a corpus file against queries with a cross-encoder",
                                 description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arguments(rerank)
    rerank.add_argument("--model", required=True, help="cross-encoder folder or cached hub name")
    rerank.add_argument("-k", "--top-k", type=positive, default=5, help="items shown per query (default 5)")
    add_backbone_options(rerank)
    add_run_options(rerank)
    rerank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rerank.set_defaults(run=run)


def load_cross_encoder(model: str, device: str | None, dtype: str | None = None,
                       max_seq_length: int | None = None) -> Any:
    from ..cross_encoder import CrossEncoder

    cross_encoder = CrossEncoder(model, device=device, dtype=dtype, max_seq_length=max_seq_length)
    if cross_encoder.num_labels != 1:
        raise CommandError(f"--model {model} has {cross_encoder.num_labels} labels; reranking needs a one-label "
                           "(relevance score) cross-encoder")
    return cross_encoder


def rerank_hits(cross_encoder: Any, queries: list[str], texts: list[str], candidates: list[list[int]], top_k: int,
                batch_size: int | None, progress: bool) -> list[list[dict]]:
    """Each query's top_k candidates (corpus ids) by cross-encoder score, best first (ties keep candidate order),
    as {"corpus_id", "score"}: every pair of every query scored in one predict call."""
    pairs = [(query, texts[i]) for query, ids in zip(queries, candidates) for i in ids]
    scores = cross_encoder.predict(pairs, batch_size=batch_size, show_progress_bar=progress).tolist() if pairs else []
    out, start = [], 0
    for ids in candidates:
        own = scores[start : start + len(ids)]
        start += len(ids)
        order = sorted(range(len(ids)), key=own.__getitem__, reverse=True)[:top_k]
        out.append([{"corpus_id": ids[j], "score": own[j]} for j in order])
    return out


def print_hits(queries: list[str], hits: list[list[dict]], corpus: Items, as_json: bool) -> None:
    if as_json:
        results = [{"query": query, "hits": [dict(hit, text=corpus.texts[hit["corpus_id"]]) for hit in query_hits]}
                   for query, query_hits in zip(queries, hits)]
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return
    for query, query_hits in zip(queries, hits):
        print(f"query: {shown(query)}")
        for rank, hit in enumerate(query_hits, start=1):
            print(f"  {rank:>2}. {hit['score']:.4f}  [{hit['corpus_id']}] {shown(corpus.texts[hit['corpus_id']])}")


def run(args: argparse.Namespace) -> int:
    for number, query in enumerate(args.queries, start=1):
        if not query.strip():
            raise CommandError(f"query {number} is blank")
    corpus = read_items(args.corpus, args.format, args.field, option="--corpus")
    ids = corpus.non_blank()
    cross_encoder = load_cross_encoder(args.model, args.device, args.dtype, args.max_seq_length)
    hits = rerank_hits(cross_encoder, args.queries, corpus.texts, [ids] * len(args.queries), args.top_k,
                       args.batch_size, not args.no_progress)
    print_hits(args.queries, hits, corpus, args.json)
    return 0
