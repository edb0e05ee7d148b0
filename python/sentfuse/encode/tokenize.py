"""Tokenize stage: texts to token ids on every core, chunk by chunk, in input order.

A fast (Rust) tokenizer releases the GIL while it encodes, so a few Python threads each encoding one
chunk keep every core busy. Each chunk's ids land in one flat array with row offsets, so batches are
later gathered with array indexing instead of a loop over rows. Chunks come back in input order as
soon as each is done: the first batch can reach the model after the first chunk.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any

import numpy as np

from ..model.pretrained import backend_copy
from .wordpiece import native_wordpiece, splice

CHUNK_TEXTS = 1024  # most texts per tokenizer call: large enough to amortize the call, small enough to stream
MIN_CHUNK_TEXTS = 64  # fewer texts than threads x 2 chunks still split down to this, so every core gets some
CHUNKS_AHEAD = 2  # chunks in flight per thread


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class TokenChunk:
    """Token ids of texts[start : start + n], without padding."""

    start: int
    ids: np.ndarray  # [total tokens] int64, every text's ids one after another
    offsets: np.ndarray  # [n + 1] int64: text i's ids are ids[offsets[i] : offsets[i + 1]]
    type_ids: np.ndarray | None  # like ids, or None where the tokenizer gives every token type 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _flatten(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
    return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1])), offsets


class ChunkTokenizer:
    """Tokenizes a list of texts into a TokenChunk as the Hugging Face tokenizer would without padding.

    With pairs, each item is a (first, second) pair of texts tokenized together into one row (a
    cross-encoder's input: both segments, their separator and token types, truncated longest first).
    For a fast tokenizer it encodes with a private copy of the Rust tokenizer, truncation set once, so
    that threads never share (or reset) the caller's tokenizer state. special_tokens False leaves out the
    special tokens the tokenizer adds (a static-embedding model's bag has none). Texts and pairs of BERT-family
    tokenizers go through the native WordPiece where it is exact (wordpiece.py).
    """

    def __init__(self, tokenizer: Any, max_length: int, pairs: bool = False, special_tokens: bool = True) -> None:
        self.max_length = max_length
        self.pairs = pairs
        self.special_tokens = special_tokens
        probe = ("a", "b") if pairs else ("a",)
        self._hf = tokenizer
        self._backend = None
        self._native = None
        if getattr(tokenizer, "is_fast", False):
            backend = backend_copy(tokenizer, max_length)
            self._backend = backend
            encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
            self._encode_batch = partial(encode_batch, add_special_tokens=special_tokens)
            self.typed = any(backend.encode(*probe).type_ids)
            if pairs or not self.typed:
                self._native = native_wordpiece(tokenizer, max_length, special_tokens, pairs)
        else:
            self.typed = any(tokenizer(*([p] for p in probe)).get("token_type_ids", [[0]])[0])

    def _encode(self, texts: list) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, type ids) per text (or pair); type ids only where self.typed."""
        if self._backend is not None:
            encodings = self._encode_batch([tuple(t) for t in texts] if self.pairs else texts)
            return [e.ids for e in encodings], [e.type_ids for e in encodings] if self.typed else []
        segments = ([t[0] for t in texts], [t[1] for t in texts]) if self.pairs else (texts,)
        out = self._hf(*segments, padding=False, truncation="longest_first", max_length=self.max_length,
                       add_special_tokens=self.special_tokens)
        return out["input_ids"], out["token_type_ids"] if self.typed else []

    def __call__(self, texts: list, start: int = 0) -> TokenChunk:
        if self._native is not None:
            # The native WordPiece (wordpiece.py) takes the texts it can; the rest take the tokenizer.
            if self.pairs:
                flat, offsets, rejected, types = self._native.encode_pairs(texts)
            else:
                (flat, offsets, rejected), types = self._native.encode_batch(texts), None
            if len(rejected):
                ids, other_types = self._encode([texts[i] for i in rejected])
                if types is not None:
                    types = splice(types, offsets, rejected, other_types)[0]
                flat, offsets = splice(flat, offsets, rejected, ids)
            return TokenChunk(start, flat, offsets, types)
        ids, types = self._encode(texts)
        flat, offsets = _flatten(ids)
        type_flat = _flatten(types)[0] if self.typed else None
        return TokenChunk(start, flat, offsets, type_flat)


def tokenize_chunks(
    texts: Sequence[str], tokenize: Any, threads: int, chunk_texts: int | None = None
) -> Iterator[TokenChunk]:
    """TokenChunks of texts in input order, tokenize(texts, start) running on `threads` threads."""
    chunk_texts = chunk_texts or min(CHUNK_TEXTS, max(MIN_CHUNK_TEXTS, -(-len(texts) // (CHUNKS_AHEAD * threads))))
    starts = range(0, len(texts), chunk_texts)
    if threads <= 1:
        for start in starts:
            yield tokenize(list(texts[start : start + chunk_texts]), start)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="sentfuse-tokenize") as pool:
        pending: deque = deque()
        try:
            for start in starts:
                pending.append(pool.submit(tokenize, list(texts[start : start + chunk_texts]), start))
                if len(pending) >= threads * CHUNKS_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class TokenStore:
    """Tokenized chunks until every text of theirs has been gathered into a batch."""

    def __init__(self, pad_id: int, pad_type_id: int, left_padding: bool) -> None:
        self.pad_id = pad_id
        self.pad_type_id = pad_type_id
        self.left_padding = left_padding
        self._chunks: dict[int, TokenChunk] = {}
        self._left: dict[int, int] = {}  # chunk start -> texts not gathered yet

    def add(self, chunk: TokenChunk) -> None:
        if len(chunk):
            self._chunks[chunk.start] = chunk
            self._left[chunk.start] = len(chunk)

    def gather(
        self, positions: np.ndarray, width: int, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None
    ) -> None:
        """Write the texts at positions into ids, mask (and types) [rows, width], padded; rows past
        len(positions) are padding rows with one unmasked token (so no attention row is fully masked)."""
        n = len(positions)
        ids.fill(self.pad_id)
        mask.fill(0)
        mask[n:, 0] = 1
        if types is not None:
            types.fill(self.pad_type_id)
        starts = np.fromiter(self._chunks, dtype=np.int64, count=len(self._chunks))
        starts.sort()
        owner = starts[np.searchsorted(starts, positions, side="right") - 1]
        cols = np.arange(width, dtype=np.int64)
        for start in np.unique(owner).tolist():
            picked = np.flatnonzero(owner == start)
            chunk = self._chunks[start]
            local = positions[picked] - start
            begin, count = chunk.offsets[local], chunk.offsets[local + 1] - chunk.offsets[local]
            shift = (width - count)[:, None] if self.left_padding else 0
            src = begin[:, None] + cols[None, :] - shift
            valid = (cols[None, :] >= shift) & (cols[None, :] < shift + count[:, None])
            src = np.where(valid, src, 0)
            rows = picked[:, None]
            ids[rows, cols] = np.where(valid, chunk.ids[src] if len(chunk.ids) else 0, self.pad_id)
            mask[rows, cols] = valid
            if types is not None:
                typed = chunk.type_ids is not None and len(chunk.ids)
                types[rows, cols] = np.where(valid, chunk.type_ids[src] if typed else 0, self.pad_type_id)
            self._left[start] -= len(picked)
            if not self._left[start]:
                del self._chunks[start], self._left[start]
