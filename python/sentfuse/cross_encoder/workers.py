"""The cross-encoder's side of the worker pool (encode/pool.py): each worker process holds one PairScorer."""

from __future__ import annotations

from typing import Any

import numpy as np


class PairScorer:
    """A CrossEncoder in a worker process, answering the pool's encode(chunk, ...) with float32 logits
    [n, num_labels]; the calling process applies the activation (any callable, never pickled)."""

    def __init__(self, device: str | None = None, **kwargs: Any) -> None:
        from .model import CrossEncoder

        self.model = CrossEncoder(device=device, **kwargs)

    def encode(self, pairs: list, show_progress_bar: bool = False, prompt: str | None = None,
               batch_size: int | None = None, max_batch_tokens: int | None = None,
               max_length: int | None = None) -> np.ndarray:
        logits = self.model._logits([tuple(p) for p in pairs], prompt, batch_size, max_batch_tokens, show_progress_bar,
                                    max_length)
        return logits.cpu().numpy()
