"""Sparse vectors as encode collects and returns them, and the helpers that read them (decode, sparsity,
similarity inputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def keep_largest(x: torch.Tensor, k: int | None) -> torch.Tensor:
    """x [B, V] with all but the k largest-magnitude values of each row set to zero (max_active_dims)."""
    if k is None or k >= x.shape[1]:
        return x
    top = torch.topk(x.abs(), k, dim=1).indices
    return torch.zeros_like(x).scatter_(1, top, x.gather(1, top))


class SparseRows:
    """Rows of a [N, V] result gathered batch by batch as (row, column, value) triples: memory grows with the
    non-zeros, never N x V, until a dense result is asked for."""

    def __init__(self, num_rows: int, num_cols: int, device: torch.device) -> None:
        self.shape = (num_rows, num_cols)
        self.device = device
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, positions: torch.Tensor, x: torch.Tensor, max_active_dims: int | None) -> None:
        """positions [B]: the rows the batch's vectors x [B, V] belong to."""
        x = keep_largest(x, max_active_dims)
        nz = x.nonzero()  # row-major, so each row's columns come sorted
        indices = torch.stack([positions[nz[:, 0]], nz[:, 1]])
        self._parts.append((indices, x[nz[:, 0], nz[:, 1]]))

    def to_tensor(self, sparse: bool) -> torch.Tensor:
        """One [N, V] fp32 tensor: sparse COO (coalesced) or dense."""
        if self._parts:
            indices = torch.cat([i for i, _ in self._parts], dim=1)
            values = torch.cat([v for _, v in self._parts])
        else:
            indices = torch.zeros(2, 0, dtype=torch.long, device=self.device)
            values = torch.zeros(0, device=self.device)
        coo = torch.sparse_coo_tensor(indices, values, self.shape, check_invariants=False).coalesce()
        return coo if sparse else coo.to_dense()

    @staticmethod
    def split(coo: torch.Tensor) -> list[torch.Tensor]:
        """A coalesced [N, V] COO tensor as N sparse [V] tensors."""
        rows, cols = coo.indices()
        counts = torch.bincount(rows, minlength=coo.shape[0]).tolist()
        return [torch.sparse_coo_tensor(c.unsqueeze(0), v, (coo.shape[1],), check_invariants=False).coalesce()
                for c, v in zip(cols.split(counts), coo.values().split(counts))]


def as_dense_rows(embeddings: Any, name: str) -> torch.Tensor:
    """[N, V] dense fp32 from a sparse or dense tensor ([V] or [N, V]), a list of them, or a numpy array."""
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(embeddings)
    if isinstance(embeddings, (list, tuple)):
        if not embeddings:
            raise ValueError(f"{name} is empty")
        embeddings = torch.stack([as_dense_rows(e, name)[0] for e in embeddings])
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, a list of tensors or a numpy array, got {type(embeddings).__name__}")
    x = embeddings.to_dense() if embeddings.layout != torch.strided else embeddings
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [dim] or [rows, dim], got shape {tuple(x.shape)}")
    return x.float()


def decode_rows(embeddings: torch.Tensor, tokenizer: Any, top_k: int | None):
    """(token, weight) pairs per vector, largest weight first (ties: lower token id first)."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() not in (1, 2):
        raise ValueError(f"embeddings must be [vocab] or [rows, vocab], got shape {tuple(embeddings.shape)}")
    rows = as_dense_rows(embeddings, "embeddings").cpu()
    result = []
    for row in rows:
        ids = row.nonzero().squeeze(1)
        values, order = torch.sort(row[ids], descending=True, stable=True)
        if top_k is not None:
            values, order = values[:top_k], order[:top_k]
        tokens = tokenizer.convert_ids_to_tokens(ids[order].tolist())
        result.append(list(zip(tokens, values.tolist())))
    return result[0] if embeddings.dim() == 1 else result


def sparsity_stats(embeddings: torch.Tensor) -> dict[str, float]:
    """{"active_dims": mean non-zeros per row, "sparsity_ratio": mean share of zeros}, as sentence-transformers."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() not in (1, 2):
        raise ValueError(f"embeddings must be [vocab] or [rows, vocab], got shape {tuple(embeddings.shape)}")
    rows = embeddings if embeddings.dim() == 2 else embeddings.unsqueeze(0)
    num_rows, num_cols = rows.shape
    if num_rows == 0 or num_cols == 0:
        return {"active_dims": 0.0, "sparsity_ratio": 1.0}
    if rows.layout == torch.strided:
        active = float((rows != 0).sum()) / num_rows
    else:
        coalesced = rows.coalesce()
        active = float((coalesced.values() != 0).sum()) / num_rows
    return {"active_dims": active, "sparsity_ratio": 1.0 - active / num_cols}
