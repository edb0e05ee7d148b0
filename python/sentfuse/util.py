"""sentence-transformers' `util` functions for embeddings, under the same names and with the same results:
`from sentfuse import util` replaces `from sentence_transformers import util`.

cos_sim / dot_score search, paraphrase mining and community detection run on sentfuse's kernels.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ._checks import device_or_default, positive_int
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
from .search.hard_negatives import mine_hard_negatives
from .search.similarity import SimilarityFunction, normalize_embeddings, pairwise_angle_sim
from .sparse.vectors import keep_largest

__all__ = [
    "LoggingHandler",
    "SimilarityFunction",
    "batch_to_device",
    "community_detection",
    "compute_count_vector",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "get_device_name",
    "information_retrieval",
    "is_sentence_transformer_model",
    "manhattan_sim",
    "maxsim",
    "maxsim_pairwise",
    "mean_maxsim",
    "mean_maxsim_pairwise",
    "mine_hard_negatives",
    "normalize_embeddings",
    "pairwise_angle_sim",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "pytorch_cos_sim",
    "quantize_embeddings",
    "select_max_active_dims",
    "semantic_search",
    "similarity_fct_name",
    "to_scipy_coo",
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


def information_retrieval(*args: Any, **kwargs: Any) -> list[list[dict[str, int | float]]]:
    """semantic_search, under sentence-transformers' deprecated name."""
    return semantic_search(*args, **kwargs)


def get_device_name() -> str:
    """The device a model goes to when none is given: "cuda" where torch sees one, else "cpu"."""
    return str(device_or_default(None))


def select_max_active_dims(embeddings: Embeddings, max_active_dims: int | None) -> Embeddings | torch.Tensor:
    """A copy of embeddings [..., V] as a tensor keeping each vector's max_active_dims largest-magnitude values
    (the rest zero); None returns embeddings unchanged."""
    if positive_int(max_active_dims, "max_active_dims") is None:
        return embeddings
    x = torch.as_tensor(embeddings)
    x = x.to_dense() if x.is_sparse else x
    return keep_largest(x.reshape(-1, x.shape[-1]), max_active_dims).reshape(x.shape)


def to_scipy_coo(x: torch.Tensor) -> Any:
    """A 2-D sparse COO tensor as a scipy.sparse.coo_matrix of the same shape and values."""
    from scipy.sparse import coo_matrix

    if not isinstance(x, torch.Tensor) or not x.is_sparse or x.dim() != 2:
        raise ValueError(f"x must be a 2-D sparse COO tensor, got {getattr(x, 'shape', type(x).__name__)}")
    x = x.coalesce()
    rows, cols = x.indices().cpu().numpy()
    values = x.values().cpu()
    return coo_matrix(((values.float() if values.dtype == torch.bfloat16 else values).numpy(), (rows, cols)),
                      shape=tuple(x.shape))


def compute_count_vector(embeddings: torch.Tensor) -> torch.Tensor:
    """int32 [V]: how many of the vectors ([V] or [N, V], sparse or dense) are non-zero in each dimension."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() not in (1, 2):
        raise ValueError(f"embeddings must be a [V] or [N, V] tensor, got {getattr(embeddings, 'shape', embeddings)}")
    dense = embeddings.to_dense() if embeddings.is_sparse else embeddings
    return (dense != 0).reshape(-1, dense.shape[-1]).sum(dim=0, dtype=torch.int32)


def similarity_fct_name(similarity_fct: Callable) -> str:
    """A score function's name for logs and configs: cos_sim -> "cos_sim"; a functools.partial with its bound
    keywords; a model's similarity / similarity_pairwise -> the function its similarity_fn_name selects."""
    if isinstance(similarity_fct, functools.partial):
        name = getattr(similarity_fct.func, "__name__", type(similarity_fct.func).__name__)
        bound = ", ".join(f"{k}={v!r}" for k, v in similarity_fct.keywords.items())
        return f"{name}({bound})" if bound else name
    name = getattr(similarity_fct, "__name__", type(similarity_fct).__name__)
    owner = getattr(similarity_fct, "__self__", None)
    if name in ("similarity", "similarity_pairwise") and hasattr(owner, "similarity_fn_name"):
        pick = SimilarityFunction.to_similarity_fn if name == "similarity" else SimilarityFunction.to_similarity_pairwise_fn
        return pick(owner.similarity_fn_name).__name__
    return name


def is_sentence_transformer_model(
    model_name_or_path: str,
    token: bool | str | None = None,
    cache_folder: str | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> bool:
    """Whether a folder or Hugging Face Hub model has a modules.json (a sentence-transformers model)."""
    folder = Path(model_name_or_path).expanduser()
    if folder.is_dir():
        return (folder / "modules.json").is_file()
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model_name_or_path, "modules.json", token=token, cache_dir=cache_folder, revision=revision,
                        local_files_only=local_files_only)
    except Exception:  # not found, not cached, gated or unreachable: huggingface_hub raises several types
        return False
    return True


class LoggingHandler(logging.Handler):
    """A logging handler that writes through tqdm, so log lines do not break progress bars."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
            self.flush()
        except Exception:
            self.handleError(record)
