"""Similarity functions with sentence-transformers' names and result shapes."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .. import _ops


def as_embeddings(x: Any, name: str) -> torch.Tensor:
    """A 2-D floating tensor from a tensor, numpy array, list of vectors or single vector ([D] -> [1, D])."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(r, torch.Tensor) for r in x):
        x = torch.stack(list(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a tensor, numpy array or list of vectors, got {type(x).__name__}") from e
    if not x.is_floating_point():
        x = x.float()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, D] or [D], got shape {tuple(x.shape)}")
    return x


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_embeddings(a, "a"), as_embeddings(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same embedding dimension")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] cosine similarities between the rows of a and b (a zero vector scores 0)."""
    a, b = _pair(a, b)
    if a.dtype == torch.float64:
        return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    return _ops.l2_normalize(a.contiguous()) @ _ops.l2_normalize(b.contiguous()).T


def dot_score(a: Any, b: Any) -> torch.Tensor:
    """[N, M] dot products between the rows of a and b."""
    a, b = _pair(a, b)
    return a @ b.T


def euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] negative Euclidean distances (higher is more similar)."""
    a, b = _pair(a, b)
    return -torch.cdist(a.float(), b.float(), p=2.0)


def manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] negative Manhattan distances (higher is more similar)."""
    a, b = _pair(a, b)
    return -torch.cdist(a.float(), b.float(), p=1.0)


SIMILARITY_FUNCTIONS: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cosine": cos_sim,
    "dot": dot_score,
    "euclidean": euclidean_sim,
    "manhattan": manhattan_sim,
}
