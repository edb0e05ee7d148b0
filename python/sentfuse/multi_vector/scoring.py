"""sentence-transformers' MaxSim family (`util.maxsim`, `maxsim_pairwise`, `mean_maxsim`, `mean_maxsim_pairwise`)
on sentfuse's maxsim ops: same inputs (lists of [tokens, dim] tensors or arrays, padded 3-D tensors, single 2-D
embeddings, masks) and results, but documents are packed instead of padded and scored tile by tile, so
`chunk_elements` has nothing to bound and is accepted for compatibility only.

Semantics kept from sentence-transformers: a padded 3-D input without a mask treats all-zero token rows as
padding; a list input counts every row of an item; a masked document token never wins a max; a document
without any token scores EMPTY_DOCUMENT_SCORE (before length normalization); scores are fp32 on the
documents' device. Masks are read as valid / not valid (nonzero is valid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _ops

EMPTY_DOCUMENT_SCORE = -1e9  # sentence-transformers' score for a document without a scoreable token


@dataclass
class TokenSide:
    """One side of a scoring call: items as a list of [n_i, D] tensors (valid tokens only) on one device."""

    items: list[torch.Tensor]
    device: torch.device | None  # where the caller's tensors live (None: numpy or empty)


def _tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if t.is_floating_point() else t.float()  # quantized embeddings score as floats


def _masks(mask: Any, count: int, name: str) -> list[torch.Tensor] | torch.Tensor | None:
    if mask is None:
        return None
    if isinstance(mask, (list, tuple)):
        if len(mask) != count:
            raise ValueError(f"`{name}` holds {len(mask)} masks for {count} items")
        return [torch.as_tensor(np.asarray(m) if not isinstance(m, torch.Tensor) else m) for m in mask]
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor, an ndarray, or a list of per-item masks, not {type(mask).__name__}")
    return mask


def _fit(mask: torch.Tensor, width: int, name: str) -> torch.Tensor:
    if mask.shape[-1] != width:
        raise ValueError(f"`{name}` covers {mask.shape[-1]} tokens, but the padded embeddings have {width}.")
    return mask


def token_side(embeddings: Any, mask: Any, name: str) -> TokenSide:
    """The valid token rows of each item of one side, from any of sentence-transformers' input forms."""
    single = isinstance(embeddings, (torch.Tensor, np.ndarray)) and embeddings.ndim == 2
    if single:
        embeddings = embeddings[None]
        if mask is not None and not isinstance(mask, (list, tuple)) and mask.ndim == 1:
            mask = mask[None]
    if isinstance(embeddings, (torch.Tensor, np.ndarray)):
        padded = _tensor(embeddings)
        if padded.ndim != 3:
            raise ValueError(f"multi-vector embeddings must be [items, tokens, dim], got shape {tuple(padded.shape)}")
        masks = _masks(mask, len(padded), name)
        if masks is None:
            valid = padded.ne(0).any(dim=-1)  # all-zero rows are padding, as sentence-transformers reads them
        elif isinstance(masks, list):
            valid = torch.nn.utils.rnn.pad_sequence([m.bool() for m in masks], batch_first=True)
            valid = _fit(valid, padded.shape[1], name).to(padded.device)
        else:
            valid = _fit(masks, padded.shape[1], name).bool().expand(len(padded), -1).to(padded.device)
        return TokenSide([row[v] for row, v in zip(padded, valid)], padded.device if isinstance(embeddings, torch.Tensor) else None)
    items = [_tensor(e) for e in embeddings]
    device = next((e.device for e in embeddings if isinstance(e, torch.Tensor)), None)
    masks = _masks(mask, len(items), name)
    if masks is not None:
        width = max((len(e) for e in items), default=0)
        rows = masks if isinstance(masks, list) else list(_fit(masks, width, name).expand(len(items), -1))
        items = [e[m[: len(e)].bool().to(e.device)] for e, m in zip(items, rows)]
    return TokenSide(items, device)


def _dim(*sides: TokenSide) -> int:
    return next((e.shape[-1] for side in sides for e in side.items if e.ndim == 2), 1)


def _common(queries: TokenSide, docs: TokenSide, device: Any) -> tuple[torch.device, torch.device, torch.dtype]:
    result = docs.device or queries.device or torch.device("cpu")
    scoring = torch.device(device) if device is not None else result
    dtypes = [e.dtype for side in (queries, docs) for e in side.items]
    dtype = dtypes[0] if dtypes else torch.float32
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dtype = torch.float32
    return result, scoring, dtype


def padded_queries(side: TokenSide, dim: int, dtype: torch.dtype, device: torch.device):
    """Queries [Q, L, D] and their mask [Q, L]: queries are few and short, so padding them costs little."""
    lengths = torch.tensor([len(e) for e in side.items], dtype=torch.long)
    width = int(lengths.max()) if len(lengths) else 0
    q = torch.zeros(len(side.items), width, dim, dtype=dtype, device=device)
    for i, e in enumerate(side.items):
        q[i, : len(e)] = e.to(device=device, dtype=dtype)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    return q, mask.to(device)


def _packed_documents(items: Sequence[torch.Tensor], dim: int, dtype: torch.dtype, device: torch.device):
    """Non-empty documents packed [T, D] with offsets [n + 1], and the positions of those documents."""
    keep = [i for i, e in enumerate(items) if len(e)]
    offsets = torch.zeros(len(keep) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(items[i]) for i in keep], dtype=torch.long).cumsum(0)
    parts = [items[i].to(device=device, dtype=dtype) for i in keep]
    tokens = torch.cat(parts) if parts else torch.zeros(0, dim, dtype=dtype, device=device)
    return tokens, offsets.to(device), torch.tensor(keep, dtype=torch.long)


def _query_counts(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=-1).clamp(min=1).float()


def maxsim(a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
           length_normalize: bool = False, device: Any = None) -> torch.Tensor:
    """[len(a), len(b)] fp32 MaxSim scores: for each query token of a[i] its best dot product with b[j]'s
    tokens, summed (divided by a[i]'s token count with length_normalize)."""
    queries, docs = token_side(a, a_mask, "a_mask"), token_side(b, b_mask, "b_mask")
    result, scoring, dtype = _common(queries, docs, device)
    dim = _dim(queries, docs)
    if len(queries.items) == 0 or len(docs.items) == 0:
        return torch.zeros(len(queries.items), len(docs.items), device=result)
    out = torch.full((len(queries.items), len(docs.items)), EMPTY_DOCUMENT_SCORE, dtype=torch.float32, device=scoring)
    q, q_mask = padded_queries(queries, dim, dtype, scoring)
    tokens, offsets, keep = _packed_documents(docs.items, dim, dtype, scoring)
    if len(keep):
        out[:, keep.to(scoring)] = _ops.maxsim(q, tokens, offsets, query_mask=q_mask)
    if length_normalize:
        out = out / _query_counts(q_mask).unsqueeze(1)
    return out.to(result)


def maxsim_pairwise(a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
                    length_normalize: bool = False, device: Any = None) -> torch.Tensor:
    """[len(a)] fp32 scores of each pair (a[i], b[i]), as maxsim defines them."""
    queries, docs = token_side(a, a_mask, "a_mask"), token_side(b, b_mask, "b_mask")
    if len(queries.items) != len(docs.items):
        raise ValueError(f"`a` and `b` must hold the same number of items to score as pairs, got "
                         f"{len(queries.items)} and {len(docs.items)}.")
    result, scoring, dtype = _common(queries, docs, device)
    if not queries.items:
        return torch.zeros(0, device=result)
    dim = _dim(queries, docs)
    q, q_mask = padded_queries(queries, dim, dtype, scoring)
    tokens, offsets, keep = _packed_documents(docs.items, dim, dtype, scoring)
    out = torch.full((len(queries.items),), EMPTY_DOCUMENT_SCORE, dtype=torch.float32, device=scoring)
    if len(keep):
        # Pair i scores query i against packed document position(i) among the non-empty ones.
        keep_dev = keep.to(scoring)
        candidates = torch.arange(len(keep), device=scoring).unsqueeze(1)
        out[keep_dev] = _ops.maxsim_candidates(q[keep_dev], tokens, offsets, candidates,
                                               query_mask=q_mask[keep_dev])[:, 0]
    if length_normalize:
        out = out / _query_counts(q_mask)
    return out.to(result)


def mean_maxsim(a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
                length_normalize: bool = True, device: Any = None) -> torch.Tensor:
    """maxsim divided by each query's token count (length_normalize=False gives plain maxsim)."""
    return maxsim(a, b, a_mask, b_mask, chunk_elements, length_normalize, device)


def mean_maxsim_pairwise(a: Any, b: Any, a_mask: Any = None, b_mask: Any = None, chunk_elements: int | None = None,
                         length_normalize: bool = True, device: Any = None) -> torch.Tensor:
    """maxsim_pairwise divided by each query's token count (length_normalize=False: plain pairwise maxsim)."""
    return maxsim_pairwise(a, b, a_mask, b_mask, chunk_elements, length_normalize, device)
