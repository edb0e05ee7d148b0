"""Batch planning and background tokenization for Encoder.encode.

Texts are tokenized once, without padding, in windows; each window is sorted by token count (longest
first) and cut into batches whose padded size stays within a token budget, so short texts travel in large
batches and long ones in small batches. A background thread tokenizes and collates the next batches while
the model runs the current one (fast tokenizers release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Defaults measured on a 2-core AVX2 CPU with all-MiniLM-L6-v2 (benchmarks/bench_encode.py): throughput is
# flat from ~1k to ~4k padded tokens per batch and drops beyond as activations leave the caches. On CUDA,
# larger batches keep the GPU busy; that default is not measured yet (no GPU session so far).
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}
DEFAULT_MAX_BATCH_SIZE = {"cpu": 256, "cuda": 1024}
WINDOW = 16384  # texts tokenized (and sorted) at a time: bounds host memory for huge inputs
QUEUE_DEPTH = 4  # collated batches kept ready ahead of the model


@dataclass
class Batch:
    positions: np.ndarray  # [B] the batch's places in the caller's input order
    features: dict[str, torch.Tensor]  # padded tokenizer outputs, [B, L] each
    index: torch.Tensor  # positions as an int64 tensor (page-locked when bound for a GPU)


def plan_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Split indices into batches, longest first, each with at most batch_size texts and at most
    max_batch_tokens padded tokens (count × longest length); a text longer than the budget goes alone."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)  # sorted: the first text is the batch's longest
        size = max(1, min(batch_size, max_batch_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def collate(
    encoded: dict[str, list[list[int]]], rows: np.ndarray, pad_values: dict[str, int], padding_side: str
) -> dict[str, torch.Tensor]:
    """Pad the rows' token lists into [B, L] int64 tensors (pad_values per key, left or right padding)."""
    keys = [k for k in encoded if k in pad_values]
    lengths = [len(encoded["input_ids"][r]) for r in rows]
    width = max(lengths, default=0)
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        arr = np.full((len(rows), width), pad_values[key], dtype=np.int64)
        for i, (r, n) in enumerate(zip(rows, lengths)):
            if n:
                if padding_side == "left":
                    arr[i, width - n :] = encoded[key][r]
                else:
                    arr[i, :n] = encoded[key][r]
        out[key] = torch.from_numpy(arr)
    return out


class BatchStream:
    """Iterates Batches for texts, produced by a daemon thread; errors in the thread re-raise here.

    tokenize(texts) must return a dict of per-text token-id lists (a tokenizer call without padding).
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenize: Callable[[list[str]], dict[str, list[list[int]]]],
        pad_values: dict[str, int],
        padding_side: str,
        batch_size: int,
        max_batch_tokens: int,
        window: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        self._texts = texts
        self._tokenize = tokenize
        self._pad_values = pad_values
        self._padding_side = padding_side
        self._batch_size = batch_size
        self._max_batch_tokens = max_batch_tokens
        self._window = window or WINDOW
        self._pin_memory = pin_memory  # page-locked batches let the copy to the GPU run asynchronously
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="sentfuse-tokenize", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for start in range(0, len(self._texts), self._window):
                encoded = self._tokenize(list(self._texts[start : start + self._window]))
                lengths = [len(ids) for ids in encoded["input_ids"]]
                for rows in plan_batches(lengths, self._batch_size, self._max_batch_tokens):
                    features = collate(encoded, rows, self._pad_values, self._padding_side)
                    index = torch.from_numpy(rows + start)
                    if self._pin_memory:
                        features = {k: v.pin_memory() for k, v in features.items()}
                        index = index.pin_memory()
                    batch = Batch(rows + start, features, index)
                    if not self._put(batch):
                        return
            self._put(None)
        except BaseException as e:  # handed to the consumer, which raises it in the caller's thread
            self._put(e)

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
