"""Paraphrase mining with sentence-transformers' results: the most similar pairs among a set of rows.

paraphrase_mining_embeddings returns what sentence-transformers' function of the same name returns on
the same input (up to ties and float rounding), but gets its candidates from the kernels: no query x
corpus score matrix and no per-candidate Python loop. Pairs are (rows, cols, scores) column triples
with rows < cols throughout, as threshold_pairs returns them; only the answer is [score, i, j] lists.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import numpy as np
import torch

from .. import _ops
from .._checks import check_finite, check_threshold, int_at_least, positive_int
from . import prefix_bound
from .similarity import as_embeddings, cos_sim, metric_of, scoring_rows
from .sort_keys import descending_keys
from .topk import scored_topk

__all__ = ["paraphrase_mining", "paraphrase_mining_embeddings"]

# paraphrase mining looks for its answer among the pairs above a sampled cutoff while those are at most
# this share of all pairs; beyond it (few rows, or max_pairs near the number of pairs) it takes top-k.
_MAX_ABOVE_SHARE = 0.25

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rows, cols, scores), rows < cols


def _top_pairs(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, n: int, max_pairs: int,
               distinct: bool = False) -> Pairs:
    """Each unordered pair once (its first occurrence, as sentence-transformers keeps the first score it
    sees; distinct=True says the pairs already are, in (i, j) order), then the max_pairs best, sorted by
    score descending and (i, j) ascending on ties."""
    if not distinct:
        _, first = np.unique(rows * n + cols, return_index=True)  # also puts the pairs in (i, j) order
        rows, cols, scores = rows[first], cols[first], scores[first]
    if len(scores) < 1 << 32:
        # One key per pair, (score descending, position in (i, j) order): a plain sort of 64-bit integers
        # (vectorized in numpy) orders them, about 20x faster than a lexsort of the three columns.
        keys = (descending_keys(scores).astype(np.uint64) << np.uint64(32)) | np.arange(len(scores), dtype=np.uint64)
        order = (np.sort(keys)[:max_pairs] & np.uint64(0xFFFFFFFF)).astype(np.intp)
    else:
        order = np.lexsort((cols, rows, -scores))[:max_pairs]
    return rows[order], cols[order], scores[order]


def _as_lists(pairs_found: Pairs) -> list[list[float | int]]:
    """[[score, i, j], ...]; the garbage collector is paused, as it would otherwise scan the growing
    result again and again (half a million small lists took twice as long with it on)."""
    rows, cols, scores = pairs_found
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(map(list, zip(scores.tolist(), rows.tolist(), cols.tolist())))
    finally:
        if enabled:
            gc.enable()


def _within_top_k(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, n: int, top_k: int) -> np.ndarray:
    """For pairs (i, j), i < j, in (i, j) order, listing every pair scoring >= some cutoff: whether j is among
    i's top_k others or i among j's (ties: lower index first, as cosine_topk ranks). Every row that
    outranks j in i's list scores at least as high, so it is listed too, and ranks can be counted within
    the list."""
    # Each pair from both ends: (j, i) first, so that a row's entries come in increasing other index.
    src = np.concatenate([cols, rows])
    counts = np.bincount(src, minlength=n)
    within = counts[src] <= top_k  # a row listed at most top_k times keeps them all
    crowded = np.flatnonzero(~within)
    if len(crowded):
        within[crowded] = _ranks_below(src[crowded], np.concatenate([scores, scores])[crowded], counts, top_k)
    return within[len(rows) :] | within[: len(rows)]


def _ranks_below(src: np.ndarray, scores: np.ndarray, counts: np.ndarray, top_k: int) -> np.ndarray:
    """Whether each entry (its row src, its score; a row's entries in increasing other index) ranks among its
    row's top_k by (score descending, other index ascending), for rows listing more than top_k entries.

    A plain sort of (row, score descending) keys (vectorized in numpy, unlike a stable sort) gives each row's
    top_k-th key; entries with a smaller key are in. Entries tied with it are in while the row has room for
    them, lower other index first: their order of arrival within the row."""
    keys = (src.astype(np.uint64) << np.uint64(32)) | descending_keys(scores)
    ordered = np.sort(keys)
    crowded_rows = np.flatnonzero(counts > top_k)
    starts = np.cumsum(counts[crowded_rows]) - counts[crowded_rows]
    kth = np.zeros(len(counts), np.uint64)
    kth[crowded_rows] = ordered[starts + top_k - 1]
    room = np.zeros(len(counts), np.int64)  # places left for the entries tied with the row's top_k-th key
    room[crowded_rows] = starts + top_k - np.searchsorted(ordered, kth[crowded_rows])
    row_kth = kth[src]
    within = keys < row_kth
    tied = np.flatnonzero(keys == row_kth)
    # The tied entries grouped by row, in arrival order: each row's first `room` of them are in.
    by_row = tied[np.argsort(src[tied], kind="stable")]
    tied_rows = src[by_row]
    position = np.arange(len(by_row))
    group_start = np.maximum.accumulate(np.where(np.r_[True, tied_rows[1:] != tied_rows[:-1]], position, 0))
    within[by_row] = position - group_start < room[tied_rows]
    return within


def _best_listed(x: torch.Tensor, cutoff: float, top_k: int, max_pairs: int, seed: int = 0) -> tuple[Pairs, int]:
    """The max_pairs best pairs scoring >= cutoff that are in a row's top_k, and how many pairs qualified."""
    rows, cols, scores = (t.cpu().numpy() for t in prefix_bound.self_pairs(x, cutoff, seed=seed))
    keep = _within_top_k(rows, cols, scores, len(x), top_k)
    return _top_pairs(rows[keep], cols[keep], scores[keep], len(x), max_pairs, distinct=True), int(keep.sum())


def _mine_above_cutoff(x: torch.Tensor, top_k: int, max_pairs: int) -> Pairs | None:
    """paraphrase mining's answer from the pairs scoring >= a cutoff, or None when no affordable cutoff
    leaves max_pairs of them.

    Pairs below the cutoff rank below every pair above it, and whether a pair above it is in a row's
    top_k is decided by pairs above it alone (_within_top_k), so when at least max_pairs listed pairs pass
    that test, the max_pairs best of them are exactly the answer. The cutoff is a sampled score quantile
    aiming at twice max_pairs pairs, lowered if too few pass. This costs half the GEMM work of searching
    every row's top_k (each pair is scored once) and memory that follows max_pairs, not N x top_k.
    """
    n = len(x)
    total = n * (n - 1) // 2
    if 2 * max_pairs > n * top_k:  # the answer is most of the n x top_k candidates: top-k finds them directly
        return None
    wanted = 2 * max_pairs
    for attempt in range(3):
        if wanted > _MAX_ABOVE_SHARE * total:
            return None
        cutoff = prefix_bound.pair_score_quantile(x, wanted / total, seed=attempt)
        best, qualified = _best_listed(x, cutoff, top_k, max_pairs, seed=attempt)
        if qualified >= max_pairs:
            return best
        wanted *= 4
    return None


def _mine_top_k(
    n: int, max_pairs: int, query_chunk_size: int, candidates: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
) -> Pairs:
    """Every row's top-k others from candidates(start, stop) -> (scores, indices) [rows, k] (-1: none),
    query_chunk_size rows at a time, each pair once, the max_pairs best."""
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    kept: Pairs = (empty_i, empty_i, empty_f)
    pending: list[Pairs] = []
    pending_size = 0
    for start in range(0, n, query_chunk_size):
        scores, indices = (t.cpu().numpy() for t in candidates(start, min(start + query_chunk_size, n)))
        rows = np.broadcast_to(np.arange(start, start + len(indices))[:, None], indices.shape)
        found = indices >= 0
        rows, cols, scores = rows[found], indices[found], scores[found]
        pending.append((np.minimum(rows, cols), np.maximum(rows, cols), scores))
        pending_size += len(scores)
        # Compacting keeps memory near max_pairs; a pair dropped here could only come back with the same score.
        if pending_size > max(4 * max_pairs, 1 << 22):
            kept = _top_pairs(*(np.concatenate(p) for p in zip(kept, *pending)), n, max_pairs)
            pending, pending_size = [], 0
    return _top_pairs(*(np.concatenate(p) for p in zip(kept, *pending)), n, max_pairs)


def paraphrase_mining_embeddings(
    embeddings: Any,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable = cos_sim,
    *,
    min_score: float | None = None,
) -> list[list[float | int]]:
    """The most similar pairs among the rows of embeddings: [[score, i, j], ...] with i < j, best first.

    As sentence-transformers does: each row's top_k best other rows are candidates, each pair is
    kept once, and the max_pairs best are returned. cos_sim and dot_score run in the kernels; any
    other score_function(a, b) -> [len(a), len(b)] is called on query_chunk_size rows at a time.
    min_score (sentfuse only) also drops pairs scoring below it; the work then follows the number of
    pairs above it (near-duplicate mining). When max_pairs is small next to all pairs, the answer
    comes from the pairs above a sampled cutoff (each pair scored once, see _mine_above_cutoff);
    otherwise query_chunk_size rows are searched per top-k kernel call (it bounds the candidate
    memory). corpus_chunk_size is accepted for compatibility; the kernels tile the corpus themselves.
    """
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size", allow_none=False)
    positive_int(corpus_chunk_size, "corpus_chunk_size", allow_none=False)
    max_pairs = int_at_least(max_pairs, "max_pairs", 0)
    top_k = int_at_least(top_k, "top_k", 0)
    metric = metric_of(score_function)
    if min_score is not None:
        min_score = check_threshold(min_score, "min_score", metric or "any")
    x = as_embeddings(embeddings, "embeddings")
    n = len(x)
    if n < 2 or top_k == 0 or max_pairs == 0:
        return []
    check_finite(x, "embeddings")
    if metric is None:
        return _as_lists(_mine_top_k(n, max_pairs, query_chunk_size, lambda start, stop: scored_topk(
            x[start:stop], x, top_k, score_function, exclude_self=True, min_score=min_score, query_offset=start,
            query_chunk_size=query_chunk_size,
        )))
    # Every path below scores plain dot products of these fp32 rows.
    x = scoring_rows(x, metric)
    if min_score is not None:
        return _as_lists(_best_listed(x, min_score, top_k, max_pairs)[0])
    above = _mine_above_cutoff(x, top_k, max_pairs)
    if above is not None:
        return _as_lists(above)
    return _as_lists(_mine_top_k(n, max_pairs, query_chunk_size, lambda start, stop: _ops.cosine_topk(
        x[start:stop], x, top_k, metric="dot", exclude_self=True, query_offset=start,
    )))


def paraphrase_mining(
    model: Any,
    sentences: list[str],
    show_progress_bar: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable = cos_sim,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[list[float | int]]:
    """Encode sentences with model.encode (a sentfuse Encoder or a SentenceTransformer), then
    paraphrase_mining_embeddings: [[score, i, j], ...] with i < j, best first."""
    embeddings = model.encode(
        sentences, show_progress_bar=show_progress_bar, batch_size=batch_size, convert_to_tensor=True,
        truncate_dim=truncate_dim, prompt_name=prompt_name, prompt=prompt,
    )
    return paraphrase_mining_embeddings(
        embeddings, query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size, max_pairs=max_pairs,
        top_k=top_k, score_function=score_function,
    )
