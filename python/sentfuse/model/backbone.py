"""Inference-only changes to a transformers backbone that leave its token embeddings unchanged.

- The pooler head (dense + tanh on the first token) is dropped where the model class supports running
  without one: sentence embeddings never use it.
- On CPU every nn.Linear runs through oneDNN with its weight reordered once into oneDNN's blocked
  layout (what torch.compile's freezing does); on AVX2 CPUs this measured 5-10% faster than the default
  GEMM for the encoder's shapes.
- A bfloat16 / float16 model on a CPU without instructions for that type (no AVX512-BF16/AMX,
  AVX512-FP16) would run its GEMMs emulated, ~15x slower than float32. Those layers instead multiply
  in float32 arithmetic: the half-precision inputs and weights widen exactly, each product is exact in
  float32 and sums accumulate in float32, which is what a native half-precision GEMM computes too (up
  to summation order); the result is rounded back to the model's dtype.
Any other device, dtype or autograd use falls back to F.linear with the unchanged weight, so .to()
and training still work.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

HALF_TYPES = (torch.bfloat16, torch.float16)


def _onednn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


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
            "this CPU has no %s instructions (AVX512-BF16/AMX or AVX512-FP16): the linear layers multiply %s "
            "values with float32 arithmetic, so %s runs no faster than float32 here", name, name, name
        )


class PackedLinear(nn.Module):
    """nn.Linear whose CPU inference path uses a float32 weight prepacked for oneDNN."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self._dtype = linear.weight.dtype  # inputs of this dtype take the packed path
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().float(), None)
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        self._packed_from = linear.weight.data_ptr()

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (dtype, device probes) keeps working
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        if (
            x.device.type == "cpu"
            and x.dtype == self._dtype
            and w.dtype == self._dtype
            and w.device.type == "cpu"
            and w.data_ptr() == self._packed_from  # the weight was not replaced, moved or cast since packing
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        ):
            y = torch.ops.mkldnn._linear_pointwise(x.float(), self._packed, self._bias, "none", [], "")
            return y if y.dtype == x.dtype else y.to(x.dtype)
        return F.linear(x, w, self.linear.bias)


def _pack_linears(module: nn.Module) -> int:
    packed = 0
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child))
            packed += 1
        else:
            packed += _pack_linears(child)
    return packed


@functools.cache
def _probe_packed_linear() -> bool:
    """oneDNN's linear is a private op: use it only if it agrees with F.linear here (checked once per process)."""
    try:
        gen = torch.Generator().manual_seed(0)
        lin = nn.Linear(48, 40)
        x = torch.randn(3, 5, 48, generator=gen)
        with torch.inference_mode():
            return bool(torch.allclose(PackedLinear(lin)(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5))
    except (RuntimeError, TypeError, AttributeError) as e:
        logger.debug("oneDNN packed linear unavailable: %s", e)
        return False


def prepare_backbone(model: nn.Module) -> nn.Module:
    """Drop an unused pooler head and, on CPU, prepack the linear layers (in place).

    Layers are packed for float32 models, and for bfloat16 / float16 models where the CPU lacks
    native support for them; with native support (AMX, AVX512-BF16/FP16) oneDNN's own kernels run.
    """
    pooler_optional = "add_pooling_layer" in inspect.signature(type(model).__init__).parameters
    if pooler_optional and isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    param = next(model.parameters(), None)
    if (
        param is not None
        and param.device.type == "cpu"
        and (param.dtype == torch.float32 or (param.dtype in HALF_TYPES and not cpu_has_native(param.dtype)))
        and _onednn_linear_available()
        and _probe_packed_linear()
    ):
        _pack_linears(model)
    return model


def unpack_linears(module: nn.Module) -> int:
    """Put each PackedLinear's nn.Linear back in its place (for training: weights change every step)."""
    unpacked = 0
    for name, child in module.named_children():
        if isinstance(child, PackedLinear):
            setattr(module, name, child.linear)
            unpacked += 1
        else:
            unpacked += unpack_linears(child)
    return unpacked


def repack_linears(model: nn.Module) -> nn.Module:
    """prepare_backbone again after training: the packed weights are copies, so they are taken afresh."""
    unpack_linears(model)
    return prepare_backbone(model)


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model's weights under transformers' own names (a PackedLinear's inner linear named as the layer)."""
    packed = {name + "." for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in packed if key.startswith(p + "linear.")), None)
        state[key if prefix is None else prefix + key[len(prefix) + len("linear."):]] = value
    return state
