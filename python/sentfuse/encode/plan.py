"""Plan stage: which texts travel together, and the (rows, width) shape each batch is padded to.

Texts wait in buckets keyed by their padded width; a bucket leaves as a batch when it holds as many
texts as a batch of that width may (batch_size texts, max_batch_tokens padded tokens), and the
remainder leaves at the end, longest first. So texts of one batch have nearly the same length and,
unlike sorting the whole input first, the first batch leaves as soon as one bucket fills.

With fixed_shapes (CUDA) widths are rounded up to a few buckets and batch rows to powers of two, so
one encode call sees at most len(buckets) + 1 distinct shapes whatever the corpus size, and the
attention plans and CUDA graphs made for a shape are reused. Without it (CPU, where a new shape costs
nothing) batches are exactly as wide as their longest text and no row is padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Defaults per device type. CPU: measured on AVX2 and AMX CPUs with all-MiniLM-L6-v2 (bench_encode):
# throughput is flat from ~1k to ~4k padded tokens per batch and drops beyond as activations leave the
# caches. CUDA: the first H200 run reached 78k sentences/s at 1,024 pre-tokenized questions per batch and
# 94k at 4,096 (~14 tokens each); 2,048 rows and 64k tokens sit between, and paragraphs (~115 tokens)
# then travel 256-512 at a time.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
DEFAULT_MAX_BATCH_SIZE = {"cpu": 256, "cuda": 2048}
SHORTEST_BUCKET = 16  # widths up to 128 round to multiples of 16, then to 4 steps per doubling


def bucket_width(n: int, max_length: int) -> int:
    """The padded width of a batch whose longest text has n tokens: 16, 32, ..., 128, 160, 192, 224, 256,
    320, ... (never above max_length, the tokenizer's limit, which the position table allows)."""
    if n <= 8 * SHORTEST_BUCKET:
        step = SHORTEST_BUCKET
    else:
        step = (1 << (int(n - 1).bit_length() - 1)) // 4
    return min(max(-(-n // step) * step, SHORTEST_BUCKET), max(max_length, n))


def floor_power_of_two(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def ceil_power_of_two(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


@dataclass(frozen=True)
class ShapePolicy:
    batch_size: int  # most texts in a batch
    max_batch_tokens: int  # most padded tokens (rows x width) in a batch, unless one text alone is longer
    max_length: int  # the tokenizer's limit: no text is longer
    fixed_shapes: bool  # round widths to buckets and rows to powers of two

    def width(self, longest: int) -> int:
        return bucket_width(longest, self.max_length) if self.fixed_shapes else max(longest, 1)

    def rows(self, width: int) -> int:
        """Texts in a full batch of this width."""
        rows = max(1, min(self.batch_size, self.max_batch_tokens // width))
        return floor_power_of_two(rows) if self.fixed_shapes else rows


@dataclass
class PlannedBatch:
    positions: np.ndarray  # [n] int64: the texts' places in the input
    lengths: np.ndarray  # [n] int64: their token counts
    rows: int  # rows after padding (>= n; more only with fixed_shapes)
    width: int  # padded tokens per row

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.width


class BatchPlanner:
    """Streams PlannedBatches: add() each tokenized chunk's lengths, then finish() for the remainder."""

    def __init__(self, policy: ShapePolicy) -> None:
        self.policy = policy
        self._waiting: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # width -> (positions, lengths) parts
        self._count: dict[int, int] = {}
        self._sent_any = False

    def add(self, start: int, lengths: np.ndarray) -> Iterator[PlannedBatch]:
        """Batches made full by the texts at positions start, start + 1, ... with these token counts."""
        lengths = np.asarray(lengths, dtype=np.int64)
        positions = np.arange(start, start + len(lengths), dtype=np.int64)
        distinct, which = np.unique(lengths, return_inverse=True)
        row_widths = np.array([self.policy.width(n) for n in distinct.tolist()], dtype=np.int64)[which]
        for width in np.unique(row_widths).tolist():
            picked = row_widths == width
            self._waiting.setdefault(width, []).append((positions[picked], lengths[picked]))
            self._count[width] = self._count.get(width, 0) + int(picked.sum())
            yield from self._full(width)
        if not self._sent_any and self._count:
            # Nothing full after the first chunk: send the fullest bucket now, so the model starts.
            yield from self._take(max(self._count, key=self._count.get), partial=True)

    def finish(self) -> Iterator[PlannedBatch]:
        """Whatever still waits, longest first, cut by the widest text's batch rows."""
        parts = [p for width in sorted(self._waiting, reverse=True) for p in self._waiting[width]]
        self._waiting.clear()
        self._count.clear()
        if not parts:
            return
        positions = np.concatenate([p for p, _ in parts])
        lengths = np.concatenate([n for _, n in parts])
        order = np.argsort(-lengths, kind="stable")
        positions, lengths = positions[order], lengths[order]
        start = 0
        while start < len(positions):
            width = self.policy.width(int(lengths[start]))
            n = min(self.policy.rows(width), len(positions) - start)
            yield self._batch(positions[start : start + n], lengths[start : start + n], width)
            start += n

    def _full(self, width: int) -> Iterator[PlannedBatch]:
        while self._count.get(width, 0) >= self.policy.rows(width):
            yield from self._take(width, partial=False)

    def _take(self, width: int, partial: bool) -> Iterator[PlannedBatch]:
        positions = np.concatenate([p for p, _ in self._waiting[width]])
        lengths = np.concatenate([n for _, n in self._waiting[width]])
        n = len(positions) if partial else self.policy.rows(width)
        rest = (positions[n:], lengths[n:])
        self._waiting[width] = [rest] if len(rest[0]) else []
        self._count[width] = len(rest[0])
        if not self._count[width]:
            del self._waiting[width], self._count[width]
        yield self._batch(positions[:n], lengths[:n], width)

    def _batch(self, positions: np.ndarray, lengths: np.ndarray, width: int) -> PlannedBatch:
        self._sent_any = True
        rows = ceil_power_of_two(len(positions)) if self.policy.fixed_shapes else len(positions)
        # Exact shapes: the batch is as wide as its longest text (a bucket only groups them).
        width = width if self.policy.fixed_shapes else max(int(lengths.max()), 1)
        return PlannedBatch(positions, lengths, rows, width)
