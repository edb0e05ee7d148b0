"""Moving the packed rows' attention heads into the groups' grids and back, as gathers only.

Attention runs per group of near-equal-length texts on [texts, heads, width, head] grids, while every other
operation of a layer runs on packed rows [rows, heads * head]. Each (token, head) pair sits in exactly one grid
slot, so both directions are one index_select per tensor, in the layout the matrix products read:

- split_heads: the [rows, 3 * hidden] query / key / value product -> each group's q, k and v, contiguous (no
  zeroed grids, no permuted copies before the products). Padding slots read row 0, a finite value: their keys
  are masked and their queries' outputs dropped.
- merge_heads: each group's contexts [texts, heads, width, head] -> packed rows [rows, hidden], zero in the
  rows pack_rows pads with.

Their backward passes are gathers too (the inverse slot of each (token, head)): no zero-filled grids, no slice
gradients summed over the groups, no accumulating scatter. A padding slot's gradient is exactly zero (its key
has zero attention weight, its query's output gradient is set to zero), so nothing is lost by reading only the
tokens' slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HeadSlots:
    """Where each (token, head) of a packed batch sits in the attention groups' grids."""

    rows: int  # R: the packed rows, tokens first, then pack_rows' padding rows
    tokens: int  # T
    head: int  # the width of one head
    shapes: tuple[tuple[int, int, int], ...]  # per group (texts, heads, width)
    qkv_source: tuple[tuple[torch.Tensor, ...], ...]  # per group, per q/k/v: [texts*heads*width] rows of qkv's heads
    context_source: tuple[torch.Tensor, ...]  # per group: [texts*heads*width] rows of the contexts' heads
    padding: tuple[torch.Tensor, ...]  # per group: the flat slots no token fills
    qkv_slot: torch.Tensor  # [T * 3 * heads] each (token, part, head)'s place in the groups' q, k, v laid end to end
    context_slot: torch.Tensor  # [T * heads] each (token, head)'s place in the groups' contexts laid end to end


def head_slots(grid_rows: torch.Tensor, groups: list[tuple[int, int]], rows: int, heads: int,
               head: int) -> HeadSlots:
    """HeadSlots for tokens placed at grid_rows [T] (each token's row in the groups' [texts, width] grids laid end
    to end) of groups [(texts, width)], rows R >= T packed rows, `heads` heads of width `head`."""
    device = grid_rows.device
    tokens = grid_rows.numel()
    grid_size = sum(texts * width for texts, width in groups)
    token_at = torch.full((grid_size,), -1, dtype=torch.int64, device=device)
    token_at[grid_rows] = torch.arange(tokens, device=device)
    h = torch.arange(heads, device=device)
    qkv_source, context_source, padding = [], [], []
    qkv_slot = torch.empty(tokens, 3, heads, dtype=torch.int64, device=device)
    context_slot = torch.empty(tokens, heads, dtype=torch.int64, device=device)
    base = 0
    for texts, width in groups:
        cells = texts * width
        token = token_at[base:base + cells].view(texts, 1, width).expand(texts, heads, width)
        valid = token >= 0
        at = token.clamp(min=0)  # padding slots read token 0's heads
        qkv_source.append(tuple((torch.where(valid, at * 3 * heads + part * heads + h[:, None], 0)).reshape(-1)
                                for part in range(3)))
        context_source.append(torch.where(valid, at * heads + h[:, None], 0).reshape(-1))
        padding.append((~valid).reshape(-1).nonzero().squeeze(1))
        # The group's tokens: slot-major offsets within its [texts, heads, width] grid.
        members = (grid_rows >= base) & (grid_rows < base + cells)
        ids = members.nonzero().squeeze(1)
        local = grid_rows[ids] - base
        slot, position = local // width, local % width
        within = (slot * heads)[:, None] * width + h * width + position[:, None]  # [tokens of group, heads]
        context_slot[ids] = heads * base + within
        part = torch.arange(3, device=device)[None, :, None] * (heads * cells)
        qkv_slot[ids] = 3 * heads * base + part + within[:, None, :]
        base += cells
    return HeadSlots(rows=rows, tokens=tokens, head=head, shapes=tuple((t, heads, w) for t, w in groups),
                     qkv_source=tuple(qkv_source), context_source=tuple(context_source), padding=tuple(padding),
                     qkv_slot=qkv_slot.reshape(-1), context_slot=context_slot.reshape(-1))


def _gather_rows(flat: torch.Tensor, slots: torch.Tensor, s: HeadSlots, per_token: int) -> torch.Tensor:
    """[R, per_token * head]: flat's rows at slots for the T tokens, zero rows for pack_rows' padding rows."""
    out = flat.new_empty(s.rows * per_token, s.head)
    torch.index_select(flat, 0, slots, out=out[:s.tokens * per_token])
    out[s.tokens * per_token:].zero_()
    return out.view(s.rows, per_token * s.head)


class _SplitHeads(torch.autograd.Function):
    """[R, 3 * heads * head] -> per group q, k, v, each [texts, heads, width, head]."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, s: HeadSlots):
        ctx.slots = s
        heads = qkv.view(-1, s.head)
        return tuple(heads.index_select(0, source).view(*shape, s.head)
                     for shape, parts in zip(s.shapes, s.qkv_source) for source in parts)

    @staticmethod
    def backward(ctx, *grads):
        s = ctx.slots
        flat = torch.cat([g.reshape(-1, s.head) for g in grads])
        return _gather_rows(flat, s.qkv_slot, s, 3 * s.shapes[0][1]), None


class _MergeHeads(torch.autograd.Function):
    """per group contexts [texts, heads, width, head] -> [R, heads * head]."""

    @staticmethod
    def forward(ctx, s: HeadSlots, *contexts: torch.Tensor) -> torch.Tensor:
        ctx.slots = s
        flat = torch.cat([c.reshape(-1, s.head) for c in contexts])
        return _gather_rows(flat, s.context_slot, s, s.shapes[0][1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s = ctx.slots
        heads = grad.reshape(-1, s.head)
        grads = []
        for shape, source, padding in zip(s.shapes, s.context_source, s.padding):
            g = heads.index_select(0, source)
            g.index_fill_(0, padding, 0)  # a padding query's output is dropped: no gradient flows back through it
            grads.append(g.view(*shape, s.head))
        return (None, *grads)


def split_heads(qkv: torch.Tensor, slots: HeadSlots) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each group's (q, k, v) [texts, heads, width, head] from the packed [R, 3 * hidden] product, differentiably."""
    parts = _SplitHeads.apply(qkv, slots)
    return [tuple(parts[i:i + 3]) for i in range(0, len(parts), 3)]


def merge_heads(contexts: list[torch.Tensor], slots: HeadSlots) -> torch.Tensor:
    """The groups' contexts [texts, heads, width, head] as packed rows [R, hidden], differentiably."""
    return _MergeHeads.apply(slots, *contexts)
