"""Embedding quantization with sentence-transformers' `quantize_embeddings` semantics.

int8 / uint8: each dimension's [min, max] range (from `ranges`, from `calibration_embeddings`, or else
from the embeddings themselves) is cut into 256 equal buckets; a value maps to its bucket index,
shifted by -128 for int8. binary / ubinary: one bit per dimension (value > 0), packed 8 to a byte,
shifted by -128 for binary.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import CALIBRATED_PRECISIONS, PRECISIONS, check_calibration_rows, check_precision

__all__ = ["PRECISIONS", "check_precision", "quantize_embeddings", "quantized_dim", "quantized_dtype"]


def quantized_dim(dim: int, precision: str) -> int:
    """Width of one quantized embedding of `dim` floats."""
    return (dim + 7) // 8 if precision.endswith("binary") else dim


def quantized_dtype(precision: str) -> np.dtype:
    if precision == "float32":
        return np.dtype(np.float32)
    return np.dtype(np.int8 if precision in ("int8", "binary") else np.uint8)


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.dtype == torch.bfloat16 else x.detach().cpu().numpy()
    return np.asarray(x)


def calibration_ranges(embeddings: np.ndarray, precision: str) -> np.ndarray:
    """[2, D]: per-dimension minimum and maximum of embeddings [N, D]."""
    check_calibration_rows(len(embeddings) if embeddings.ndim == 2 else 1, precision)
    return np.stack((embeddings.min(axis=0), embeddings.max(axis=0)))


def quantize_embeddings(
    embeddings: torch.Tensor | np.ndarray | list,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Quantize float embeddings [N, D] (or [D]) to `precision`; a list of [n_i, D] matrices shares one range."""
    check_precision(precision)
    if isinstance(embeddings, list):
        if not embeddings:
            return []
        arrays = [_to_numpy(e) for e in embeddings]
        if arrays[0].ndim == 2:
            if precision in CALIBRATED_PRECISIONS and ranges is None:
                ranges = calibration_ranges(
                    np.concatenate(arrays) if calibration_embeddings is None else _to_numpy(calibration_embeddings),
                    precision,
                )
            return [quantize_embeddings(a, precision, ranges=ranges) for a in arrays]
        embeddings = np.stack(arrays)
    x = _to_numpy(embeddings)
    if x.dtype in (np.int8, np.uint8):
        raise ValueError("embeddings to quantize must be floating point, got already quantized int8/uint8 values")

    if precision == "float32":
        return x.astype(np.float32)
    if precision.endswith("binary"):
        packed = np.packbits(x > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if x.ndim == 2 and x.shape[0] == 0:
        return np.zeros(x.shape, dtype=quantized_dtype(precision))
    if ranges is None:
        ranges = calibration_ranges(x if calibration_embeddings is None else _to_numpy(calibration_embeddings), precision)
    ranges = np.asarray(ranges).astype(np.float32, copy=False)
    lows = ranges[0]
    steps = (ranges[1] - lows) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension lands in bucket 0
    buckets = np.clip(np.floor((x - lows) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
