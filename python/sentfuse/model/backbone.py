"""Inference-only changes to a transformers backbone that leave its token embeddings unchanged.

- The pooler head (dense + tanh on the first token) is dropped where the model class supports running
  without one: sentence embeddings never use it.
- On CPU every nn.Linear runs through oneDNN with its weight reordered once into oneDNN's blocked
  layout (what torch.compile's freezing does); on AVX2 CPUs this measured 5-10% faster than the default
  GEMM for the encoder's shapes.
- A bfloat16 / float16 model on a CPU where oneDNN has no matrix kernels for that type (bfloat16's need
  AVX-512, float16's AVX512-FP16) would run its GEMMs emulated, ~15x slower than float32. Those layers instead multiply
  in float32 arithmetic: the half-precision inputs and weights widen exactly, each product is exact in
  float32 and sums accumulate in float32, which is what a native half-precision GEMM computes too (up
  to summation order); the result is rounded back to the model's dtype.
- A model loaded for a compute mode (model.compute) gets that mode's layers; bf16-mixed also fuses BERT's
  attention and GELU blocks (model.fused_blocks), and a float32 model its attention, GELU and output blocks.
Any other device, dtype or autograd use falls back to F.linear with the unchanged weight, so .to()
and training still work.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ops, cpu_features
from . import int8_plan, packed_linear
from .compute import (BF16_MIXED, ComputeMode, int8_engine_available, int8_row_codes, int8_weight_limit,
                      marked_mode)
from .fused_blocks import fuse_attention, fuse_blocks
from .packed_linear import StandIn

logger = logging.getLogger(__name__)

HALF_TYPES = (torch.bfloat16, torch.float16)


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has instructions for dtype's matmuls (float32 always does)."""
    if dtype not in HALF_TYPES:
        return True
    probe = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    check = getattr(torch.ops.mkldnn, probe, None)
    return check is None or bool(check())


def warn_if_emulated(device: torch.device, dtype: torch.dtype) -> None:
    """Say so when a half-precision CPU model cannot be faster than float32 on this CPU."""
    if device.type == "cpu" and not cpu_has_native(dtype):
        name = str(dtype).removeprefix("torch.")
        logger.warning(
            "oneDNN has no %s matrix kernels for this CPU (bfloat16's need AVX-512, float16's AVX512-FP16): "
            "the linear layers multiply %s values with float32 arithmetic, so %s runs no faster than float32 here",
            name, name, name,
        )


class _CpuLinear(StandIn):
    """An nn.Linear with a faster CPU inference path; any other use runs the unchanged layer (F.linear)."""

    inner_name = "linear"

    def __init__(self, linear: nn.Linear, inputs: tuple[torch.dtype, ...] = ()) -> None:
        super().__init__(linear)
        self._dtype = linear.weight.dtype  # the layer's output dtype (the model's)
        self._inputs = (self._dtype, *inputs)  # inputs of these dtypes take the fast path
        self._packed_from = packed_linear.fingerprint((linear.weight,))

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (dtype, device probes) keeps working
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        if (
            x.device.type == "cpu"
            and x.dtype in self._inputs
            and packed_linear.unchanged((w,), self._packed_from)  # not replaced, moved or cast since packing
            and not packed_linear.records_grad(x, (w,))
        ):
            return self._fast(x)
        return F.linear(x.to(w.dtype) if x.dtype in self._inputs else x, w, self.linear.bias)


class PackedLinear(_CpuLinear):
    """Multiplies in `compute` (float32, or bfloat16 for the bf16-mixed mode) with the weight prepacked for
    oneDNN; the bias is added in float32 and the output comes back in the layer's dtype. A bf16-compute layer of
    a float32 model also takes bfloat16 inputs (the fused blocks' outputs) as they are."""

    def __init__(self, linear: nn.Linear, compute: torch.dtype = torch.float32) -> None:
        super().__init__(linear, inputs=(compute,) if compute in HALF_TYPES else ())
        self._compute = compute
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed = packed_linear.pack(linear.weight, compute)

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        y = packed_linear.run(x.to(self._compute), self._packed, self._bias)
        return y if y.dtype == self._dtype else y.to(self._dtype)


class Int8Weight:
    """A linear layer's weight as the int8-dynamic mode multiplies it: quantized once per output channel (symmetric
    int8; 7-bit codes on CPUs without VNNI, compute.int8_weight_limit) and packed for oneDNN's int8 kernels. Each
    product quantizes its float32 input per tensor from the input's range (uint8 with a zero point, sentfuse's
    smooth_quantize: one pass for the range, one for the codes) and oneDNN multiplies, adding the bias, scaling back
    and applying an activation in the product's epilogue.

    With `smooth` (per-input-channel factors s, model.int8_plan) the packed weight is W·diag(s) and the input is
    divided by s inside the quantization pass: the same product in exact arithmetic, with the input's outlier
    channels scaled down before they set the per-tensor scale.

    With `per_row` each input row is quantized from its own range (scale s_r, zero point z_r; 7-bit codes and 8-bit
    weights without VNNI, compute.int8_row_codes). oneDNN's int8 kernels take one input scale, so they multiply the
    codes at unit scale, raw = w_scale_c · Σ_k code_rk · wcode_ck, and one rank-2 update of the output finishes
    y_rc = s_r · raw_rc − s_r z_r · cw_c + b_c (cw_c = w_scale_c · Σ_k wcode_ck): two passes over the output, which
    for BERT's FFN2 is a quarter of the input's size. No activation in the epilogue then (it would have to follow
    the row scale)."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None, per_row: bool = False) -> None:
        w = linear.weight.detach().float()
        if smooth is not None:
            if smooth.shape != (linear.in_features,):
                raise ValueError(f"smooth must have shape ({linear.in_features},), got {tuple(smooth.shape)}")
            w = w * smooth.float()
        self.inverse_smooth = None if smooth is None else smooth.float().reciprocal().contiguous()
        flags = cpu_features.cpu_flags()
        limit, self.max_code = int8_row_codes(flags) if per_row else (int8_weight_limit(flags), 255)
        self.scales = (w.abs().amax(dim=1) / limit).clamp_min(torch.finfo(torch.float32).tiny)
        self.zero_points = torch.zeros(w.shape[0], dtype=torch.long)
        codes = torch.round(w / self.scales[:, None]).clamp_(-limit, limit).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(codes, None)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.per_row = per_row
        if per_row:
            column_terms = codes.sum(dim=1, dtype=torch.float32) * self.scales  # cw [out]
            bias = torch.zeros_like(column_terms) if self.bias is None else self.bias
            self._row_update = torch.stack([column_terms, bias])  # [2, out]: rows (cw, b) of the rank-2 update
            self._unit = (torch.ones((), dtype=torch.float32), torch.zeros((), dtype=torch.int32))

    def multiply(self, x: torch.Tensor, out: torch.dtype = torch.float32,
                 activation: tuple[str, str] = packed_linear.NO_ACTIVATION) -> torch.Tensor:
        """activation(x W.T + b) for float32 x [..., in], in dtype `out`."""
        if self.per_row:
            if activation != packed_linear.NO_ACTIVATION:
                raise ValueError("per-row int8 products take no activation in their epilogue")
            return self._multiply_rows(x).to(out)
        codes, scale, zero_point = _ops.smooth_quantize(x, self.inverse_smooth)
        attr, algorithm = activation
        return torch.ops.onednn.qlinear_pointwise.tensor(
            codes, scale, zero_point, self.packed, self.scales, self.zero_points, self.bias, 1.0, 0, out, attr, [],
            algorithm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """multiply(x): float32 in and out (a fused block's product)."""
        return self.multiply(x)

    def _multiply_rows(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale, zero_point = _ops.smooth_quantize(x, self.inverse_smooth, per_row=True, max_code=self.max_code)
        raw = torch.ops.onednn.qlinear_pointwise.tensor(
            codes, *self._unit, self.packed, self.scales, self.zero_points, None, 1.0, 0, torch.float32, "none", [],
            "")
        flat, s = raw.view(-1, raw.shape[-1]), scale.reshape(-1, 1)
        per_row = torch.cat([-(s * zero_point.reshape(-1, 1)), torch.ones_like(s)], dim=1)  # [rows, 2]: (-s z, 1)
        return flat.mul_(s).addmm_(per_row, self._row_update).view(raw.shape)


class Int8Linear(_CpuLinear):
    """The int8-dynamic mode's linear layer (Int8Weight), float32 in and out."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor | None = None, per_row: bool = False) -> None:
        super().__init__(linear)
        self._int8 = Int8Weight(linear, smooth, per_row)

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        return self._int8.multiply(x)


class Int8Activated(StandIn):
    """A block computing activation(linear(x)) (BERT's intermediate) in the int8-dynamic mode: the activation (a
    GELU oneDNN has) in the int8 product's epilogue, the output in `out`: bfloat16 where the next product (model.
    int8_plan's choice after an activation) is bf16-mixed's, which takes it as it is, else float32 (CPUs without
    bf16 products). Either way no separate activation pass and no conversion."""

    inner_name = "original"

    def __init__(self, block: nn.Module, linear: nn.Linear, epilogue: tuple[str, str],
                 smooth: torch.Tensor | None = None, out: torch.dtype = torch.bfloat16) -> None:
        super().__init__(block)
        self._out = out
        self._linear = (linear,)  # a tuple: the linear stays registered once, inside the original block
        self._int8 = Int8Weight(linear, smooth)
        self._epilogue = epilogue
        self._packed_from = packed_linear.fingerprint((linear.weight,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._linear[0].weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.training
                or not packed_linear.unchanged((w,), self._packed_from) or packed_linear.records_grad(x, (w,))):
            return self.original(x)
        return self._int8.multiply(x, self._out, self._epilogue)


# SENTFUSE_INT8_ACTIVATED=bf16|int8 picks how the int8-dynamic mode multiplies a product fed by an activation (read
# when a model is loaded; benchmarks A/B the two with it): bf16-mixed's product (float32 where the CPU has no bf16
# path) or int8 with per-row input scales. Default: bf16 where the CPU has bf16 products, else int8.
INT8_ACTIVATED_ENV = "SENTFUSE_INT8_ACTIVATED"


def _activated_in_int8() -> bool:
    forced = os.environ.get(INT8_ACTIVATED_ENV, "").strip().lower()
    if forced not in ("", "bf16", "int8"):
        raise ValueError(f"{INT8_ACTIVATED_ENV} must be 'bf16' or 'int8', got {forced!r}")
    return forced == "int8" or (forced == "" and not mode_available(BF16_MIXED))


def _int8_layers(model: nn.Module) -> Callable[[nn.Linear], nn.Module]:
    """The int8-dynamic mode's layer for each linear of model (model.int8_plan): smoothed int8 after a LayerNorm;
    after an activation bf16-mixed's bfloat16 product, or int8 with per-row input scales where the CPU has no bf16
    path (INT8_ACTIVATED_ENV chooses); plain int8 elsewhere; a score head (fewer than NARROW_OUTPUT outputs) stays
    float32 as in bf16-mixed. Blocks that activate an int8 product get Int8Activated first, handing on the next
    product's input dtype."""
    found = int8_plan.plan(model)
    int8 = _activated_in_int8()
    bf16 = mode_available(BF16_MIXED) and not int8
    _activate_in_epilogue(model, found, torch.bfloat16 if bf16 else torch.float32)
    fuse_attention(model, functools.partial(_int8_qkv, found))

    def make(linear: nn.Linear) -> nn.Module:
        layer = found.layers.get(linear, int8_plan.LayerPlan(int8_plan.Int8Role.PLAIN))
        if linear.out_features < NARROW_OUTPUT:
            return PackedLinear(linear)
        if layer.role is int8_plan.Int8Role.ACTIVATED:
            if int8:
                return Int8Linear(linear, per_row=True)
            return PackedLinear(linear, torch.bfloat16 if bf16 else torch.float32)
        return Int8Linear(linear, layer.smooth)

    return make


def _int8_qkv(found: int8_plan.Int8Plan, attention: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """BERT self-attention's query, key and value as one int8 product (they share their input: one quantization
    pass instead of three, one wider product), smoothed with factors for the stacked weight where the plan smooths
    the three; None where the plan treats them apart."""
    parts = [attention.query, attention.key, attention.value]
    plans = [found.layers.get(p) for p in parts]
    roles = {None if plan is None else plan.role for plan in plans}
    if len(roles) != 1 or roles <= {None, int8_plan.Int8Role.ACTIVATED}:
        return None
    stacked = torch.nn.utils.skip_init(nn.Linear, parts[0].in_features, 3 * parts[0].out_features,
                                       bias=parts[0].bias is not None)  # filled below: no random init at load
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([p.weight.detach() for p in parts]))
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([p.bias.detach() for p in parts]))
    smooth = None
    if roles == {int8_plan.Int8Role.SMOOTHED}:
        amax = torch.stack([plan.input_amax for plan in plans]).amax(dim=0)  # one input: the same maxima
        smooth = int8_plan.smoothing_factors(amax, stacked.weight)
    return Int8Weight(stacked, smooth)


def _activate_in_epilogue(model: nn.Module, found: int8_plan.Int8Plan, out: torch.dtype) -> None:
    """Replace each block of found.activated whose activation oneDNN has with Int8Activated (output in `out`), in
    place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child not in found.activated:
                continue
            linear, act = found.activated[child]
            epilogue = packed_linear.activation_epilogue(act)
            if epilogue is not None and linear.out_features >= NARROW_OUTPUT:
                setattr(parent, name, Int8Activated(child, linear, epilogue, found.layers[linear].smooth, out))


def _replace_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, make(child))
            replaced += 1
        elif not isinstance(child, StandIn):  # a fused block multiplies its own linears
            replaced += _replace_linears(child, make)
    return replaced


# How each layer is checked against F.linear on the rounded operands: (layer, operand dtype, tolerance).
_PROBES = {
    "float32": (PackedLinear, torch.float32, 1e-5),
    "bfloat16": (functools.partial(PackedLinear, compute=torch.bfloat16), torch.bfloat16, 2e-2),
    "int8": (Int8Linear, None, 5e-2),
}


@functools.cache
def _probe_linear(kind: str) -> bool:
    """oneDNN's linear ops are private: use one only if it agrees with F.linear here (checked once per process)."""
    make, rounded, tolerance = _PROBES[kind]
    try:
        gen = torch.Generator().manual_seed(0)
        lin = nn.Linear(48, 40)
        x = torch.randn(3, 5, 48, generator=gen)
        with torch.inference_mode():
            w, xr = (lin.weight, x) if rounded is None else (lin.weight.to(rounded).float(), x.to(rounded).float())
            expected = F.linear(xr, w, lin.bias)
            scale = expected.abs().max()
            return bool(torch.allclose(make(lin)(x), expected, atol=tolerance * scale, rtol=tolerance))
    except (RuntimeError, TypeError, AttributeError, NotImplementedError) as e:
        logger.debug("oneDNN %s linear unavailable: %s", kind, e)
        return False


# A product with fewer outputs per row than this (a score head: num_labels) costs nothing next to the backbone's;
# in bf16-mixed it stays float32, since its outputs are the scores and a bf16 output would round each by 2^-9.
NARROW_OUTPUT = 16


def _bf16_layer(linear: nn.Linear) -> PackedLinear:
    return PackedLinear(linear, torch.float32 if linear.out_features < NARROW_OUTPUT else torch.bfloat16)


def mode_available(mode: ComputeMode) -> bool:
    """Whether this CPU and torch build run mode's matrix products (else a model loaded for it runs float32)."""
    if mode.matmul == "bfloat16":
        return cpu_has_native(torch.bfloat16) and _probe_linear("bfloat16")
    return mode.matmul == "int8" and int8_engine_available() and _probe_linear("int8")


def _mode_layer(model: nn.Module, mode: ComputeMode) -> Callable[[nn.Linear], nn.Module] | None:
    """The layer that runs mode's matrix products on this CPU, or None (with a warning) where it cannot."""
    if mode_available(mode):
        return _bf16_layer if mode.matmul == "bfloat16" else _int8_layers(model)
    logger.warning("dtype=%r: this CPU (or torch build) has no %s path for the linear layers (sentfuse info lists "
                   "the modes available); the model runs in float32", mode.name, mode.matmul)
    return None


def _cpu_layer(model: nn.Module, dtype: torch.dtype) -> tuple[Callable[[nn.Linear], nn.Module] | None,
                                                             torch.dtype | None]:
    """(the linear layer a CPU model of dtype takes, the dtype its BERT blocks are fused in or None): its compute
    mode's (bf16-mixed fuses the blocks in bfloat16), else oneDNN-packed float32 where that helps (float32 models,
    whose blocks fuse in float32; half models on CPUs without native half GEMMs), else None (oneDNN's own
    kernels)."""
    mode = marked_mode(model)
    if mode is not None and dtype == mode.load_dtype:
        layer = _mode_layer(model, mode)
        if layer is not None:
            return layer, (torch.bfloat16 if mode.matmul == "bfloat16" else None)
    packs = dtype == torch.float32 or (dtype in HALF_TYPES and not cpu_has_native(dtype))
    if not (packs and _probe_linear("float32")):
        return None, None
    return PackedLinear, (torch.float32 if dtype == torch.float32 else None)


def prepare_backbone(model: nn.Module) -> nn.Module:
    """Drop an unused pooler head and, on CPU, swap the linear layers for faster ones (in place).

    A model loaded for a compute mode (model.compute) gets that mode's layers (bf16-mixed: also the fused
    bfloat16 attention and GELU blocks of model.fused_blocks). Otherwise layers are packed for float32 models
    (with model.fused_blocks' float32 blocks), and for bfloat16 / float16 models where the CPU lacks native
    support for them; with native support (AMX, AVX512-BF16/FP16) oneDNN's own kernels run.
    """
    pooler_optional = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    if pooler_optional and isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    param = next(model.parameters(), None)
    if param is None or not packed_linear.available():
        return model
    if param.device.type != "cpu":
        if marked_mode(model) is not None:
            logger.warning("dtype=%r is a CPU compute mode: on %s the model runs in %s",
                           marked_mode(model).name, param.device, param.dtype)
        return model
    layer, fused_dtype = _cpu_layer(model, param.dtype)
    if fused_dtype is not None:
        fuse_blocks(model, fused_dtype)
    if layer is not None:
        _replace_linears(model, layer)
    return model


def unpack_linears(module: nn.Module) -> int:
    """Put each stand-in's module (a PackedLinear's nn.Linear, a fused block's original) back in its place (for
    training: weights change every step)."""
    unpacked = 0
    for name, child in module.named_children():
        if isinstance(child, StandIn):
            setattr(module, name, child.inner)
            unpacked += 1
        else:
            unpacked += unpack_linears(child)
    return unpacked


def repack_linears(model: nn.Module) -> nn.Module:
    """prepare_backbone again after training: the packed weights are copies, so they are taken afresh."""
    unpack_linears(model)
    return prepare_backbone(model)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model's weights under transformers' own names (a stand-in's inner module named as the stand-in)."""
    inner = {f"{name}.{m.inner_name}.": f"{name}." for name, m in model.named_modules() if isinstance(m, StandIn)}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in inner if key.startswith(p)), None)
        state[key if prefix is None else inner[prefix] + key[len(prefix):]] = value
    return state
