"""Thin wrappers over torch.ops.sentfuse.* and the fake kernels that let them trace under torch.compile."""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loading the library registers the ops)

WITH_CUDA: bool = bool(_C.WITH_CUDA)


def masked_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """Pool hidden [B, L, H] over the tokens attention_mask [B, L] marks valid -> [B, H], hidden's dtype.

    mode: mean, max, cls, lasttoken, mean_sqrt_len_tokens or weightedmean (sentence-transformers'
    semantics; left- and right-padded batches). skip_tokens drops each row's first N valid tokens
    (a prompt, as include_prompt=False does). normalize fuses L2 normalization. A row with no valid
    token gives zeros.
    """
    return torch.ops.sentfuse.masked_pool.default(hidden, attention_mask, mode, normalize, skip_tokens)


def masked_pool_varlen(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """masked_pool for packed tokens hidden [T, H]; sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]."""
    return torch.ops.sentfuse.masked_pool_varlen.default(hidden, cu_seqlens, mode, normalize, skip_tokens)


def l2_normalize(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Rows of x [N, D] scaled to unit L2 norm, keeping only the first `dim` features when given."""
    return torch.ops.sentfuse.l2_normalize.default(x, dim)


@torch.library.register_fake("sentfuse::masked_pool")
def _masked_pool_fake(hidden, attention_mask, mode, normalize=False, skip_tokens=0):
    torch._check(hidden.dim() == 3, lambda: f"masked_pool: hidden must be 3-D, got {hidden.dim()}-D")
    torch._check(attention_mask.dim() == 2, lambda: "masked_pool: attention_mask must be 2-D")
    return hidden.new_empty((hidden.shape[0], hidden.shape[2]))


@torch.library.register_fake("sentfuse::masked_pool_varlen")
def _masked_pool_varlen_fake(hidden, cu_seqlens, mode, normalize=False, skip_tokens=0):
    torch._check(hidden.dim() == 2, lambda: f"masked_pool_varlen: hidden must be 2-D, got {hidden.dim()}-D")
    return hidden.new_empty((cu_seqlens.shape[0] - 1, hidden.shape[1]))


@torch.library.register_fake("sentfuse::l2_normalize")
def _l2_normalize_fake(x, dim=None):
    torch._check(x.dim() == 2, lambda: f"l2_normalize: x must be 2-D, got {x.dim()}-D")
    return x.new_empty((x.shape[0], x.shape[1] if dim is None else dim))
