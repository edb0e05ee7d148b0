"""oneDNN's prepacked linear: the one place sentfuse's CPU layers multiply a packed weight.

torch's F.linear on CPU hands oneDNN a plain weight, which oneDNN reorders into its blocked layout (and, for
bfloat16 on AMX, its tile layout) on every call. torch.compile's freezing packs the weight once instead
(torch.ops.mkldnn._reorder_linear_weight) and calls torch.ops.mkldnn._linear_pointwise, which also fuses the
bias and an activation into the product's epilogue: the ops used here. They are private, so backbone.py
probes them once per process against F.linear before any layer uses them.

The product's output has the input's dtype: bfloat16 inputs give bfloat16 outputs (accumulated in float32,
rounded once at the end).
"""

from __future__ import annotations

from typing import Any

import torch

# oneDNN epilogues for transformers' activations: (the attr _linear_pointwise takes, its algorithm)
GELU_ERF = ("gelu", "none")
GELU_TANH = ("gelu", "tanh")
NO_ACTIVATION = ("none", "")


def available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def pack(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight [out, in] cast to dtype and reordered once into oneDNN's layout (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), None)


def run(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
        activation: tuple[str, str] = NO_ACTIVATION) -> torch.Tensor:
    """activation(x @ W.T + bias) for x [..., in] of the packed weight's dtype; bias float32 (added before the
    activation, in the accumulator's precision). The one call every packed product goes through (benchmarks
    time the matrix products here)."""
    attr, algorithm = activation
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)


def run_add(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    """x @ W.T + bias + other, the sum in the product's epilogue (no second pass over the output); float32, other
    contiguous and of the output's shape (fused_blocks probes the op once before using it)."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, packed, bias, "add")


def activation_epilogue(act: torch.nn.Module | object) -> tuple[str, str] | None:
    """The oneDNN epilogue computing act (a transformers activation module), or None when it is not a GELU oneDNN
    has: decided by evaluating act, since transformers names several GELU variants."""
    probe = torch.linspace(-6, 6, 97)
    try:
        with torch.inference_mode():
            got = act(probe)
    except (TypeError, RuntimeError):
        return None
    if not isinstance(got, torch.Tensor) or got.shape != probe.shape:
        return None
    for epilogue, approximate in ((GELU_ERF, "none"), (GELU_TANH, "tanh")):
        if torch.allclose(got, torch.nn.functional.gelu(probe, approximate=approximate), rtol=1e-6, atol=1e-6):
            return epilogue
    return None


class StandIn(torch.nn.Module):
    """Base of the modules that replace a transformers module for CPU inference. The replaced module stays a
    child under `inner_name`, unchanged (its weights save, load and train as before), and runs whenever the
    fast path does not apply: autograd, another device or dtype, weights replaced or cast since packing."""

    inner_name = "inner"

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        setattr(self, self.inner_name, inner)
        self.train(inner.training)  # a stand-in for an eval-mode module starts in eval mode too

    @property
    def inner(self) -> torch.nn.Module:
        return getattr(self, self.inner_name)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # A copy or pickle of a stand-in is the module it stands in for: what the stand-in adds (weights packed
        # for oneDNN, tensors torch can neither copy nor serialize) is rebuilt by preparing the copy again.
        return _stood_in_for, (self.inner,)


def _stood_in_for(module: torch.nn.Module) -> torch.nn.Module:
    return module


def unchanged(weights: tuple[torch.Tensor, ...], packed_from: tuple[tuple[int, torch.dtype], ...]) -> bool:
    """Whether weights are still the CPU tensors (storage and dtype) a stand-in packed."""
    return all(w.device.type == "cpu" and (w.data_ptr(), w.dtype) == seen for w, seen in zip(weights, packed_from))


def records_grad(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> bool:
    """Whether autograd records a product of x and weights (then the plain modules run, so gradients flow)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))


def fingerprint(weights: tuple[torch.Tensor, ...]) -> tuple[tuple[int, torch.dtype], ...]:
    return tuple((w.data_ptr(), w.dtype) for w in weights)
