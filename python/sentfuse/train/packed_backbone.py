"""A packed ("varlen") training forward for BERT-family backbones.

The padded backbone call spends most of a CPU training step in matrix products with few rows: a batch is
cut into runs of near-equal length (batching.py), each its own call. Here every valid token of the whole
batch (all input columns) is one row of a [T, hidden] tensor, and every Linear, LayerNorm, GELU and dropout
of every layer is one operation over all T rows, with no padding. Only attention needs the texts apart: its
query / key / value heads are gathered into [texts, heads, width, head] grids (width: the group's longest
text; texts of near-equal length share a grid) through slot indices computed once per batch (grid_rows.py),
masked so padding keys get no weight, and gathered back.

The arithmetic is transformers' BertLayer's (embeddings: word + token type 0 + position, LayerNorm,
dropout; per layer: attention, dense, dropout, residual LayerNorm, dense + activation, dense, dropout,
residual LayerNorm) and its dropouts keep their probabilities. A backbone qualifies by its modules' shapes,
so BERT and the models built on its layer with BERT's absolute positions do, and by one probe against its
own padded forward (dropout off); anything else keeps the padded calls.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.fused_blocks import bert_heads
from .batching import DEFAULT_TRAIN_BATCH_TOKENS, plan_length_runs
from .dropout import dropout
from .grid_rows import HeadSlots, head_slots, merge_heads, split_heads
from .lookup_grad import lookup


@dataclass(frozen=True)
class AttentionGroup:
    """Texts of near-equal length that attend in one padded grid [texts, heads, width, head]."""

    texts: int
    width: int  # the group's longest text
    key_bias: torch.Tensor  # [texts, 1, 1, width] 0 for a text's tokens, -inf for padding


@dataclass(frozen=True)
class PackedTokens:
    """A batch of texts as one row per token, and where each token sits in the attention grids."""

    input_ids: torch.Tensor  # [T] the texts' token ids, one text after another
    positions: torch.Tensor  # [T] each token's place in its own text
    cu_seqlens: torch.Tensor  # [texts + 1] int64 offsets of each text's tokens
    grid_rows: torch.Tensor  # [T] each token's row in the groups' flattened grids, laid end to end
    groups: tuple[AttentionGroup, ...]
    tokens: int  # T, the valid tokens; input_ids and positions may carry padding rows after them

    @property
    def grid_size(self) -> int:
        return sum(g.texts * g.width for g in self.groups)


def pack_rows(rows: list[list[int]], device: torch.device, row_multiple: int = 1) -> PackedTokens:
    """PackedTokens of rows (each a non-empty list of token ids), in rows' order, the token rows padded up to
    a multiple of row_multiple. Attention groups follow the length runs of batching.py: one long text pads
    only its own group's grid (whose size, and that of its dropout mask, grows with the square of the
    width), not the whole batch's."""
    lengths = [len(r) for r in rows]
    runs = plan_length_runs(lengths, DEFAULT_TRAIN_BATCH_TOKENS)
    grid_start = [0] * len(rows)
    groups, base = [], 0
    for start, end in runs.bounds:
        members = runs.order[start:end]
        width = max(lengths[i] for i in members)
        for slot, i in enumerate(members):
            grid_start[i] = base + slot * width
        valid = torch.arange(width) < torch.tensor([lengths[i] for i in members])[:, None]
        key_bias = torch.zeros(valid.shape).masked_fill_(~valid, -math.inf)[:, None, None, :]
        groups.append(AttentionGroup(len(members), width, key_bias.to(device)))
        base += len(members) * width
    counts = torch.tensor(lengths, dtype=torch.int64)
    cu_seqlens = F.pad(counts.cumsum(0), (1, 0))
    positions = torch.arange(int(cu_seqlens[-1])) - torch.repeat_interleave(cu_seqlens[:-1], counts)
    grid_rows = torch.repeat_interleave(torch.tensor(grid_start, dtype=torch.int64), counts) + positions
    tokens = int(cu_seqlens[-1])
    padding = -tokens % row_multiple  # rows of token id 0 at position 0, dropped before pooling
    return PackedTokens(
        input_ids=torch.tensor([t for r in rows for t in r] + [0] * padding, dtype=torch.long, device=device),
        positions=F.pad(positions, (0, padding)).to(device), cu_seqlens=cu_seqlens.to(device),
        grid_rows=grid_rows.to(device), groups=tuple(groups), tokens=tokens)


# oneDNN builds (JIT-compiles) a bfloat16 matmul for each new row count, which cost more than the products
# themselves when every batch brought its own token count; rows padded to a multiple of this keep the
# count of shapes small (at most 1/8 more rows for a 512-token batch).
HALF_MATMUL_ROWS = 64


def row_multiple(device: torch.device) -> int:
    """The row multiple for pack_rows: HALF_MATMUL_ROWS under CPU autocast to a 16-bit type, else 1."""
    half = (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16))
    return HALF_MATMUL_ROWS if half else 1


def _is_linear(module: object) -> bool:
    return type(module) is nn.Linear


def _is_layer_norm(module: object) -> bool:
    return type(module) is nn.LayerNorm


def _is_dropout(module: object) -> bool:
    return type(module) is nn.Dropout


def _embeddings_shape(embeddings: nn.Module) -> bool:
    """BERT's embeddings: word, position and token-type lookups, LayerNorm, dropout; positions 0.. per text
    (RoBERTa's, which count from its padding id, carry a padding_idx and are left out)."""
    lookups = [getattr(embeddings, n, None) for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    return (all(type(e) is nn.Embedding for e in lookups)
            and _is_layer_norm(getattr(embeddings, "LayerNorm", None))
            and _is_dropout(getattr(embeddings, "dropout", None))
            and getattr(embeddings, "position_embedding_type", "absolute") == "absolute"
            and not hasattr(embeddings, "padding_idx")
            and lookups[0].embedding_dim == lookups[1].embedding_dim == lookups[2].embedding_dim)


def _layer_shape(layer: nn.Module) -> bool:
    """transformers' BertLayer: self-attention (query / key / value linears, equal heads), output dense +
    dropout + LayerNorm, intermediate dense + activation, output dense + dropout + LayerNorm; no decoder."""
    attention = getattr(layer, "attention", None)
    heads = getattr(attention, "self", None)
    out = getattr(attention, "output", None)
    inner, final = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    return (
        bert_heads(heads)
        and _is_dropout(getattr(heads, "dropout", None))
        and getattr(heads, "position_embedding_type", "absolute") == "absolute"
        and not getattr(layer, "add_cross_attention", False)
        and not getattr(layer, "chunk_size_feed_forward", 0)
        and all(_is_linear(getattr(m, "dense", None)) and _is_layer_norm(getattr(m, "LayerNorm", None))
                and _is_dropout(getattr(m, "dropout", None)) for m in (out, final))
        and _is_linear(getattr(inner, "dense", None)) and callable(getattr(inner, "intermediate_act_fn", None))
    )


def _shape_fits(backbone: nn.Module) -> bool:
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    return (_embeddings_shape(getattr(backbone, "embeddings", None))
            and isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(_layer_shape(l) for l in layers))


def _embed(embeddings: nn.Module, batch: PackedTokens) -> torch.Tensor:
    """[T, hidden]: word + token type 0 + position embeddings (in transformers' order), LayerNorm, dropout."""
    x = lookup(embeddings.word_embeddings, batch.input_ids) + embeddings.token_type_embeddings.weight[0]
    x = embeddings.LayerNorm(x + embeddings.position_embeddings(batch.positions))
    return dropout(x, embeddings.dropout.p, embeddings.training)


def _attend(heads: nn.Module, x: torch.Tensor, batch: PackedTokens, slots: HeadSlots) -> torch.Tensor:
    """Self-attention context [R, hidden] of the packed rows x [R, hidden], each text attending to its own."""
    parts = (heads.query, heads.key, heads.value)
    weight = torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    qkv = F.linear(x, weight, bias)  # [rows, 3 * hidden]: one product instead of three
    contexts = [_attention(heads, q, k, v, group.key_bias)  # [texts, heads, width, head]
                for (q, k, v), group in zip(split_heads(qkv, slots), batch.groups)]
    return merge_heads(contexts, slots)


def _attention(heads: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_bias: torch.Tensor) -> torch.Tensor:
    p = heads.dropout.p if heads.training else 0.0
    if p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias.to(q.dtype), scale=heads.scaling)
    # SDPA would draw its dropout mask with torch's slow CPU sampler.
    # The float32 key bias widens 16-bit scores to float32: torch's CPU softmax (and its backward) is several
    # times slower in bfloat16 than in float32 at these widths.
    scores = torch.matmul(q, k.transpose(-1, -2)) * heads.scaling + key_bias
    probs = dropout(scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype), p, True)
    return torch.matmul(probs, v)


def _layer(layer: nn.Module, x: torch.Tensor, batch: PackedTokens,
           slots: dict[tuple[int, int], HeadSlots]) -> torch.Tensor:
    out, heads = layer.attention.output, layer.attention.self
    shape = (heads.num_attention_heads, heads.attention_head_size)
    if shape not in slots:  # computed once per batch: every layer of BERT's has the same heads
        slots[shape] = head_slots(batch.grid_rows, [(g.texts, g.width) for g in batch.groups], x.shape[0], *shape)
    x = out.LayerNorm(dropout(out.dense(_attend(heads, x, batch, slots[shape])), out.dropout.p, out.training, x))
    h = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
    final = layer.output
    return final.LayerNorm(dropout(final.dense(h), final.dropout.p, final.training, x))


def packed_forward(backbone: nn.Module, batch: PackedTokens) -> torch.Tensor:
    """Last hidden states [T, hidden] of the packed batch, in the backbone's current mode (train: dropout)."""
    x = _embed(backbone.embeddings, batch)
    slots: dict[tuple[int, int], HeadSlots] = {}
    for layer in backbone.encoder.layer:
        x = _layer(layer, x, batch, slots)
    return x[:batch.tokens]


# Backbones already checked by takes_packed, with the answer.
_CHECKED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def takes_packed(backbone: nn.Module) -> bool:
    """Whether packed_forward serves backbone: BERT's module shapes, and, checked once per backbone with dropout
    off, the same hidden states as its own right-padded forward. A backbone set to recompute its layers in
    the backward pass (gradient checkpointing, to save memory) keeps its own forward, which does that."""
    if getattr(backbone, "is_gradient_checkpointing", False) or not _shape_fits(backbone):
        return False  # the shapes are checked every call: inference swaps in stand-ins of other shapes
    if backbone not in _CHECKED:
        _CHECKED[backbone] = _agrees_with_padded(backbone)
    return _CHECKED[backbone]


def _agrees_with_padded(backbone: nn.Module) -> bool:
    lookup = backbone.embeddings.word_embeddings
    # The vocabulary's last ids: ordinary tokens (a padding id as content would be placed as padding).
    top = lookup.num_embeddings
    rows = [list(range(top - 5, top)), list(range(top - 3, top))]
    ids = torch.tensor([rows[0], rows[1] + [rows[1][0]] * 2], device=lookup.weight.device)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], device=ids.device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            padded = backbone(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state[mask.bool()]
            packed = packed_forward(backbone, pack_rows(rows, ids.device))
        return bool(torch.allclose(padded, packed, atol=1e-5, rtol=1e-4))
    except (TypeError, ValueError, AttributeError, NotImplementedError, RuntimeError):
        return False
    finally:
        backbone.train(was_training)
