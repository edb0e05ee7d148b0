"""Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_, in fewer passes.

torch's clip_grad_norm_ on CPU takes one norm and one multiply per parameter (no foreach kernels there) and
reads the whole word-embedding gradient twice ([vocab, hidden], half of MiniLM's parameters), though a step's
lookup gives only the batch's token rows a non-zero gradient. Here the norms are one foreach call, and a
table whose gradient lookup_grad.gradient_rows vouches for contributes, and is scaled, by those rows alone:
the same norm (the other rows are exactly zero) and the same clipped gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .lookup_grad import gradient_rows

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coefficient = max_norm / (total_norm + 1e-6)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients of parameters in place so that their global L2 norm is at most max_norm (none is
    scaled up); returns the norm before clipping (float32 scalar, 0 without gradients)."""
    dense, sparse = [], []
    for p in parameters:
        if p.grad is None:
            continue
        rows = gradient_rows(p)
        if rows is None:
            dense.append(p.grad)
        else:
            sparse.append((p.grad, rows))
    if not dense and not sparse:
        return torch.tensor(0.0)
    picked = [grad.index_select(0, rows) for grad, rows in sparse]
    norms = torch._foreach_norm(dense + picked)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    coefficient = (max_norm / (total + _EPS)).clamp(max=1.0)
    if dense:
        torch._foreach_mul_(dense, coefficient)
    for (grad, rows), values in zip(sparse, picked):
        grad.index_copy_(0, rows, values.mul_(coefficient))
    return total
