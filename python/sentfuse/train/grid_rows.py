"""Moving packed token rows into the attention grids and back, with the backward passes that the rows'
uniqueness allows.

Each valid token has its own grid row (grid_rows holds no repeats), so the gradient of the gather back
from the grids is a plain row copy into zeroed grids (index_copy_), not the accumulating scatter that
index_select's generic backward runs (torch's CPU scatter_add_, 2-5% of a training step), and neither
direction builds zero-padded copies for the padding rows that pack_rows appends (F.pad, slice_backward).
"""

from __future__ import annotations

import torch


class _ToGrids(torch.autograd.Function):
    """[rows, C] packed rows (the first grid_rows.numel() valid) -> [grid_size, C], zero where no token sits."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, grid_rows: torch.Tensor, grid_size: int) -> torch.Tensor:
        ctx.save_for_backward(grid_rows)
        ctx.rows = rows.shape[0]
        tokens = grid_rows.numel()
        # Padding slots must hold finite values: a zero attention weight times NaN would still be NaN.
        return rows.new_zeros(grid_size, rows.shape[1]).index_copy_(0, grid_rows, rows[:tokens])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grid_rows,) = ctx.saved_tensors
        return _rows_of(grad, grid_rows, ctx.rows), None, None


class _FromGrids(torch.autograd.Function):
    """[grid_size, C] grids -> [rows, C] packed rows: each token's grid row, zeros for the padding rows."""

    @staticmethod
    def forward(ctx, grids: torch.Tensor, grid_rows: torch.Tensor, rows: int) -> torch.Tensor:
        ctx.save_for_backward(grid_rows)
        ctx.grid_size = grids.shape[0]
        return _rows_of(grids, grid_rows, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (grid_rows,) = ctx.saved_tensors
        grids = grad.new_zeros(ctx.grid_size, grad.shape[1]).index_copy_(0, grid_rows, grad[:grid_rows.numel()])
        return grids, None, None


def _rows_of(grids: torch.Tensor, grid_rows: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, C]: grids' rows at grid_rows, then zero rows up to `rows`."""
    out = grids.new_empty(rows, grids.shape[1])
    tokens = grid_rows.numel()
    torch.index_select(grids, 0, grid_rows, out=out[:tokens])
    out[tokens:].zero_()
    return out


def to_grids(rows: torch.Tensor, grid_rows: torch.Tensor, grid_size: int) -> torch.Tensor:
    """The packed rows [R, C] placed at grid_rows (one per valid token; R may add padding rows) of
    [grid_size, C] zeroed grids, differentiably."""
    return _ToGrids.apply(rows, grid_rows, grid_size)


def from_grids(grids: torch.Tensor, grid_rows: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, C]: the grids' rows at grid_rows, then zeros up to rows (pack_rows' padding), differentiably."""
    return _FromGrids.apply(grids, grid_rows, rows)
