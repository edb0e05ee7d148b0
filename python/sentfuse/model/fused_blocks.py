"""bfloat16 blocks for BERT-family encoders on CPUs with bf16 matrix units (the bf16-mixed compute mode).

Two transformers modules, found by their shape rather than their class, so BERT, RoBERTa, XLM-R, ELECTRA and
the other models built on transformers' BERT layer all qualify:

- self-attention (query / key / value nn.Linear, SDPA attention): the three projections are one product with
  one prepacked [3 x hidden, hidden] bf16 weight; the heads go to SDPA in bfloat16 (its CPU flash kernel
  takes the exponentials and row sums in float32); the output stays bfloat16, since the output projection
  rounds its input to bfloat16 anyway.
- intermediate (dense nn.Linear + GELU): bias and GELU fused into the product's float32 epilogue, output in
  bfloat16, the down projection's input.

What the mode keeps float32 stays so: the residual stream, LayerNorm, softmax, pooling; the projections
whose output joins the residual stream (backbone.PackedLinear) take these blocks' bfloat16 outputs directly.
Measured against per-layer fp32-in / fp32-out products (oneDNN's fpmath mode, which converts the float32
weight on every call): about 2x faster projections, and one conversion pass per block instead of three.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import packed_linear
from .packed_linear import StandIn

BF16 = torch.bfloat16


def _attention_shape(module: nn.Module) -> bool:
    """transformers' BERT self-attention: query/key/value linears, heads of equal width, SDPA, no decoder use."""
    config = getattr(module, "config", None)
    parts = [getattr(module, name, None) for name in ("query", "key", "value")]
    return (
        all(type(p) is nn.Linear for p in parts)
        and isinstance(getattr(module, "num_attention_heads", None), int)
        and isinstance(getattr(module, "attention_head_size", None), int)
        and isinstance(getattr(module, "scaling", None), float)
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and not getattr(module, "is_decoder", False)
        and not getattr(module, "is_causal", False)
        and parts[0].out_features == module.num_attention_heads * module.attention_head_size
        and len({(p.in_features, p.out_features, p.bias is None) for p in parts}) == 1
    )


class FusedSelfAttention(StandIn):
    """BERT self-attention: one packed QKV product and SDPA, both in bfloat16; returns (context, None)."""

    inner_name = "original"

    def __init__(self, attention: nn.Module) -> None:
        super().__init__(attention)
        parts = [attention.query, attention.key, attention.value]
        self._packed_from = packed_linear.fingerprint(tuple(p.weight for p in parts))
        self._packed = packed_linear.pack(torch.cat([p.weight.detach() for p in parts]), BF16)
        self._bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts]).float()
        self._heads, self._head_size = attention.num_attention_heads, attention.attention_head_size

    def _fast(self, hidden: torch.Tensor, mask: torch.Tensor | None, cache: Any) -> bool:
        weights = tuple(p.weight for p in (self.original.query, self.original.key, self.original.value))
        return (
            hidden.device.type == "cpu"
            and hidden.dtype in (torch.float32, BF16)
            and hidden.dim() == 3
            and cache is None
            and (mask is None or mask.dtype == torch.bool)
            and packed_linear.unchanged(weights, self._packed_from)
            and not packed_linear.records_grad(hidden, weights)
        )

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not self._fast(hidden_states, attention_mask, cache):
            return self.original(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        rows, width, _ = hidden_states.shape
        qkv = packed_linear.run(hidden_states.to(BF16), self._packed, self._bias)  # [rows, width, 3 * hidden]
        # one copy into [3, rows, heads, width, head size]: SDPA's CPU kernel ran ~12% faster on contiguous heads
        # than on strided views of qkv (head size 32, MiniLM), the copy included
        heads = qkv.view(rows, width, 3, self._heads, self._head_size).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = heads.unbind(0)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.original.scaling)
        return context.transpose(1, 2).reshape(rows, width, self._heads * self._head_size), None


def _intermediate_shape(module: nn.Module) -> bool:
    return type(getattr(module, "dense", None)) is nn.Linear and hasattr(module, "intermediate_act_fn") and \
        len(list(module.children())) <= 2


class FusedIntermediate(StandIn):
    """BERT's intermediate block: GELU(x W.T + b) with bias and GELU in the bf16 product's epilogue; bf16 out."""

    inner_name = "original"

    def __init__(self, intermediate: nn.Module, epilogue: tuple[str, str]) -> None:
        super().__init__(intermediate)
        dense = intermediate.dense
        self._packed_from = packed_linear.fingerprint((dense.weight,))
        self._packed = packed_linear.pack(dense.weight, BF16)
        self._bias = None if dense.bias is None else dense.bias.detach().float()
        self._epilogue = epilogue

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = (self.original.dense.weight,)
        if (
            hidden_states.device.type != "cpu"
            or hidden_states.dtype not in (torch.float32, BF16)
            or not packed_linear.unchanged(weights, self._packed_from)
            or packed_linear.records_grad(hidden_states, weights)
        ):
            return self.original(hidden_states)
        return packed_linear.run(hidden_states.to(BF16), self._packed, self._bias, self._epilogue)


def fuse_blocks(model: nn.Module) -> int:
    """Replace every BERT-style self-attention and GELU intermediate block of model in place; the count."""
    fused = 0
    for name, child in list(model.named_children()):
        replacement = None
        if _attention_shape(child):
            replacement = FusedSelfAttention(child)
        elif _intermediate_shape(child):
            epilogue = packed_linear.activation_epilogue(child.intermediate_act_fn)
            replacement = None if epilogue is None else FusedIntermediate(child, epilogue)
        if replacement is not None:
            setattr(model, name, replacement)
            fused += 1
        elif not isinstance(child, StandIn):
            fused += fuse_blocks(child)
    return fused
