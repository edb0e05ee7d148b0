"""The word-embedding lookup of a training step, its dense gradient written into a buffer kept between steps.

The gradient of a [vocab, hidden] table is dense, and torch's embedding backward allocates it afresh every
step (47 MB for MiniLM's table). An allocation that large is a fresh mmap, so each step faulted every page
of it in again (7% of a CPU training step, more than the table's update itself). Here the gradient the
optimizer saw last step, which the trainer's zero_grad(set_to_none=True) dropped, is kept and zeroed in
place for the next step: the same values, without the page faults. It is reused only when nothing else
holds it and the table has no gradient at backward time (else, e.g. while accumulating, a fresh one).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary


class _KeptGradient:
    """The last gradient accumulated into one table's .grad, kept for reuse, and which of its rows can be
    non-zero while it is the table's gradient from one backward pass of lookup."""

    def __init__(self, weight: nn.Parameter) -> None:
        self.buffer: torch.Tensor | None = None
        # The memory of the gradient lookup's backward returned last (autograd may store it as .grad under a
        # new tensor object, never in other memory unless it copies), and its ids.
        self.produced: int | None = None
        self.produced_ids: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # .grad's possibly non-zero rows, when .grad is that gradient
        weight.register_post_accumulate_grad_hook(self._keep)

    def _keep(self, weight: nn.Parameter) -> None:
        grad = weight.grad
        self.buffer = grad if grad is not None and grad.layout == torch.strided and grad.is_contiguous() else None
        # Accumulation into an earlier gradient (several backward passes per step) leaves the rows unknown.
        fresh = grad is not None and self.produced is not None and self.produced == grad.data_ptr()
        self.rows = self.produced_ids if fresh else None
        self.produced = self.produced_ids = None

    def record(self, gradient: torch.Tensor, ids: torch.Tensor) -> None:
        """gradient, about to be returned by lookup's backward, is zero outside the rows in ids."""
        self.produced, self.produced_ids = gradient.data_ptr(), ids

    def take(self, weight: nn.Parameter) -> torch.Tensor:
        """A zeroed gradient for weight: the kept one when it is free, else a new one."""
        kept, self.buffer = self.buffer, None
        # Free: no gradient in the table now, and only `kept` refers to the tensor (getrefcount adds its
        # argument) and to its memory (untyped_storage() adds a temporary): no alias, no view, no C++ holder.
        free = (kept is not None and weight.grad is None and kept.shape == weight.shape and kept.dtype == weight.dtype
                and sys.getrefcount(kept) == 2 and torch._C._storage_Use_Count(kept.untyped_storage()._cdata) == 2)
        return kept.zero_() if free else torch.zeros_like(weight, memory_format=torch.contiguous_format)


_KEPT: WeakIdKeyDictionary = WeakIdKeyDictionary()  # table weight -> its _KeptGradient


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None,
                kept: _KeptGradient) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx, ctx.kept = weight, padding_idx, kept
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        if ctx.padding_idx is not None:  # nn.Embedding leaves the padding row's gradient at zero
            grad = grad.masked_fill((ids == ctx.padding_idx)[:, None], 0)
        table = ctx.kept.take(ctx.weight)
        table.index_add_(0, ids, grad.to(table.dtype))
        ctx.kept.record(table, ids)
        return table, None, None, None


def gradient_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """The sorted ids of the only rows of weight.grad that can be non-zero, when weight.grad is the gradient
    of one backward pass of lookup (every other row is exactly zero); else None."""
    kept = _KEPT.get(weight)
    if kept is None or kept.rows is None or weight.grad is None or weight.grad is not kept.buffer:
        return None
    return torch.unique(kept.rows)


def _plain(embedding: nn.Embedding) -> bool:
    return (type(embedding) is nn.Embedding and embedding.max_norm is None and not embedding.sparse
            and not embedding.scale_grad_by_freq)


def lookup(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """embedding(ids) for 1-D ids, [len(ids), dim]; with gradients on, the table's gradient goes through a
    buffer kept between steps."""
    weight = embedding.weight
    if not (torch.is_grad_enabled() and weight.requires_grad and _plain(embedding)):
        return embedding(ids)
    if weight not in _KEPT:
        _KEPT[weight] = _KeptGradient(weight)
    return _Lookup.apply(weight, ids, embedding.padding_idx, _KEPT[weight])
