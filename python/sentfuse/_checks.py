"""Argument checks shared by every module: one rule, one place, one message."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def positive_int(value: Any, name: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def parse_device(device: Any, name: str = "device") -> torch.device | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device!r} asks for CUDA, but torch sees no CUDA device")
    return parsed


def parse_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"{name} must be one of {', '.join(DTYPES)} (str or torch.dtype), got {dtype!r}")


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
