"""Compute modes: a CPU backbone kept in float32 whose linear layers multiply in a narrower type.

A model's `dtype` (the constructors' keyword, the CLI's --dtype) is either a storage dtype (float32,
bfloat16, ...: every layer runs in it) or one of these modes, which load the checkpoint in float32 and change
only how each nn.Linear multiplies:

- "bf16-mixed": weights packed once for oneDNN in bfloat16, each matrix product's inputs rounded to bfloat16
  and multiplied on the bf16 matrix units (AMX / AVX512-BF16) with float32 accumulation, its output rounded
  once to bfloat16. In BERT-family encoders attention's Q/K/V are one product and the heads run SDPA in
  bfloat16, and the FFN's bias + GELU run in the product's float32 epilogue (model.fused_blocks): outputs
  that only feed another product stay bfloat16. Softmax's exponentials and sums, LayerNorm, the residual
  stream, pooling and score heads (fewer than 16 outputs per row) stay float32, which is what keeps
  embeddings within ~1e-4 of float32 (min cosine) where a pure bfloat16 model drifts further.
- "int8-dynamic": weights quantized to int8 once (per output channel, symmetric; 7-bit codes on CPUs without
  VNNI, see int8_weight_limit), each linear layer's input
  quantized per call (per tensor, uint8 from its range: sentfuse's smooth_quantize op) and multiplied by oneDNN's
  int8 kernels (AMX-INT8 / AVX512-VNNI where the CPU has them), bias and scales in the epilogue, output in float32.
  Products fed by a LayerNorm (attention's Q/K/V, one product in BERT-family encoders, and the FFN's first)
  divide their input by SmoothQuant factors first (folded into the weight); products fed by an activation (the
  FFN's second, after GELU) run bf16-mixed's bfloat16 product where the CPU has one, else int8 with per-row input
  scales; score heads stay float32: model.int8_plan decides per layer at load, from one forward on random
  tokens. The FFN's GELU runs in its first product's epilogue, which hands the second its input dtype. Measured
  on all-MiniLM-L6-v2: min cosine 0.998 to float32 on AMX (per-tensor int8 everywhere: 0.988), 0.9966 on an
  AVX2 CPU (7-bit weights, per-row FFN2).
  Everything else (attention's softmax, LayerNorm, residuals, pooling) stays float32.

Off the CPU (or while autograd records) every layer falls back to the plain float32 nn.Linear, so .to()
and training keep working. The layers themselves are in model.backbone; this module names the modes,
marks a loaded model with its mode and tells which modes this CPU runs on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# The attribute load_pretrained sets on a model loaded for a compute mode; prepare_backbone reads it.
MODE_ATTRIBUTE = "sentfuse_compute_mode"


@dataclass(frozen=True)
class ComputeMode:
    """One compute mode: its name (what dtype= takes) and the type its matrix products use."""

    name: str
    matmul: str  # "bfloat16" or "int8"
    summary: str

    def __str__(self) -> str:
        return self.name

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype the checkpoint loads in (and the model reports): the residual stream's."""
        return torch.float32


BF16_MIXED = ComputeMode("bf16-mixed", "bfloat16", "bf16 matrix products, float32 elsewhere")
INT8_DYNAMIC = ComputeMode("int8-dynamic", "int8", "int8 linear layers (dynamic activation scale, smoothed inputs), "
                           "bf16 after activations, float32 elsewhere")
COMPUTE_MODES = {mode.name: mode for mode in (BF16_MIXED, INT8_DYNAMIC)}


def compute_mode(value: Any) -> ComputeMode | None:
    """The compute mode value names (a ComputeMode or its name), else None."""
    if isinstance(value, ComputeMode):
        return value
    return COMPUTE_MODES.get(value) if isinstance(value, str) else None


def load_dtype(dtype: torch.dtype | ComputeMode | None) -> torch.dtype | None:
    """The storage dtype to load a checkpoint in for a model dtype (a compute mode's is float32)."""
    return dtype.load_dtype if isinstance(dtype, ComputeMode) else dtype


def mark(model: torch.nn.Module, dtype: torch.dtype | ComputeMode | None) -> None:
    """Record on a freshly loaded model the compute mode it was loaded for (nothing for a storage dtype)."""
    if isinstance(dtype, ComputeMode):
        setattr(model, MODE_ATTRIBUTE, dtype)


def marked_mode(model: torch.nn.Module) -> ComputeMode | None:
    return getattr(model, MODE_ATTRIBUTE, None)


def int8_engine_available() -> bool:
    """Whether torch has oneDNN's quantized engine (the int8 linear layers' kernels)."""
    return "onednn" in torch.backends.quantized.supported_engines


# Flags of CPUs whose int8 dot-product instructions sum u8 x s8 products in 32 bits (VNNI, AMX-INT8).
INT8_DOT_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


def int8_weight_limit(flags: frozenset[str]) -> int:
    """The largest |code| of the int8-dynamic mode's weights on a CPU with these flags: 127 where the CPU has
    32-bit int8 dot products (INT8_DOT_FLAGS), else 63. Without them oneDNN multiplies with vpmaddubsw, which adds
    two u8 x s8 products into int16 and saturates past 32,767: 2 x 255 x 127 overflows (measured on a Zen 3: 16% of
    the largest output off), 2 x 255 x 63 cannot. Halving the weights' range, not the inputs', kept MiniLM's
    1,536-wide products closer to float32 (1.25% against 2.0% of the largest output, random inputs)."""
    return 127 if any(flag in flags for flag in INT8_DOT_FLAGS) else 63


def int8_row_codes(flags: frozenset[str]) -> tuple[int, int]:
    """(largest |weight code|, largest input code) of the int8-dynamic mode's products with per-row input scales on
    a CPU with these flags. Without 32-bit int8 dot products one operand must lose a bit (int8_weight_limit); with
    each row's own scale the inputs' rounding is the smaller error, so there the inputs take 7-bit codes and the
    weights keep 8 (2 x 127 x 127 fits int16). Measured on all-MiniLM-L6-v2 (FFN2 per-row, 2,000 SQuAD questions,
    Zen 3): min cosine 0.99656 against 0.99566 with 7-bit weights."""
    return (127, 255) if any(flag in flags for flag in INT8_DOT_FLAGS) else (127, 127)


def hardware_support(flags: frozenset[str]) -> dict[str, str]:
    """For each mode, how this CPU (its /proc/cpuinfo flags) runs the matrix products: the unit, "emulated", or
    that the mode has no path and the model runs float32."""
    if {"amx_bf16", "amx_tile"} <= flags:
        bf16 = "AMX-BF16"
    elif "avx512_bf16" in flags:
        bf16 = "AVX512-BF16"
    elif {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags:
        bf16 = "emulated (float32 arithmetic, no faster than float32)"
    else:  # oneDNN packs no bf16 weights here (AVX2)
        bf16 = "none here: a model loaded for it runs float32"
    if not int8_engine_available():
        int8 = "unavailable (torch built without oneDNN's quantized engine)"
    elif {"amx_int8", "amx_tile"} <= flags:
        int8 = "AMX-INT8"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        int8 = "VNNI"
    else:
        int8 = "AVX2/AVX-512 int8 without VNNI: 7-bit weight codes"
    return {BF16_MIXED.name: bf16, INT8_DYNAMIC.name: int8}


def describe(flags: frozenset[str]) -> str:
    """One line for `sentfuse info`: each compute mode and what runs its matrix products here."""
    support = hardware_support(flags)
    return "; ".join(f"{name} ({support[name]})" for name in COMPUTE_MODES)
