"""Community detection with sentence-transformers' results: groups of rows around a central row.

community_detection returns what sentence-transformers' function of the same name returns on the same
input (up to ties and float rounding), from every row's neighbours above the threshold: found at once
by threshold_pairs (method "pairs"), or by cosine_topk with k grown for crowded rows (method "topk").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _ops
from .._checks import check_finite, check_threshold, positive_int
from . import prefix_bound
from .similarity import as_embeddings, scoring_rows
from .sort_keys import descending_keys, stable_argsort

__all__ = ["community_detection"]

# Most (score, index) entries one cosine_topk call returns while growing k.
_TOPK_ENTRIES = 1 << 22
METHODS = ("pairs", "topk")


def _neighbours_from_pairs(
    x: torch.Tensor, threshold: float, min_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centers, member lists, list starts, list sizes) from threshold_pairs: every row's neighbours,
    itself included, best first."""
    n = len(x)
    pairs = prefix_bound.self_pairs(x, threshold)
    if x.is_cuda:
        src, dst = _edges_by_row_on_device(x, threshold, *pairs)
    else:
        rows, cols, scores = (t.cpu().numpy() for t in pairs)
        self_scores = torch.linalg.vector_norm(x, dim=1).square().cpu().numpy()  # 1, or 0 for a zero row
        self_rows = np.flatnonzero(self_scores >= threshold)
        # Every row's edges in increasing other-row order (the pairs come sorted by (row, col), row < col), so
        # one stable sort by (row, score descending) leaves them in (row, score descending, other row) order:
        # numpy's three-key lexsort took ~30% of the call on 20,000 rows, its stable argsort ~12%. + 0.0 makes -0.0
        # a plain 0.
        src = np.concatenate([cols, self_rows, rows])
        dst = np.concatenate([rows, self_rows, cols])
        edge_scores = np.concatenate([scores, self_scores[self_rows], scores]) + np.float32(0.0)
        order = stable_argsort((src.astype(np.int64) << 32) | descending_keys(edge_scores))
        src, dst = src[order], dst[order]
    counts = np.bincount(src, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    centers = np.flatnonzero(counts >= min_size)
    return centers, dst, starts[centers], counts[centers]


def _edges_by_row_on_device(
    x: torch.Tensor, threshold: float, rows: torch.Tensor, cols: torch.Tensor, scores: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The CPU path's edge order (row, score descending, other row) with stable sorts where the pairs are:
    on a GPU tens of millions of edges sort in milliseconds, where numpy's lexsort takes seconds."""
    self_scores = torch.linalg.vector_norm(x, dim=1).square()  # 1, or 0 for a zero row
    self_rows = torch.nonzero(self_scores >= threshold).flatten()
    src = torch.cat([rows, cols, self_rows])
    dst = torch.cat([cols, rows, self_rows])
    edge_scores = torch.cat([scores, scores, self_scores[self_rows]])
    order = torch.argsort(dst, stable=True)
    order = order[torch.argsort(edge_scores[order], descending=True, stable=True)]
    order = order[torch.argsort(src[order], stable=True)]
    return src[order].cpu().numpy(), dst[order].cpu().numpy()


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
    threshold = check_threshold(threshold)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    positive_int(min_community_size, "min_community_size", allow_none=False)
    positive_int(batch_size, "batch_size", allow_none=False)
    x = as_embeddings(embeddings, "embeddings")
    n = len(x)
    if n < min_community_size:
        return []
    check_finite(x, "embeddings")
    x = scoring_rows(x, "cosine")

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
