"""Finish stage: embeddings in the result type encode's flags ask for."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .quantize import quantize_embeddings, quantized_dim, quantized_dtype


def finish_sentence_embeddings(
    embeddings: torch.Tensor, single: bool, precision: str, convert_to_numpy: bool, convert_to_tensor: bool
) -> Any:
    """[N, D] embeddings (on any device) as one numpy array, one tensor or a list of [D] tensors, quantized
    when precision is not float32; the row alone when single."""
    if convert_to_numpy or precision != "float32":
        embeddings = embeddings.cpu()  # the one copy to the host
    if precision != "float32":
        dim = embeddings.shape[1]
        quantized = (
            quantize_embeddings(embeddings, precision)
            if len(embeddings)
            else np.zeros((0, quantized_dim(dim, precision)), dtype=quantized_dtype(precision))
        )
        out: Any = torch.from_numpy(quantized) if convert_to_tensor else quantized
        if not convert_to_tensor and not convert_to_numpy:
            out = list(torch.from_numpy(quantized))
    elif convert_to_tensor:
        out = embeddings
    elif convert_to_numpy:
        out = (embeddings.float() if embeddings.dtype == torch.bfloat16 else embeddings).numpy()
    else:
        out = list(embeddings.unbind(0))
    return out[0] if single else out


def finish_token_embeddings(tokens: list[torch.Tensor], single: bool, precision: str) -> Any:
    if precision != "float32" and tokens:
        tokens = quantize_embeddings(tokens, precision)
    return tokens[0] if single else tokens
