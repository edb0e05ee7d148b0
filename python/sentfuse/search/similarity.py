"""Similarity functions with sentence-transformers' names, inputs and result shapes.

Every input form sentence-transformers takes is accepted: torch tensors and numpy arrays of any
floating dtype (float64 included), lists of vectors or of 1-D tensors, and a single 1-D embedding.
Row normalization is decided here once (unit_rows); the search and mining modules score the rows
scoring_rows gives them by plain dot products.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import numpy as np
import torch

from .. import _ops
from .._checks import check_metric

# Dtypes the kernels read; other floating inputs are scored in float32.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """A floating tensor from a tensor, numpy array, or (nested) list of numbers, arrays or tensors."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(r, torch.Tensor) for r in x):
        x = torch.stack(list(x))
    elif isinstance(x, (list, tuple)) and x and all(isinstance(r, np.ndarray) for r in x):
        x = torch.from_numpy(np.stack(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor, numpy array or list of vectors, got {type(x).__name__}") from e
    if not x.is_floating_point():
        x = x.float()
    return x


def as_embeddings(x: Any, name: str) -> torch.Tensor:
    """A 2-D floating tensor [N, D] from any input as_tensor takes; a single vector [D] becomes [1, D]."""
    x = as_tensor(x, name)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, D] or [D], got shape {tuple(x.shape)}")
    return x


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x scaled to unit L2 norm along its last dimension (zero rows stay zero), in x's dtype.

    The fused kernel takes 2-D float32/16/bf16 rows on CPU or CUDA without gradients; anything else
    (float64, autograd, other devices or shapes) goes through torch.nn.functional.normalize.
    """
    if x.dim() == 2 and x.dtype in KERNEL_DTYPES and x.device.type in ("cpu", "cuda") and not x.requires_grad:
        return _ops.l2_normalize(x.contiguous())
    return torch.nn.functional.normalize(x, p=2, dim=-1)


def normalize_embeddings(embeddings: Any) -> torch.Tensor:
    """embeddings [..., D] (tensor or array) scaled to unit length along the last dimension, in their dtype."""
    return unit_rows(as_tensor(embeddings, "embeddings"))


def scoring_rows(x: torch.Tensor, metric: str) -> torch.Tensor:
    """float32 rows whose plain dot products are the metric's scores: unit rows for cosine, x for dot."""
    x = x.float().contiguous()
    return unit_rows(x) if check_metric(metric) == "cosine" else x


def _matched(a: Any, b: Any, pair: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b on a's device in one dtype, float32 at least (half-precision products would round scores
    into ties, as sentence-transformers avoids too); as [N, D] unless pair (pairwise functions keep shapes)."""
    convert = as_tensor if pair else as_embeddings
    a, b = convert(a, "a"), convert(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same embedding dimension")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] cosine similarities between the rows of a and b (a zero vector scores 0)."""
    a, b = _matched(a, b)
    return unit_rows(a) @ unit_rows(b).T


def pytorch_cos_sim(a: Any, b: Any) -> torch.Tensor:
    """cos_sim under sentence-transformers' older name."""
    return cos_sim(a, b)


def dot_score(a: Any, b: Any) -> torch.Tensor:
    """[N, M] dot products between the rows of a and b."""
    a, b = _matched(a, b)
    return a @ b.T


def euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] negative Euclidean distances (higher is more similar)."""
    a, b = _matched(a, b)
    return -torch.cdist(a, b, p=2.0)


def manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """[N, M] negative Manhattan distances (higher is more similar)."""
    a, b = _matched(a, b)
    return -torch.cdist(a, b, p=1.0)


def pairwise_cos_sim(a: Any, b: Any) -> torch.Tensor:
    """[N] cosine similarity of a[i] and b[i]."""
    a, b = _matched(a, b, pair=True)
    return (unit_rows(a) * unit_rows(b)).sum(dim=-1)


def pairwise_dot_score(a: Any, b: Any) -> torch.Tensor:
    """[N] dot product of a[i] and b[i]."""
    a, b = _matched(a, b, pair=True)
    return (a * b).sum(dim=-1)


def pairwise_euclidean_sim(a: Any, b: Any) -> torch.Tensor:
    """[N] negative Euclidean distance between a[i] and b[i]."""
    a, b = _matched(a, b, pair=True)
    return -torch.linalg.vector_norm(a - b, dim=-1)


def pairwise_manhattan_sim(a: Any, b: Any) -> torch.Tensor:
    """[N] negative Manhattan distance between a[i] and b[i]."""
    a, b = _matched(a, b, pair=True)
    return -(a - b).abs().sum(dim=-1)


def pairwise_angle_sim(x: Any, y: Any) -> torch.Tensor:
    """[N] AnglE similarity |cos + sin| of x[i] and y[i] (unit rows; the sine pairs feature j with j + D/2,
    an odd D padded by one zero), as sentence-transformers scores AnglELoss."""
    x, y = _matched(x.to_dense() if getattr(x, "is_sparse", False) else x,
                    y.to_dense() if getattr(y, "is_sparse", False) else y, pair=True)
    if x.shape[-1] % 2:
        x, y = torch.nn.functional.pad(x, (0, 1)), torch.nn.functional.pad(y, (0, 1))
    x, y = unit_rows(x), unit_rows(y)
    half = x.shape[-1] // 2
    sines = (x[..., half:] * y[..., :half] - x[..., :half] * y[..., half:]).sum(dim=-1)
    return ((x * y).sum(dim=-1) + sines).abs()


SIMILARITY_FUNCTIONS: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cosine": cos_sim,
    "dot": dot_score,
    "euclidean": euclidean_sim,
    "manhattan": manhattan_sim,
}

PAIRWISE_SIMILARITY_FUNCTIONS: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cosine": pairwise_cos_sim,
    "dot": pairwise_dot_score,
    "euclidean": pairwise_euclidean_sim,
    "manhattan": pairwise_manhattan_sim,
}

# The score functions the top-k and pair kernels compute, by metric name (the rest are called chunk by chunk).
KERNEL_SCORE_FUNCTIONS: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    name: SIMILARITY_FUNCTIONS[name] for name in ("cosine", "dot")
}

# The score functions the kernels compute, by name, so that sentence-transformers' own cos_sim and
# dot_score (what its users pass) take the kernels too.
_KERNEL_FUNCTION_NAMES = {"cos_sim": "cosine", "pytorch_cos_sim": "cosine", "dot_score": "dot"}


def metric_of(score_function: Callable) -> str | None:
    """"cosine" or "dot" for sentfuse's or sentence-transformers' cos_sim / dot_score; None for any other
    callable (scored by calling it)."""
    if not callable(score_function):
        raise TypeError(f"score_function must be a callable such as cos_sim or dot_score, got {score_function!r}")
    module = getattr(score_function, "__module__", None) or ""
    if module.split(".")[0] not in ("sentfuse", "sentence_transformers"):
        return None
    return _KERNEL_FUNCTION_NAMES.get(getattr(score_function, "__name__", None))


class SimilarityFunction(Enum):
    """The similarity functions by name, as sentence-transformers' enum of the same name (DOT is DOT_PRODUCT)."""

    COSINE = "cosine"
    DOT_PRODUCT = "dot"
    DOT = "dot"
    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"

    @staticmethod
    def to_similarity_fn(similarity_function: str | SimilarityFunction) -> Callable[[Any, Any], torch.Tensor]:
        """The [N, M] function of a name or member (e.g. "cosine" -> cos_sim)."""
        return SIMILARITY_FUNCTIONS[_similarity_key(similarity_function)]

    @staticmethod
    def to_similarity_pairwise_fn(similarity_function: str | SimilarityFunction) -> Callable[[Any, Any], torch.Tensor]:
        """The [N] pairwise function of a name or member (e.g. "cosine" -> pairwise_cos_sim)."""
        return PAIRWISE_SIMILARITY_FUNCTIONS[_similarity_key(similarity_function)]

    @staticmethod
    def possible_values() -> list[str]:
        return [member.value for member in SimilarityFunction]


def similarity_name(value: Any) -> Any:
    """value's name when it is a member of sentfuse's or sentence-transformers' SimilarityFunction enum, else
    value unchanged (the caller checks it against its own names)."""
    return value.value if isinstance(value, Enum) else value


def _similarity_key(value: Any) -> str:
    name = similarity_name(value)
    if name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity_function must be one of {', '.join(SIMILARITY_FUNCTIONS)}, got {value!r}")
    return name
