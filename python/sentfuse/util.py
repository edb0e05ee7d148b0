"""sentence-transformers' `util` functions for embeddings, under the same names and with the same results:
`from sentfuse import util` replaces `from sentence_transformers import util`.

cos_sim / dot_score search, paraphrase mining and community detection run on sentfuse's kernels.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from ._checks import positive_int
from .encode.quantize import quantize_embeddings
from .multi_vector.scoring import maxsim, maxsim_pairwise, mean_maxsim, mean_maxsim_pairwise
from .search import (
    community_detection,
    cos_sim,
    dot_score,
    euclidean_sim,
    manhattan_sim,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
    paraphrase_mining,
    paraphrase_mining_embeddings,
    pytorch_cos_sim,
    semantic_search,
)
from .search.similarity import normalize_embeddings

__all__ = [
    "batch_to_device",
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "maxsim",
    "maxsim_pairwise",
    "mean_maxsim",
    "mean_maxsim_pairwise",
    "normalize_embeddings",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "pytorch_cos_sim",
    "quantize_embeddings",
    "semantic_search",
    "truncate_embeddings",
]

Embeddings = TypeVar("Embeddings", np.ndarray, torch.Tensor)


def truncate_embeddings(embeddings: Embeddings, truncate_dim: int | None) -> Embeddings:
    """The first truncate_dim features of each embedding (a view); None keeps them all."""
    return embeddings[..., : positive_int(truncate_dim, "truncate_dim")]


def batch_to_device(batch: dict[str, Any], target_device: str | torch.device) -> dict[str, Any]:
    """Every tensor value of batch moved to target_device, in place; the batch is returned."""
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value.to(target_device)
    return batch
