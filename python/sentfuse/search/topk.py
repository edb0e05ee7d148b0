"""Exact semantic search on the cosine_topk kernel, with sentence-transformers' result format.

The kernel scores queries against the corpus tile by tile, so memory never grows with
queries x corpus. A corpus larger than memory (a numpy memmap, or any sequence or iterator of
chunks) is streamed chunk by chunk and the per-chunk top-k lists are merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _ops
from .similarity import as_embeddings, cos_sim, dot_score

# Rows per chunk when streaming a memmap: 64k x 384 fp32 is 96 MB.
MEMMAP_CHUNK_ROWS = 65536


def _is_dot_product(score_function: Callable) -> bool:
    """cos_sim -> False, dot_score -> True; sentence-transformers' functions of the same names are accepted."""
    if score_function is cos_sim or getattr(score_function, "__name__", None) == "cos_sim":
        return False
    if score_function is dot_score or getattr(score_function, "__name__", None) == "dot_score":
        return True
    raise ValueError(f"score_function must be cos_sim or dot_score, got {score_function!r}")


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
    if isinstance(corpus, (list, tuple)) and corpus and not isinstance(corpus[0], (torch.Tensor, np.ndarray)):
        return iter([as_embeddings(corpus, "corpus_embeddings")]), 1  # a plain list of vectors
    if isinstance(corpus, Iterable):
        total = len(corpus) if hasattr(corpus, "__len__") else None
        return (as_embeddings(chunk, "corpus_embeddings chunk") for chunk in corpus), total
    raise TypeError(f"corpus_embeddings must be a tensor, numpy array or iterable of chunks, got {type(corpus).__name__}")


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor], k: int):
    """Top-k of two candidate lists; `best` holds lower corpus ids, so a stable sort keeps ties in id order."""
    if best is None:
        return new
    scores = torch.cat([best[0], new[0]], dim=1)
    indices = torch.cat([best[1], new[1]], dim=1)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores[:, :k], torch.gather(indices, 1, order[:, :k])


def search_topk(
    query_embeddings: Any,
    corpus_embeddings: Any,
    top_k: int = 10,
    *,
    score_function: Callable = cos_sim,
    exclude_self: bool = False,
    min_score: float | None = None,
    corpus_chunk_size: int | None = None,
    bf16_rescore: bool = False,
    show_progress_bar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor form of semantic_search: (scores [Q, k] fp32, indices [Q, k] int64), best first.

    k = min(top_k, corpus size). Rows with fewer hits (exclude_self, min_score) are padded with
    (-inf, -1). corpus_embeddings: a tensor or array (processed whole, or in corpus_chunk_size rows),
    a numpy memmap (streamed from disk), or a sequence / iterator of [n_i, D] chunks (streamed).
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if corpus_chunk_size is not None and (not isinstance(corpus_chunk_size, int) or corpus_chunk_size < 1):
        raise ValueError(f"corpus_chunk_size must be a positive int or None, got {corpus_chunk_size!r}")
    if min_score is not None and not -1e30 < float(min_score) < 1e30:
        raise ValueError(f"min_score must be a finite number, got {min_score!r}")
    metric = "dot" if _is_dot_product(score_function) else "cosine"
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
        # Score where the corpus lives when it is on a GPU; otherwise where the queries are.
        device = chunk.device if chunk.device.type != "cpu" else queries.device
        dtype = torch.promote_types(queries.dtype, chunk.dtype)
        q, c = queries.to(device=device, dtype=dtype), chunk.to(device=device, dtype=dtype)
        result = _ops.cosine_topk(
            q, c, top_k, metric=metric, exclude_self=exclude_self, min_score=min_score,
            corpus_offset=offset, bf16_rescore=bf16_rescore,
        )
        best = _merge(best, result, top_k)
        offset += len(chunk)
    if best is None:  # no chunk at all: an empty corpus
        empty = torch.empty(len(queries), 0, device=queries.device)
        return empty, empty.long()
    return best


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    query_chunk_size: int = 100,
    corpus_chunk_size: int | None = None,
    top_k: int = 10,
    score_function: Callable = cos_sim,
    *,
    exclude_self: bool = False,
    min_score: float | None = None,
    bf16_rescore: bool = False,
    show_progress_bar: bool = False,
) -> list[list[dict[str, int | float]]]:
    """Exact top_k hits per query, as sentence-transformers returns them.

    One list per query of {"corpus_id": int, "score": float}, best first (ties: lower corpus_id).
    query_chunk_size is accepted for compatibility; the kernel tiles queries itself. See search_topk
    for the corpus forms accepted and the other arguments.
    """
    if not isinstance(query_chunk_size, int) or query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be a positive int, got {query_chunk_size!r}")
    scores, indices = search_topk(
        query_embeddings, corpus_embeddings, top_k, score_function=score_function, exclude_self=exclude_self,
        min_score=min_score, corpus_chunk_size=corpus_chunk_size, bf16_rescore=bf16_rescore,
        show_progress_bar=show_progress_bar,
    )
    hits = []
    for row_scores, row_ids in zip(scores.tolist(), indices.tolist()):
        hits.append([{"corpus_id": i, "score": s} for s, i in zip(row_scores, row_ids) if i >= 0])
    return hits
