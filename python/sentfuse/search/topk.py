"""Exact semantic search on the cosine_topk kernel, with sentence-transformers' result format.

The kernel scores queries against the corpus tile by tile, so memory never grows with
queries x corpus. A corpus larger than memory (a numpy memmap, or any sequence or iterator of
chunks) is streamed chunk by chunk and the per-chunk top-k lists are merged. A score function other
than cos_sim / dot_score is called on query and corpus chunks, as sentence-transformers does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _ops
from .._checks import check_finite, check_min_score, int_at_least, positive_int
from .similarity import KERNEL_DTYPES, as_embeddings, cos_sim, metric_of

# Rows per chunk when streaming a memmap: 64k x 384 fp32 is 96 MB.
MEMMAP_CHUNK_ROWS = 65536
# Queries scored at once by a score function other than the kernels' (sentence-transformers' default).
QUERY_CHUNK_ROWS = 100


def _corpus_chunks(corpus: Any, chunk_rows: int | None) -> tuple[Iterator[torch.Tensor], int | None]:
    """(iterator over [n_i, D] corpus chunks, number of chunks if known)."""
    if isinstance(corpus, np.memmap) or (isinstance(corpus, np.ndarray) and chunk_rows is not None):
        rows = chunk_rows or MEMMAP_CHUNK_ROWS
        starts = range(0, len(corpus), rows)
        return (as_embeddings(np.array(corpus[s : s + rows]), "corpus_embeddings") for s in starts), len(
            starts
        )
    if isinstance(corpus, (torch.Tensor, np.ndarray)):
        tensor = as_embeddings(corpus, "corpus_embeddings")
        rows = chunk_rows or max(len(tensor), 1)
        starts = range(0, len(tensor), rows)
        return (tensor[s : s + rows] for s in starts), len(starts)
    if isinstance(corpus, (list, tuple)) and corpus and all(
        not isinstance(c, (torch.Tensor, np.ndarray)) or c.ndim == 1 for c in corpus
    ):
        return iter([as_embeddings(corpus, "corpus_embeddings")]), 1  # a list of vectors, not of chunks
    if isinstance(corpus, Iterable):
        total = len(corpus) if hasattr(corpus, "__len__") else None
        return (as_embeddings(chunk, "corpus_embeddings chunk") for chunk in corpus), total
    raise TypeError(f"corpus_embeddings must be a tensor, numpy array or iterable of chunks, got {type(corpus).__name__}")


def merge_topk(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor], k: int):
    """Top-k of two candidate lists; `best` holds lower corpus ids, so a stable sort keeps ties in id order."""
    if best is None:
        return new
    scores = torch.cat([best[0], new[0]], dim=1)
    indices = torch.cat([best[1], new[1]], dim=1)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores[:, :k], torch.gather(indices, 1, order[:, :k])


def scored_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    score_function: Callable,
    *,
    exclude_self: bool = False,
    min_score: float | None = None,
    query_offset: int = 0,
    corpus_offset: int = 0,
    query_chunk_size: int = QUERY_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cosine_topk's answer for any score function: score_function(query chunk, corpus) [q, N] is called
    query_chunk_size queries at a time. Same arguments and result form as _ops.cosine_topk."""
    k = min(k, len(corpus))
    results = []
    for start in range(0, len(queries), query_chunk_size):
        block = queries[start : start + query_chunk_size]
        scores = torch.as_tensor(score_function(block, corpus)).to(device=queries.device, dtype=torch.float32)
        if scores.shape != (len(block), len(corpus)):
            raise ValueError(
                f"score_function({tuple(block.shape)}, {tuple(corpus.shape)}) returned shape {tuple(scores.shape)}; "
                f"expected ({len(block)}, {len(corpus)})"
            )
        if exclude_self:
            rows = torch.arange(len(block), device=scores.device)
            cols = rows + query_offset + start - corpus_offset
            inside = (cols >= 0) & (cols < len(corpus))
            scores[rows[inside], cols[inside]] = -float("inf")
        if min_score is not None:
            scores = scores.masked_fill(scores < min_score, -float("inf"))
        values, indices = torch.topk(scores, k, dim=1)
        # Ties in corpus id order, as the kernel breaks them; entries dropped above become (-inf, -1).
        order = torch.argsort(indices, dim=1)
        values, indices = values.gather(1, order), indices.gather(1, order)
        values, order = torch.sort(values, dim=1, descending=True, stable=True)
        indices = torch.where(values > -float("inf"), indices.gather(1, order) + corpus_offset, -1)
        results.append((values, indices))
    if not results:
        empty = torch.empty(0, k, device=queries.device)
        return empty, empty.long()
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def _search_chunk(q, c, top_k, score_function, metric, offset, exclude_self, min_score, bf16_rescore, query_chunk_size):
    """One corpus chunk's top-k on the device holding the corpus (if a GPU), else where the queries are."""
    device = c.device if c.device.type != "cpu" else q.device
    if metric is None:
        return scored_topk(
            q.to(device), c.to(device), top_k, score_function, exclude_self=exclude_self, min_score=min_score,
            corpus_offset=offset, query_chunk_size=query_chunk_size,
        )
    dtype = torch.promote_types(q.dtype, c.dtype)
    dtype = dtype if dtype in KERNEL_DTYPES else torch.float32  # float64 is scored in float32
    q, c = q.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)
    try:
        return _ops.cosine_topk(
            q, c, top_k, metric=metric, exclude_self=exclude_self, min_score=min_score,
            corpus_offset=offset, bf16_rescore=bf16_rescore,
        )
    except (RuntimeError, ValueError):
        # Checked only when the kernel fails: the corpus may be streamed from disk once, and a second
        # pass over it would double the time of a memory-bound search.
        check_finite(q, "query_embeddings")
        check_finite(c, f"corpus_embeddings (rows {offset}..{offset + len(c) - 1})")
        raise


def search_topk(
    query_embeddings: Any,
    corpus_embeddings: Any,
    top_k: int = 10,
    *,
    score_function: Callable = cos_sim,
    exclude_self: bool = False,
    min_score: float | None = None,
    corpus_chunk_size: int | None = None,
    query_chunk_size: int = QUERY_CHUNK_ROWS,
    bf16_rescore: bool | None = None,
    show_progress_bar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor form of semantic_search: (scores [Q, k] fp32, indices [Q, k] int64), best first.

    k = min(top_k, corpus size). Rows with fewer hits (exclude_self, min_score) are padded with
    (-inf, -1). corpus_embeddings: a tensor or array (processed whole, or in corpus_chunk_size rows),
    a numpy memmap (streamed from disk), or a sequence / iterator of [n_i, D] chunks (streamed).
    score_function: cos_sim and dot_score (sentfuse's or sentence-transformers') run in the
    cosine_topk kernel; any other callable f(a [q, D], b [n, D]) -> scores [q, n] is called on
    query_chunk_size queries at a time.
    """
    top_k = int_at_least(top_k, "top_k", 0)
    corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size", allow_none=False)
    min_score = check_min_score(min_score)
    metric = metric_of(score_function)
    queries = as_embeddings(query_embeddings, "query_embeddings")
    chunks, total = _corpus_chunks(corpus_embeddings, corpus_chunk_size)

    best = None
    offset = 0
    for chunk in tqdm(chunks, total=total, desc="Searching", unit="chunk", disable=not show_progress_bar):
        if chunk.shape[1] != queries.shape[1]:
            raise ValueError(
                f"query_embeddings {tuple(queries.shape)} and corpus chunk {tuple(chunk.shape)} (rows {offset}..) "
                "must have the same embedding dimension"
            )
        result = _search_chunk(
            queries, chunk, top_k, score_function, metric, offset, exclude_self, min_score, bf16_rescore,
            query_chunk_size,
        )
        best = merge_topk(best, result, top_k)
        offset += len(chunk)
    if best is None:  # no chunk at all: an empty corpus
        empty = torch.empty(len(queries), 0, device=queries.device)
        return empty, empty.long()
    return best


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    query_chunk_size: int = QUERY_CHUNK_ROWS,
    corpus_chunk_size: int | None = None,
    top_k: int = 10,
    score_function: Callable = cos_sim,
    *,
    exclude_self: bool = False,
    min_score: float | None = None,
    bf16_rescore: bool | None = None,
    show_progress_bar: bool = False,
) -> list[list[dict[str, int | float]]]:
    """Exact top_k hits per query, as sentence-transformers returns them.

    One list per query of {"corpus_id": int, "score": float}, best first (ties: lower corpus_id).
    query_chunk_size only matters for score functions other than cos_sim / dot_score (the kernel
    tiles queries itself). See search_topk for the corpus forms accepted and the other arguments.
    """
    scores, indices = search_topk(
        query_embeddings, corpus_embeddings, top_k, score_function=score_function, exclude_self=exclude_self,
        min_score=min_score, corpus_chunk_size=corpus_chunk_size, query_chunk_size=query_chunk_size,
        bf16_rescore=bf16_rescore, show_progress_bar=show_progress_bar,
    )
    hits = []
    for row_scores, row_ids in zip(scores.tolist(), indices.tolist()):
        hits.append([{"corpus_id": i, "score": s} for s, i in zip(row_scores, row_ids) if i >= 0])
    return hits
