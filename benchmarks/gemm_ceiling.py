"""The CPU's measured matrix-product ceiling per dtype, and the rate a model's linear layers reach.

ceilings() times oneDNN's linear on encode's compute-bound shape (2,048 x 384 x 1,536: tokens x hidden x
FFN width) with the operands the compute modes use: float32; bf16 (the bf16 matrix units); int8 (oneDNN's
int8 linear on an already quantized uint8 input, the int8-dynamic mode's GEMM without its per-call
quantization). linear_rate() times every matrix product of a sentfuse backbone's linear layers during one
call, so a mode's matrix products can be put as a fraction of its ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

SHAPE = (2048, 384, 1536)  # M x K x N


def best_rate(fn: Callable[[], object], flops: float, min_seconds: float = 0.3, rounds: int = 5) -> float:
    """GFLOP/s of fn's fastest round (each round repeats fn for at least min_seconds / rounds)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / rounds:
                break
        best = min(best, elapsed / calls)
    return flops / best / 1e9


def ceilings(shape: tuple[int, int, int] = SHAPE) -> dict[str, float | None]:
    """{dtype: GFLOP/s (GOP/s for int8)} of oneDNN's linear at shape, for float32, bfloat16 and int8; None where
    oneDNN has no such linear on this CPU (bfloat16 on AVX2: no bf16 weight packing, bf16-mixed runs float32)."""
    m, k, n = shape
    flops = 2.0 * m * k * n
    gen = torch.Generator().manual_seed(0)
    x, w, bias = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen), torch.zeros(n)
    rates = {}
    with torch.inference_mode():
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), None)
            except RuntimeError:
                rates[name] = None
                continue
            xd = x.to(dtype)
            rates[name] = best_rate(
                lambda: torch.ops.mkldnn._linear_pointwise(xd, packed, bias, "none", [], ""), flops)
        rates["int8"] = _int8_rate(x, w, bias, flops)
    return rates


def _int8_rate(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, flops: float) -> float:
    """oneDNN's int8 linear (uint8 activations x int8 weights -> float32), the int8-dynamic mode's kernel, with the
    weight codes' range the mode uses on this CPU (7-bit without VNNI)."""
    from sentfuse import cpu_features
    from sentfuse.model.compute import int8_weight_limit

    scales = (w.abs().amax(1) / int8_weight_limit(cpu_features.cpu_flags())).double()
    qweight = torch.round(w / scales[:, None].float()).to(torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(qweight, list(x.shape))
    xq = torch.randint(0, 256, x.shape, dtype=torch.uint8)
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    return best_rate(lambda: torch.ops.onednn.qlinear_pointwise(
        xq, 0.05, 128, packed, scales.float(), zeros, bias, 1.0, 0, torch.float32, "none", [], ""), flops)


def best(*measured: dict[str, float | None]) -> dict[str, float | None]:
    """Per dtype the highest of several ceilings() measurements (None stays None): on a shared VM the matrix units
    run at a fraction of their speed while a neighbour uses them, and the ceiling is what they give when free."""
    return {name: max((m[name] for m in measured if m[name] is not None), default=None) for name in measured[0]}


def summary(rates: dict[str, float | None]) -> str:
    """'float32 208, bfloat16 629, int8 746' (n/a where the CPU has no such linear)."""
    return ", ".join(f"{name} {rate:,.0f}" if rate is not None else f"{name} n/a" for name, rate in rates.items())


def linear_rate(backbone: nn.Module, call: Callable[[], object]) -> dict[str, float]:
    """Run call() once with every matrix product of backbone's linear layers timed: each product through
    sentfuse's packed path (model.packed_linear.run / run_add: PackedLinear layers and the fused blocks' QKV, GELU
    and residual-add products), each int8 product (model.backbone.Int8Weight.multiply: Int8Linear layers, the int8
    QKV and GELU blocks; the input's quantization included), and every other linear layer (nn.Linear) by hooks.
    {'gflop', 'seconds' inside those products, 'wall' seconds of the call}."""
    from sentfuse.model import backbone as sentfuse_backbone
    from sentfuse.model import packed_linear
    from sentfuse.model.backbone import Int8Linear, Int8Weight, PackedLinear, _CpuLinear

    totals = {"gflop": 0.0, "seconds": 0.0}
    inner = {id(m.linear) for m in backbone.modules() if isinstance(m, _CpuLinear)}
    layers = [m for m in backbone.modules() if isinstance(m, (nn.Linear, _CpuLinear))
              and not isinstance(m, (PackedLinear, Int8Linear)) and id(m) not in inner]
    started: dict[int, float] = {}

    def before(layer: nn.Module, args: tuple) -> None:
        started[id(layer)] = time.perf_counter()

    def after(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        totals["seconds"] += time.perf_counter() - started[id(layer)]
        totals["gflop"] += 2.0 * args[0].numel() * layer.weight.shape[0] / 1e9

    run, run_add, multiply = packed_linear.run, packed_linear.run_add, Int8Weight.multiply

    def timed(product: Callable) -> Callable:
        def timed_product(x: torch.Tensor, packed: torch.Tensor, *args: object) -> torch.Tensor:
            start = time.perf_counter()
            y = product(x, packed, *args)
            totals["seconds"] += time.perf_counter() - start
            totals["gflop"] += 2.0 * x.numel() * packed.shape[0] / 1e9
            return y

        return timed_product

    def timed_multiply(weight: Int8Weight, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        start = time.perf_counter()
        y = multiply(weight, x, *args, **kwargs)
        totals["seconds"] += time.perf_counter() - start
        totals["gflop"] += 2.0 * x.numel() * weight.scales.shape[0] / 1e9
        return y

    handles = [h for m in layers for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    packed_linear.run, packed_linear.run_add = timed(run), timed(run_add)
    sentfuse_backbone.Int8Weight.multiply = timed_multiply
    try:
        start = time.perf_counter()
        call()
        totals["wall"] = time.perf_counter() - start
    finally:
        packed_linear.run, packed_linear.run_add, sentfuse_backbone.Int8Weight.multiply = run, run_add, multiply
        for handle in handles:
            handle.remove()
    return totals
