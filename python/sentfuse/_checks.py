"""Argument checks shared by every module: one rule, one place, one message."""

from __future__ import annotations

import argparse
import math
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .model.compute import COMPUTE_MODES, ComputeMode, compute_mode

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: arrays are written in these dtypes only.
NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float16: np.dtype(np.float16)}

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
# Precisions whose per-dimension ranges are calibrated on the embeddings being quantized.
CALIBRATED_PRECISIONS = ("int8", "uint8")

# How scores are computed: the cosine of two rows, or their plain dot product.
METRICS = ("cosine", "dot")


def int_at_least(value: Any, name: str, minimum: int, allow_none: bool = False) -> int | None:
    """value as an int when it is an integer (not a bool) >= minimum; None passes when allow_none."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str, allow_none: bool = True) -> int | None:
    return int_at_least(value, name, 1, allow_none)


def positive_int_arg(text: str) -> int:
    """argparse type: a positive integer from its command-line text."""
    try:
        return positive_int(int(text), "value", allow_none=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def check_metric(metric: Any, name: str = "metric") -> str:
    if metric not in METRICS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    return metric


def check_threshold(value: Any, name: str = "threshold", metric: str = "cosine") -> float:
    """A score threshold as threshold_pairs takes it: in [-1, 1] for cosines, any finite number for any other
    metric (dot products, or a caller's score function)."""
    expected = "a number in [-1, 1] (a cosine similarity)" if metric == "cosine" else "a finite number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(number) or (metric == "cosine" and not -1.0 <= number <= 1.0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def cosine_arg(text: str) -> float:
    """argparse type: a cosine similarity threshold from its command-line text."""
    try:
        return check_threshold(text, "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {text!r}") from None


def check_min_score(value: Any, name: str = "min_score") -> float | None:
    """A lower bound on cosine_topk's scores: None or any number but NaN (+inf keeps nothing, -inf everything)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or None, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number or None, got NaN")
    return number


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise naming the argument and its first row holding NaN or inf."""
    if x.numel() and x.is_floating_point():
        # One pass without a mask (~10x cheaper than isfinite on 20k x 384): NaN and inf reach the extremes.
        if bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
            return
    bad = ~torch.isfinite(x)
    if bad.any():
        where = f" (row {int(bad.reshape(len(x), -1).any(dim=1).nonzero()[0])} is the first)" if x.dim() > 1 else ""
        raise ValueError(f"{name} holds NaN or inf{where}")


def parse_device(device: Any, name: str = "device") -> torch.device | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device!r} asks for CUDA, but torch sees no CUDA device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(
            f"{name} {device!r} asks for a CUDA device torch does not see ({torch.cuda.device_count()} visible)"
        )
    return parsed


def parse_device_list(devices: Any, name: str = "target_devices") -> list[str]:
    """A non-empty list of devices (str or torch.device) -> their canonical names ('cpu', 'cuda:1')."""
    # A lone "cuda:0" is a str, hence a Sequence: reject it rather than read it as devices "c", "u", ...
    if not isinstance(devices, Sequence) or isinstance(devices, str) or not devices:
        raise ValueError(f"{name} must be a non-empty list of devices such as ['cuda:0', 'cuda:1'], got {devices!r}")
    parsed = []
    for i, device in enumerate(devices):
        if not isinstance(device, (str, torch.device)):
            raise ValueError(f"{name}[{i}] must be a device such as 'cpu' or 'cuda:1', got {device!r}")
        parsed.append(str(parse_device(device, f"{name}[{i}]")))
    return parsed


def device_or_default(device: Any, name: str = "device") -> torch.device:
    """parse_device, with sentence-transformers' default when None: CUDA where torch sees one, else CPU."""
    return parse_device(device, name) or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def json_record(line: str, where: str, fields: Any) -> dict:
    """One JSON-lines record holding every name in fields; ValueError naming where (file and line) if not."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise ValueError(f"{where}: no field {field!r} (fields: {', '.join(record) or 'none'})")
    return record


def _torch_dtype(dtype: Any) -> torch.dtype | None:
    """The torch dtype a torch dtype, a dtype name or a numpy dtype names, else None."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, dtype.removeprefix("torch."))  # names beyond DTYPES, e.g. "float64" where allowed
    try:
        return next((t for t, n in NUMPY_DTYPES.items() if n == np.dtype(dtype)), None)
    except TypeError:
        return None


def parse_dtype(dtype: Any, name: str = "dtype", allowed: Sequence[str] | None = None) -> torch.dtype | ComputeMode | None:
    """The torch dtype named by a torch dtype, a numpy dtype or a name ('float16', 'torch.float16'); None stays.

    allowed None means DTYPES, plus the compute modes (model.compute) when name is "dtype": a model's dtype
    may be a compute mode, an output's may not."""
    if dtype is None:
        return None
    if allowed is None:
        allowed = (*DTYPES, *COMPUTE_MODES) if name == "dtype" else tuple(DTYPES)
    found = compute_mode(dtype) or _torch_dtype(dtype)
    if found is None or str(found).removeprefix("torch.") not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (a name, torch or numpy dtype), got {dtype!r}")
    return found


def check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def check_calibration_rows(rows: int, precision: str, what: str = "embeddings",
                           fix: str = "quantize more at once or pass ranges / calibration_embeddings",
                           name: str = "precision") -> None:
    """int8 / uint8 ranges are each dimension's [min, max] over the rows: one row gives no range. The one
    home of this rule for the Encoder, quantize_embeddings and the CLI (name: how the caller spells the option)."""
    if precision in CALIBRATED_PRECISIONS and rows < 2:
        raise ValueError(
            f"{name} {precision!r} calibrates its ranges on the {what} being quantized and needs at least 2 "
            f"{what}, got {rows}; {fix}"
        )


def check_sentences(sentences: Any) -> tuple[bool, list[str]]:
    """(single, texts): a lone str becomes a one-item list; every item must be a str."""
    if isinstance(sentences, str):
        return True, [sentences]
    if isinstance(sentences, (bytes, dict)) or not isinstance(sentences, Iterable):
        raise TypeError(f"sentences must be a str or a list of str, got {type(sentences).__name__}")
    texts = list(sentences)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"sentences[{i}] is {type(text).__name__}, expected str")
    return False, texts


def plural(count: int, noun: str) -> str:
    """'1 text', '2 texts': counts in messages."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_pairs(inputs: Any, name: str = "inputs") -> tuple[bool, list[tuple[str, str]]]:
    """(single, pairs) for a cross-encoder: one (text, text) pair, or a list (or 2-D numpy array) of them, as
    sentence-transformers tells them apart (a sequence whose first item is not itself a sequence is one pair)."""
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if inputs is None or isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Iterable):
        raise TypeError(f"{name} must be a (text, text) pair or a list of pairs, got {type(inputs).__name__}")
    items = list(inputs)
    single = bool(items) and not isinstance(items[0], (list, tuple))
    if single:
        items = [items]
    pairs = []
    for i, pair in enumerate(items):
        where = name if single else f"{name}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            shown = type(pair).__name__ if not isinstance(pair, (list, tuple)) else (
                f"{len(pair)} items ({', '.join(type(t).__name__ for t in pair[:3])})")
            raise TypeError(f"{where} must be a pair of two str, got {shown}")
        pairs.append((pair[0], pair[1]))
    return single, pairs
