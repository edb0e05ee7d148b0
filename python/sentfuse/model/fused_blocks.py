"""Fused blocks for BERT-family encoders on CPU: the float32 backbone's and the bf16-mixed compute mode's.

Three transformers modules, found by their shape rather than their class, so BERT, RoBERTa, XLM-R, ELECTRA and
the other models built on transformers' BERT layer all qualify:

- self-attention (query / key / value nn.Linear, SDPA attention): the three projections are one product with
  one prepacked [3 x hidden, hidden] weight; the heads go to SDPA. The boolean mask transformers builds per
  forward ([batch, 1, query, key]) becomes SDPA's additive mask once per forward instead of once per layer,
  [batch, 1, 1, key] when it is a padding mask (AdditiveMask). In bf16 on AMX CPUs, with heads of whole tile
  depths and a right-padding mask (per-row lengths, also made once per forward), sentfuse's packed_attention
  takes the heads instead: straight from the product's output, padded tokens skipped, the context written in
  the output projection's layout (no head or context copies), P V on ~16-bit probabilities. On the rerank
  shapes (MiniLM, 100-300 tokens) it ran 1.6-2.3x SDPA's bf16 CPU kernel, and it took the worst rerank score
  difference to fp32 from 1.29% to 0.91% of max |score| (10 questions; benchmarks/bench_attention.py,
  bench_rerank.py --sdpa-row).
- intermediate (dense nn.Linear + GELU): bias and GELU fused into the product's float32 epilogue.
- output (dense nn.Linear, dropout, LayerNorm of the sum with the residual; float32 only): bias and residual
  add fused into the product's epilogue, then LayerNorm.

In float32 each block computes what the modules it replaces compute, in the same order of operations.
In bf16-mixed the products multiply in bfloat16 (SDPA's CPU flash kernel takes the exponentials and row sums
in float32); the attention and intermediate outputs stay bfloat16, since the next projection rounds its input
to bfloat16 anyway. What the mode keeps float32 stays so: the residual stream, LayerNorm, softmax, pooling; the
projections whose output joins the residual stream (backbone.PackedLinear) take these blocks' bfloat16 outputs
directly. Measured against per-layer fp32-in / fp32-out products (oneDNN's fpmath mode, which converts the float32
weight on every call): about 2x faster projections, and one conversion pass per block instead of three.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ops as ops
from .. import cpu_features
from . import packed_linear
from .packed_linear import StandIn

BF16 = torch.bfloat16
COMPUTE_TYPES = (torch.float32, BF16)


class AdditiveMask:
    """SDPA's additive float mask for transformers' boolean one, made once per forward and shared by every layer
    (SDPA would convert the boolean mask in each layer): [batch, 1, 1, key] when every query row of the
    [batch, 1, query, key] mask is the same (a padding mask), else the full shape.

    The first layer to join (the forward's first attention layer) converts on every call; the others reuse its
    conversion while they get the very mask it converted (inference tensors carry no version counter, so a mask
    changed in place between forwards is caught by converting anew in each forward's first layer). The mask is kept
    with its conversion, so its address cannot be reused by another."""

    def __init__(self) -> None:
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (bool mask, additive)
        self._last_lengths: tuple[torch.Tensor | None, int, torch.Tensor | None] | None = None  # (mask, width, lengths)
        self._joined = 0

    def join(self) -> bool:
        """Register a layer; True for the first, the one that converts on every call."""
        self._joined += 1
        return self._joined == 1

    def __call__(self, mask: torch.Tensor | None, dtype: torch.dtype, convert: bool) -> torch.Tensor | None:
        if mask is None or mask.dtype != torch.bool:
            return mask
        last = self._last  # one read: another thread may replace it meanwhile
        if not convert and last is not None and last[0] is mask and last[1].dtype == dtype:
            return last[1]
        rows = mask[:, :, :1] if mask.dim() == 4 else mask
        keep = rows if rows is not mask and torch.equal(mask, rows.expand_as(mask)) else mask
        additive = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, float("-inf"))
        self._last = (mask, additive)
        return additive

    def lengths(self, mask: torch.Tensor | None, rows: int, width: int, convert: bool) -> torch.Tensor | None:
        """The valid-token count of each row when mask ([rows, 1, query, key] bool, or None: every token valid)
        is a right-padding mask (each row's valid keys a prefix, the same for every query), else None. Made and
        reused like the additive mask."""
        last = self._last_lengths
        if not convert and last is not None and last[0] is mask and last[1] == width:
            return last[2]
        lengths = None
        if mask is None:
            lengths = torch.full((rows,), width, dtype=torch.int64)
        elif mask.dim() == 4 and mask.shape[0] == rows and mask.shape[1] == 1 and mask.shape[-1] == width:
            keys = mask[:, 0, :1, :]  # [rows, 1, key]
            counts = keys.sum(-1, dtype=torch.int64)  # [rows, 1]
            prefix = torch.arange(width) < counts
            if torch.equal(keys[:, 0], prefix) and torch.equal(mask, keys[:, None].expand_as(mask)):
                lengths = counts[:, 0]
        self._last_lengths = (mask, width, lengths)
        return lengths


def bert_heads(module: nn.Module) -> bool:
    """transformers' BERT self-attention heads, by shape: query / key / value linears of one shape, heads of equal
    width filling their output, a float scaling, no decoder use (what both the fused inference blocks and the
    packed training forward rely on)."""
    parts = [getattr(module, name, None) for name in ("query", "key", "value")]
    return (
        all(type(p) is nn.Linear for p in parts)
        and len({(p.in_features, p.out_features, p.bias is None) for p in parts}) == 1
        and isinstance(getattr(module, "num_attention_heads", None), int)
        and isinstance(getattr(module, "attention_head_size", None), int)
        and isinstance(getattr(module, "scaling", None), float)
        and parts[0].out_features == module.num_attention_heads * module.attention_head_size
        and not getattr(module, "is_decoder", False)
    )


def _attention_shape(module: nn.Module) -> bool:
    """BERT self-attention heads run by SDPA, not causal."""
    return (
        bert_heads(module)
        and getattr(getattr(module, "config", None), "_attn_implementation", None) == "sdpa"
        and not getattr(module, "is_causal", False)
    )


def _runs_fast(block: StandIn, x: torch.Tensor, inputs: tuple[torch.dtype, ...], weights: tuple[torch.Tensor, ...],
               packed_from: tuple) -> bool:
    """Whether a block's fused path applies to input x: CPU inference with the weights it packed."""
    return (
        x.device.type == "cpu"
        and x.dtype in inputs
        and not block.training  # dropout
        and packed_linear.unchanged(weights, packed_from)
        and not packed_linear.records_grad(x, weights)
    )


# SENTFUSE_CPU_ATTENTION=sdpa keeps SDPA for the bf16 heads where packed_attention's AMX kernel would run (read
# when a model is loaded; benchmarks A/B the two with it).
ATTENTION_ENV = "SENTFUSE_CPU_ATTENTION"


def _amx_attention(head_size: int) -> bool:
    """Whether sentfuse's packed_attention runs its AMX kernel for bf16 heads of head_size: the CPU has bf16
    matrix units (SENTFUSE_CPU_AMX=off or SENTFUSE_CPU_ATTENTION=sdpa say no) and the heads are whole tile
    depths. Elsewhere SDPA stays, as fast as before."""
    forced = os.environ.get(ATTENTION_ENV, "").strip().lower()
    if forced not in ("", "amx", "sdpa"):
        raise ValueError(f"{ATTENTION_ENV} must be 'amx' or 'sdpa', got {forced!r}")
    return (
        forced != "sdpa"
        and cpu_features.amx_kernels()
        and head_size % 32 == 0
        and head_size <= 128
    )


class FusedSelfAttention(StandIn):
    """BERT self-attention: one packed QKV product and SDPA (bf16 on AMX CPUs: packed_attention, see the module
    docstring), in `compute` (float32 or bfloat16); returns (context, None), context in `compute`."""

    inner_name = "original"

    def __init__(self, attention: nn.Module, compute: torch.dtype = BF16, masks: AdditiveMask | None = None,
                 project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """project: another QKV product (float32 [..., hidden] -> float32 [..., 3 x hidden], q k v in that order)
        instead of the packed one: the int8 mode's (compute float32)."""
        super().__init__(attention)
        parts = [attention.query, attention.key, attention.value]
        if project is not None and compute != torch.float32:
            raise ValueError("a given QKV product (project) takes and gives float32: compute must be float32")
        self._compute = compute
        self._masks = AdditiveMask() if masks is None else masks
        self._converts_mask = self._masks.join()
        self._packed_from = packed_linear.fingerprint(tuple(p.weight for p in parts))
        self._project = project
        if project is None:
            self._packed = packed_linear.pack(torch.cat([p.weight.detach() for p in parts]), compute)
            self._bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts]).float()
        self._heads, self._head_size = attention.num_attention_heads, attention.attention_head_size
        self._amx = compute == BF16 and _amx_attention(self._head_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        weights = tuple(p.weight for p in (self.original.query, self.original.key, self.original.value))
        inputs = COMPUTE_TYPES if self._compute == BF16 else (torch.float32,)
        if (cache is not None or hidden_states.dim() != 3
                or (attention_mask is not None and attention_mask.dtype != torch.bool)
                or not _runs_fast(self, hidden_states, inputs, weights, self._packed_from)):
            return self.original(hidden_states, attention_mask=attention_mask, cache=cache, **kwargs)
        rows, width, _ = hidden_states.shape
        if self._project is not None:
            qkv = self._project(hidden_states)  # [rows, width, 3 * hidden]
        else:
            qkv = packed_linear.run(hidden_states.to(self._compute), self._packed, self._bias)
        lengths = self._masks.lengths(attention_mask, rows, width, self._converts_mask) if self._amx else None
        if lengths is not None:
            # the heads straight from qkv, the context straight in the output projection's layout; padded queries
            # get zeros (nothing downstream reads them)
            context = ops.packed_attention(qkv, lengths, self._heads, self.original.scaling)
            return context, None
        heads = qkv.view(rows, width, 3, self._heads, self._head_size).permute(2, 0, 3, 1, 4)
        if self._compute == BF16:
            # SDPA's CPU kernel ran ~12% faster in bf16 on contiguous heads than on strided views of qkv (head size
            # 32, MiniLM), the copy included; in float32 the copy cost more than it saved
            heads = heads.contiguous()
        q, k, v = heads.unbind(0)  # [rows, heads, width, head size] each
        mask = self._masks(attention_mask, self._compute, self._converts_mask)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.original.scaling)
        return context.transpose(1, 2).reshape(rows, width, self._heads * self._head_size), None


def _intermediate_shape(module: nn.Module) -> bool:
    return type(getattr(module, "dense", None)) is nn.Linear and hasattr(module, "intermediate_act_fn") and \
        len(list(module.children())) <= 2


class FusedIntermediate(StandIn):
    """BERT's intermediate block: GELU(x W.T + b) with bias and GELU in the product's float32 epilogue; output in
    `compute` (float32, or bfloat16 for bf16-mixed)."""

    inner_name = "original"

    def __init__(self, intermediate: nn.Module, epilogue: tuple[str, str], compute: torch.dtype = BF16) -> None:
        super().__init__(intermediate)
        dense = intermediate.dense
        self._compute = compute
        self._packed_from = packed_linear.fingerprint((dense.weight,))
        self._packed = packed_linear.pack(dense.weight, compute)
        self._bias = None if dense.bias is None else dense.bias.detach().float()
        self._epilogue = epilogue

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inputs = COMPUTE_TYPES if self._compute == BF16 else (torch.float32,)
        if not _runs_fast(self, hidden_states, inputs, (self.original.dense.weight,), self._packed_from):
            return self.original(hidden_states)
        return packed_linear.run(hidden_states.to(self._compute), self._packed, self._bias, self._epilogue)


def _output_shape(module: nn.Module) -> bool:
    """transformers' BERT output blocks (BertSelfOutput, BertOutput): LayerNorm(dropout(dense(x)) + residual)."""
    children = dict(module.named_children())
    return (
        children.keys() == {"dense", "dropout", "LayerNorm"}
        and type(children["dense"]) is nn.Linear
        and type(children["dropout"]) is nn.Dropout
        and type(children["LayerNorm"]) is nn.LayerNorm
        and list(inspect.signature(type(module).forward).parameters) == ["self", "hidden_states", "input_tensor"]
    )


@functools.cache
def residual_epilogue_available() -> bool:
    """oneDNN's product with a residual add in its epilogue is a private op: used only if it gives
    F.linear(x) + residual here (checked once per process)."""
    try:
        gen = torch.Generator().manual_seed(0)
        linear = nn.Linear(40, 24)
        x, residual = torch.randn(3, 5, 40, generator=gen), torch.randn(3, 5, 24, generator=gen)
        with torch.inference_mode():
            got = packed_linear.run_add(x, packed_linear.pack(linear.weight, torch.float32), linear.bias, residual)
            return bool(torch.allclose(got, F.linear(x, linear.weight, linear.bias) + residual, rtol=1e-5, atol=1e-5))
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False


class FusedOutput(StandIn):
    """BERT's output block in float32: x W.T + b + residual in the product's epilogue, then the block's LayerNorm
    (dropout is the identity in inference)."""

    inner_name = "original"

    def __init__(self, output: nn.Module) -> None:
        super().__init__(output)
        dense = output.dense
        self._packed_from = packed_linear.fingerprint((dense.weight,))
        self._packed = packed_linear.pack(dense.weight, torch.float32)
        self._bias = None if dense.bias is None else dense.bias.detach().float()

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        dense = self.original.dense
        if (input_tensor.dtype != torch.float32
                or input_tensor.shape != (*hidden_states.shape[:-1], dense.out_features)
                or not _runs_fast(self, hidden_states, (torch.float32,), (dense.weight,), self._packed_from)):
            return self.original(hidden_states, input_tensor)
        summed = packed_linear.run_add(hidden_states, self._packed, self._bias, input_tensor.contiguous())
        return self.original.LayerNorm(summed)


def _replacement(child: nn.Module, compute: torch.dtype, masks: AdditiveMask) -> StandIn | None:
    if _attention_shape(child):
        return FusedSelfAttention(child, compute, masks)
    if _intermediate_shape(child):
        epilogue = packed_linear.activation_epilogue(child.intermediate_act_fn)
        return None if epilogue is None else FusedIntermediate(child, epilogue, compute)
    if compute == torch.float32 and _output_shape(child) and residual_epilogue_available():
        return FusedOutput(child)
    return None


def fuse_attention(model: nn.Module, project_for: Callable[[nn.Module], Callable | None]) -> int:
    """Replace every BERT self-attention block of model for which project_for(block) gives a QKV product (see
    FusedSelfAttention) with a float32 FusedSelfAttention running it, in place; the count. The blocks share one
    AdditiveMask."""
    masks = AdditiveMask()

    def replace(module: nn.Module) -> int:
        fused = 0
        for name, child in list(module.named_children()):
            project = project_for(child) if _attention_shape(child) else None
            if project is not None:
                setattr(module, name, FusedSelfAttention(child, torch.float32, masks, project))
                fused += 1
            elif not isinstance(child, StandIn):
                fused += replace(child)
        return fused

    return replace(model)


def fuse_blocks(model: nn.Module, compute: torch.dtype = BF16, masks: AdditiveMask | None = None) -> int:
    """Replace every BERT-style block of model that has a fused twin in `compute` (float32 or bfloat16), in place;
    the count. The attention blocks share one AdditiveMask (the mask is the same in every layer)."""
    if compute not in COMPUTE_TYPES:
        raise ValueError(f"compute must be one of {COMPUTE_TYPES}, got {compute}")
    masks = AdditiveMask() if masks is None else masks
    fused = 0
    for name, child in list(model.named_children()):
        replacement = _replacement(child, compute, masks)
        if replacement is not None:
            setattr(model, name, replacement)
            fused += 1
        elif not isinstance(child, StandIn):
            fused += fuse_blocks(child, compute, masks)
    return fused
