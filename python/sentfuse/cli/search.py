"""`sentfuse search`: rank the items of a corpus file against query texts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..encode.encoder import DOCUMENT_PROMPT_NAMES
from ..multi_vector.index import is_index
from .args import add_backbone_options, add_corpus_arguments, add_model_options, positive
from .errors import CommandError
from .inputs import Items, read_items, shown
from .model import load_encoder
from .outputs import check_output, load_embeddings, write_embeddings
from .records import CHECKPOINT_DTYPE, build_record, mismatches, read_record

FINITE_CHECK_ROWS = 65536  # rows of a cached file checked for NaN at a time: bounded memory for any file

DESCRIPTION = """\
Embed a corpus (one text per line, or .jsonl with --field) and print each query's best matches.
Hits are numbered by item, from 0: item i is line i + 1 of a text file (row i of `sentfuse encode`'s
output). Blank lines are never hits.

With --embeddings INDEX, a folder written by `sentfuse encode --multi-vector`, the queries are scored by MaxSim
against that index (built from this corpus; by --model, or else the model its manifest names).

With --embeddings FILE.npy, the corpus embeddings are read from FILE.npy when FILE.npy.json beside
it shows they were built from this corpus, model and options (as `sentfuse encode` and earlier
searches write them; give search the --dtype and --max-seq-length encode was given; for a model
scoring by cosine, encode --normalize output fits too); otherwise search stops and says what differs. The first time, or with
--reencode, search encodes the corpus and writes both files (atomically).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="rank the lines of a corpus file against queries",
                                 description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arguments(search)
    search.add_argument("--embeddings", default=None, metavar="FILE.npy", help="cached corpus embeddings")
    search.add_argument("--reencode", action="store_true",
                        help="encode the corpus and rewrite --embeddings even if it exists")
    search.add_argument("-k", "--top-k", type=positive, default=5, help="hits per query (default 5)")
    add_model_options(search)
    add_backbone_options(search)
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--rerank", default=None, metavar="MODEL",
                        help="rerank each query's best --rerank-k items with this cross-encoder, then show the top -k")
    search.add_argument("--rerank-k", type=positive, default=100, metavar="N",
                        help="items retrieved per query for --rerank (default 100)")
    search.set_defaults(run=run)


def _cache_path(args: argparse.Namespace) -> Path | None:
    """--embeddings, checked before any work: an existing file to reuse, or a file search may (re)write."""
    if args.embeddings is None:
        return None
    reuse = Path(args.embeddings).is_file() and not args.reencode
    return check_output(args.embeddings, "--embeddings", writable=not reuse)


def _corpus_embeddings(args: argparse.Namespace, encoder: Any, corpus: Items, cache: Path | None) -> np.ndarray:
    """The corpus embeddings: from cache when its record matches, else encoded (and saved there)."""
    prompt = next((encoder.prompts[n] for n in DOCUMENT_PROMPT_NAMES if n in encoder.prompts), "")
    record = build_record(encoder, corpus.name, corpus.texts, prompt=prompt, dtype=args.dtype or CHECKPOINT_DTYPE,
                          normalize=False, precision="float32")
    if cache is not None and cache.exists() and not args.reencode:
        embeddings = load_embeddings(args.embeddings, "--embeddings")
        # A cosine is the same for an embedding and its unit-length copy: encode --normalize output fits.
        ignored = ("normalize",) if encoder.similarity_fn_name == "cosine" else ()
        problems = mismatches(read_record(cache), record, embeddings, cache, ignored)
        if problems:
            raise CommandError(f"--embeddings {cache} {'; it '.join(problems)}. Pass --reencode to rebuild it "
                               "from this corpus, or name another file")
        _check_usable(embeddings, encoder, f"--embeddings {cache}", args.model)
        return embeddings
    embeddings = encoder.encode(corpus.texts, prompt=prompt, batch_size=args.batch_size,
                                show_progress_bar=not args.no_progress)
    if cache is not None:
        write_embeddings(cache, embeddings, record, "--embeddings")
    return embeddings


def _check_usable(embeddings: np.ndarray, encoder: Any, name: str, model: str | None) -> None:
    """Embeddings search can rank against this model's queries: its width, and finite values (reads the file)."""
    width = encoder.get_embedding_dimension()
    if embeddings.shape[1] != width:
        raise CommandError(f"{name} holds {embeddings.shape[1]}-wide embeddings, but --model "
                           f"{model or 'all-MiniLM-L6-v2'} gives {width}-wide ones")
    for start in range(0, embeddings.shape[0], FINITE_CHECK_ROWS):
        finite = np.isfinite(embeddings[start : start + FINITE_CHECK_ROWS]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise CommandError(f"{name} holds NaN or infinite values (first in row {row}); rebuild it with --reencode")


def _hits(args: argparse.Namespace, corpus: Items, search: Any) -> list[list[dict]]:
    """Each query's top-k hits among the non-blank items (search(top_k) -> hits); blank items are asked for too
    and then dropped."""
    keep = set(corpus.non_blank())
    blank = len(corpus.texts) - len(keep)
    wanted = max(args.top_k, args.rerank_k) if args.rerank else args.top_k
    top_k = min(wanted + blank, len(corpus.texts))
    hits = search(top_k)
    return [[hit for hit in query_hits if hit["corpus_id"] in keep][:wanted] for query_hits in hits]


def _reranked(args: argparse.Namespace, corpus: Items, hits: list[list[dict]]) -> list[list[dict]]:
    """--rerank: the retrieved hits scored again by the cross-encoder, its top -k (retrieval_score kept)."""
    from .rerank import load_cross_encoder, rerank_hits

    cross_encoder = load_cross_encoder(args.rerank, args.device)
    reranked = rerank_hits(cross_encoder, args.queries, corpus.texts, [[h["corpus_id"] for h in q] for q in hits],
                           args.top_k, args.batch_size, not args.no_progress)
    retrieval = [{h["corpus_id"]: h["score"] for h in q} for q in hits]
    return [[dict(h, retrieval_score=scores[h["corpus_id"]]) for h in q] for q, scores in zip(reranked, retrieval)]


def run(args: argparse.Namespace) -> int:
    for number, query in enumerate(args.queries, start=1):
        if not query.strip():
            raise CommandError(f"query {number} is blank")
    multi_vector = args.embeddings is not None and is_index(args.embeddings)  # written by encode --multi-vector
    cache = None if multi_vector else _cache_path(args)
    corpus = read_items(args.corpus, args.format, args.field, option="--corpus")
    corpus.non_blank()
    if multi_vector:
        from ..multi_vector.cli import index_search

        hits = _hits(args, corpus, index_search(args, corpus.texts))
    else:
        encoder = load_encoder(args, max_seq_length=args.max_seq_length, dtype=args.dtype)
        embeddings = _corpus_embeddings(args, encoder, corpus, cache)
        hits = _hits(args, corpus, lambda top_k: encoder.search(args.queries, embeddings, top_k=top_k,
                                                                batch_size=args.batch_size))
    if args.rerank:
        hits = _reranked(args, corpus, hits)
    if args.json:
        results = [{"query": query, "hits": [dict(hit, text=corpus.texts[hit["corpus_id"]]) for hit in query_hits]}
                   for query, query_hits in zip(args.queries, hits)]
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    for query, query_hits in zip(args.queries, hits):
        print(f"query: {shown(query)}")
        for rank, hit in enumerate(query_hits, start=1):
            print(f"  {rank:>2}. {hit['score']:.4f}  [{hit['corpus_id']}] {shown(corpus.texts[hit['corpus_id']])}")
    return 0
