"""Similarity matrices, paraphrase mining and community detection with sentence-transformers' results.

paraphrase_mining_embeddings and community_detection return what sentence-transformers' functions of
the same names return on the same input (up to ties and float rounding), but get their candidates
from the cosine_topk kernel: no query x corpus score matrix and no per-candidate Python loop.
similarity_matrix writes the full matrix chunk by chunk into an array the caller gives, such as a
numpy memmap for matrices larger than memory.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _ops
from . import prune
from .topk import _is_dot_product
from .similarity import as_embeddings, cos_sim

__all__ = ["community_detection", "paraphrase_mining", "paraphrase_mining_embeddings", "similarity_matrix"]

_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16)}
# Bytes of fp32 scores one similarity_matrix chunk holds when chunk_size is not given.
_CHUNK_BYTES = 64 << 20
# Most (score, index) entries one cosine_topk call returns while growing k for community detection.
_TOPK_ENTRIES = 1 << 22
# paraphrase mining looks for its answer among the pairs above a sampled cutoff while those are at most
# this share of all pairs; beyond it (few rows, or max_pairs near the number of pairs) it takes top-k.
_MAX_ABOVE_SHARE = 0.25


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_threshold(threshold: Any, name: str = "threshold", cosine: bool = True) -> float:
    """A cosine threshold must lie in [-1, 1]; a dot-product one (cosine=False) must be finite."""
    expected = "a number in [-1, 1]" if cosine else "a finite number"
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {threshold!r}") from None
    if cosine and not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [-1, 1] (a cosine similarity), got {threshold!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be {expected}, got {threshold!r}")
    return value


def _torch_dtype(dtype: Any) -> torch.dtype:
    """torch.float32 / torch.float16 from a torch dtype, numpy dtype or dtype name."""
    if isinstance(dtype, torch.dtype):
        found = dtype if dtype in _NUMPY_DTYPES else None
    else:
        try:
            found = {v: k for k, v in _NUMPY_DTYPES.items()}.get(np.dtype(dtype))
        except TypeError:
            found = None
    if found is None:
        raise ValueError(f"dtype must be float32 or float16 (torch or numpy), got {dtype!r}")
    return found


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return _ops.l2_normalize(x.to(torch.float32).contiguous())


def _check_out(out: Any, shape: tuple[int, int], dtype: torch.dtype) -> None:
    expected = f"expected shape {shape} and dtype {str(dtype).replace('torch.', '')}"
    if isinstance(out, torch.Tensor):
        found_dtype = str(out.dtype).replace("torch.", "")
        ok_dtype = out.dtype == dtype
    elif isinstance(out, np.ndarray):
        found_dtype = str(out.dtype)
        ok_dtype = out.dtype == _NUMPY_DTYPES[dtype]
        if not out.flags.writeable:
            raise ValueError(f"out is a read-only numpy array (open a memmap with mode 'w+' or 'r+'); {expected}")
    else:
        raise TypeError(f"out must be a torch tensor or numpy array (memmap included), got {type(out).__name__}")
    if tuple(out.shape) != shape or not ok_dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {found_dtype}; {expected}")


def similarity_matrix(
    a: Any,
    b: Any = None,
    *,
    out: torch.Tensor | np.ndarray | None = None,
    dtype: Any = torch.float32,
    chunk_size: int | None = None,
    show_progress_bar: bool = False,
) -> torch.Tensor | np.ndarray:
    """Cosine similarities of the rows of a [N, D] and b [M, D] (b=None: a with itself) -> out [N, M].

    Written chunk_size rows at a time into out: a torch tensor or numpy array of shape (N, M) and
    the given dtype (float32 or float16), such as a numpy memmap opened with mode 'w+' for a matrix
    larger than memory. out=None allocates a tensor on a's device. Scores are computed in fp32;
    chunk_size=None picks about 64 MB of scores per chunk. Returns out.
    """
    dtype = _torch_dtype(dtype)
    a = as_embeddings(a, "a")
    b_rows = a if b is None else as_embeddings(b, "b")
    if a.shape[1] != b_rows.shape[1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b_rows.shape)} must have the same embedding dimension")
    if chunk_size is not None:
        _check_int(chunk_size, "chunk_size", 1)
    shape = (a.shape[0], b_rows.shape[0])
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=a.device)
    else:
        _check_out(out, shape, dtype)
    n, m = shape
    if n == 0 or m == 0:
        return out

    b_unit = _normalized(b_rows.to(a.device))
    rows = chunk_size or max(1, _CHUNK_BYTES // (4 * m))
    for start in tqdm(range(0, n, rows), desc="Similarity matrix", unit="chunk", disable=not show_progress_bar):
        stop = min(start + rows, n)
        a_unit = b_unit[start:stop] if b is None else _normalized(a[start:stop])
        block = torch.mm(a_unit, b_unit.T).to(dtype)
        if isinstance(out, torch.Tensor):
            out[start:stop].copy_(block)
        else:
            out[start:stop] = block.cpu().numpy()
    if isinstance(out, np.memmap):
        out.flush()
    return out


def _top_pairs(
    lo: np.ndarray, hi: np.ndarray, scores: np.ndarray, n: int, max_pairs: int, distinct: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unordered pair once (its first occurrence, as sentence-transformers keeps the first score it
    sees; distinct=True says the pairs already are), then the max_pairs best, sorted by score descending
    and (i, j) ascending on ties."""
    if not distinct:
        _, first = np.unique(lo * n + hi, return_index=True)
        lo, hi, scores = lo[first], hi[first], scores[first]
    if len(scores) > max_pairs:
        keep = np.argpartition(-scores, max_pairs - 1)[:max_pairs]
        lo, hi, scores = lo[keep], hi[keep], scores[keep]
    order = np.lexsort((hi, lo, -scores))
    return lo[order], hi[order], scores[order]


def _as_lists(*columns: np.ndarray) -> list[list]:
    """Rows of the columns as Python lists; the garbage collector is paused, as it would otherwise scan
    the growing result again and again (half a million small lists took twice as long with it on)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(map(list, zip(*(c.tolist() for c in columns))))
    finally:
        if enabled:
            gc.enable()


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
    kept once, and the max_pairs best are returned. score_function is cos_sim or dot_score.
    min_score (sentfuse only) also drops pairs scoring below it; the work then follows the number of
    pairs above it (near-duplicate mining). When max_pairs is small next to all pairs, the answer
    comes from the pairs above a sampled cutoff (each pair scored once, see _mine_above_cutoff);
    otherwise query_chunk_size rows are searched per top-k kernel call (it bounds the candidate
    memory). corpus_chunk_size is accepted for compatibility; the kernels tile the corpus themselves.
    """
    _check_int(query_chunk_size, "query_chunk_size", 1)
    _check_int(corpus_chunk_size, "corpus_chunk_size", 1)
    _check_int(max_pairs, "max_pairs", 0)
    _check_int(top_k, "top_k", 0)
    dot = _is_dot_product(score_function)
    if min_score is not None:
        min_score = _check_threshold(min_score, "min_score", cosine=not dot)
    x = as_embeddings(embeddings, "embeddings")
    n = len(x)
    if n < 2 or top_k == 0 or max_pairs == 0:
        return []
    # Every path below scores plain dot products of these fp32 rows: unit rows for cos_sim.
    x = x.float().contiguous() if dot else _normalized(x)

    if min_score is not None:
        return _as_lists(*_best_listed(x, min_score, top_k, max_pairs)[:3])
    above = _mine_above_cutoff(x, top_k, max_pairs)
    if above is not None:
        return _as_lists(*above)
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    kept = (empty_i, empty_i, empty_f)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_size = 0
    for start in range(0, n, query_chunk_size):
        queries = x[start : start + query_chunk_size]
        scores, indices = _ops.cosine_topk(queries, x, top_k, metric="dot", exclude_self=True, query_offset=start)
        scores, indices = scores.cpu().numpy(), indices.cpu().numpy()
        rows = np.broadcast_to(np.arange(start, start + len(queries))[:, None], indices.shape)
        found = indices >= 0
        rows, cols, scores = rows[found], indices[found], scores[found]
        pending.append((np.minimum(rows, cols), np.maximum(rows, cols), scores))
        pending_size += len(scores)
        # Compacting keeps memory near max_pairs; a pair dropped here could only come back with the same score.
        if pending_size > max(4 * max_pairs, 1 << 22):
            kept = _top_pairs(*(np.concatenate(p) for p in zip(kept, *pending)), n, max_pairs)
            pending, pending_size = [], 0
    lo, hi, scores = _top_pairs(*(np.concatenate(p) for p in zip(kept, *pending)), n, max_pairs)
    return _as_lists(scores, lo, hi)


def _descending_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys that sort fp32 scores in descending order (-0.0 and 0.0 apart, which no score here tells)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))  # the usual float-to-int order
    return ~ascending


def _within_top_k(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, n: int, top_k: int) -> np.ndarray:
    """For pairs (i, j), i < j, in (i, j) order, listing every pair scoring >= some cutoff: whether j is among
    i's top_k others or i among j's (ties: lower index first, as cosine_topk ranks). Every row that
    outranks j in i's list scores at least as high, so it is listed too, and ranks can be counted within
    the list."""
    # Each pair from both ends: (j, i) first, so that a row's entries already come in increasing other index.
    src = np.concatenate([cols, rows])
    within = np.bincount(src, minlength=n)[src] <= top_k  # a row listed at most top_k times keeps them all
    crowded = np.flatnonzero(~within)
    if len(crowded):
        # One stable sort by (row, score descending) ranks the crowded rows' entries; ties keep index order.
        keys = (src[crowded].astype(np.int64) << 32) | _descending_keys(np.concatenate([scores, scores])[crowded])
        order = torch.sort(torch.from_numpy(keys), stable=True).indices.numpy()
        grouped = src[crowded][order]
        position = np.arange(len(order))
        group_start = np.maximum.accumulate(np.where(np.r_[True, grouped[1:] != grouped[:-1]], position, 0))
        within[crowded[order]] = position - group_start < top_k
    return within[len(rows) :] | within[: len(rows)]


def _best_listed(
    x: torch.Tensor, cutoff: float, top_k: int, max_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(scores, i, j) of the max_pairs best pairs scoring >= cutoff that are in a row's top_k, and how many
    pairs qualified."""
    rows, cols, scores = (t.cpu().numpy() for t in prune.self_pairs(x, cutoff, seed=seed))
    keep = _within_top_k(rows, cols, scores, len(x), top_k)
    lo, hi, best = _top_pairs(rows[keep], cols[keep], scores[keep], len(x), max_pairs, distinct=True)
    return best, lo, hi, int(keep.sum())


def _mine_above_cutoff(
    x: torch.Tensor, top_k: int, max_pairs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """paraphrase mining's answer (scores, i, j) from the pairs scoring >= a cutoff, or None when no
    affordable cutoff leaves max_pairs of them.

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
        cutoff = prune.pair_score_quantile(x, wanted / total, seed=attempt)
        best, lo, hi, qualified = _best_listed(x, cutoff, top_k, max_pairs, seed=attempt)
        if qualified >= max_pairs:
            return best, lo, hi
        wanted *= 4
    return None


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


def _neighbours_from_pairs(
    x: torch.Tensor, threshold: float, min_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centers, member lists, list starts, list sizes) from threshold_pairs: every row's neighbours,
    itself included, best first."""
    n = len(x)
    rows, cols, scores = (t.cpu().numpy() for t in prune.self_pairs(x, threshold))
    self_scores = torch.linalg.vector_norm(x, dim=1).square().cpu().numpy()  # 1, or 0 for a zero row
    self_rows = np.flatnonzero(self_scores >= threshold)
    src = np.concatenate([rows, cols, self_rows])
    dst = np.concatenate([cols, rows, self_rows])
    edge_scores = np.concatenate([scores, scores, self_scores[self_rows]])
    order = np.lexsort((dst, -edge_scores, src))
    src, dst = src[order], dst[order]
    counts = np.bincount(src, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    centers = np.flatnonzero(counts >= min_size)
    return centers, dst, starts[centers], counts[centers]


def _neighbours_from_topk(
    x: torch.Tensor, threshold: float, min_size: int, batch_size: int, show_progress_bar: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centers, member lists, list starts, list sizes) from cosine_topk with min_score=threshold, best first: the
    rows with at least min_size neighbours (themselves included), k grown for rows that fill it."""
    n = len(x)
    first_k = min(max(2 * min_size, 64), n)
    centers, lists = [], []
    for start in tqdm(range(0, n, batch_size), desc="Finding clusters", disable=not show_progress_bar):
        _, indices = _ops.cosine_topk(x[start : start + batch_size], x, first_k, metric="dot", min_score=threshold)
        indices = indices.cpu()
        found = (indices >= 0).sum(1)
        rows = torch.arange(start, start + len(indices))
        full = found == first_k if first_k < n else torch.zeros(len(rows), dtype=torch.bool)
        done = (found >= min_size) & ~full
        centers.append(rows[done])
        lists.append(indices[done])
        k, pending = first_k, rows[full]
        while len(pending):
            k = min(4 * k, n)
            still_full = []
            for sub in pending.split(max(1, _TOPK_ENTRIES // k)):
                _, grown = _ops.cosine_topk(x[sub.to(x.device)], x, k, metric="dot", min_score=threshold)
                grown = grown.cpu()
                saturated = grown[:, -1] >= 0 if k < n else torch.zeros(len(sub), dtype=torch.bool)
                centers.append(sub[~saturated])
                lists.append(grown[~saturated])
                still_full.append(sub[saturated])
            pending = torch.cat(still_full)

    sizes = torch.cat([(block >= 0).sum(1) for block in lists]).numpy()
    members = np.concatenate([block[block >= 0].numpy() for block in lists])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return torch.cat(centers).numpy(), members, starts, sizes


def community_detection(
    embeddings: Any,
    threshold: float = 0.75,
    min_community_size: int = 10,
    batch_size: int = 1024,
    show_progress_bar: bool = False,
    method: str = "pairs",
) -> list[list[int]]:
    """Groups of rows whose cosine similarity to a central row is >= threshold, as sentence-transformers finds them.

    Every row with at least min_community_size rows scoring >= threshold against it (itself
    included) proposes a community: itself first, then those rows by descending score. Largest
    proposals first (ties: lower center first), a proposal is skipped when its center is taken and
    otherwise loses the rows already taken; it is kept if min_community_size rows remain. Returns
    the kept communities, largest first.

    method "pairs" (the default, fastest) finds every pair above threshold at once with
    threshold_pairs, so its memory follows the number of such pairs; "topk" searches batch_size rows
    per cosine_topk call and grows k only for rows that fill it, which bounds memory at low thresholds.
    """
    threshold = _check_threshold(threshold)
    if method not in ("pairs", "topk"):
        raise ValueError(f"method must be 'pairs' or 'topk', got {method!r}")
    _check_int(min_community_size, "min_community_size", 1)
    _check_int(batch_size, "batch_size", 1)
    x = as_embeddings(embeddings, "embeddings")
    n = len(x)
    if n < min_community_size:
        return []
    x = _normalized(x)

    if method == "pairs":
        centers, members, starts, sizes = _neighbours_from_pairs(x, threshold, min_community_size)
    else:
        centers, members, starts, sizes = _neighbours_from_topk(
            x, threshold, min_community_size, batch_size, show_progress_bar
        )
    # Largest proposal first, ties by center (sentence-transformers' stable sort of center-ordered proposals).
    order = np.lexsort((centers, -sizes))
    used = np.zeros(n, dtype=bool)
    communities = []
    for center, start, size in zip(centers[order].tolist(), starts[order].tolist(), sizes[order].tolist()):
        if used[center]:
            continue
        community = members[start : start + size]
        community = community[~used[community]]
        if len(community) >= min_community_size:
            kept = [center] + community[community != center].tolist()
            used[kept] = True
            communities.append(kept)
    return sorted(communities, key=len, reverse=True)
