"""Batch samplers: sentence-transformers' BatchSamplers names, seeded per epoch so a resumed run sees the
same batches as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any

import torch
from torch.utils.data import Sampler

from .data import LABEL_COLUMNS


class BatchSamplers(str, Enum):
    BATCH_SAMPLER = "batch_sampler"
    NO_DUPLICATES = "no_duplicates"


class MultiDatasetBatchSamplers(str, Enum):
    """How a training run over several datasets picks the dataset of each batch."""

    ROUND_ROBIN = "round_robin"  # one batch of each in turn, until the smallest runs out
    PROPORTIONAL = "proportional"  # every batch of every dataset, in an order shuffled per epoch


class ShuffledBatchSampler(Sampler[list[int]]):
    """Row indices shuffled by (seed, epoch) and cut into batches of batch_size."""

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool = False, seed: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class NoDuplicatesBatchSampler(ShuffledBatchSampler):
    """Batches in which no text appears twice (in any text column), so no in-batch negative is secretly a
    positive. A row that would repeat a text waits for a later batch; each epoch still visits every row."""

    def __init__(self, dataset: Any, batch_size: int, drop_last: bool = False, seed: int = 0,
                 text_columns: tuple[str, ...] | None = None) -> None:
        super().__init__(dataset, batch_size, drop_last, seed)
        names = text_columns or [c for c in dataset.column_names if c not in LABEL_COLUMNS]
        # As lists: datasets' Column reads one row per call through Arrow (0.7 s per 5,000 lookups here).
        self._texts = [list(dataset[c][:]) for c in names]

    def __iter__(self) -> Iterator[list[int]]:
        waiting = self._order()
        while waiting:
            batch, seen, later = [], set(), []
            for position, index in enumerate(waiting):
                if len(batch) == self.batch_size:
                    later.extend(waiting[position:])
                    break
                row = {column[index] for column in self._texts}
                if row & seen:
                    later.append(index)
                else:
                    batch.append(index)
                    seen |= row
            waiting = later
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch


class MultiDatasetBatchSampler(Sampler[list[int]]):
    """Batches of one dataset at a time, as indices into the datasets laid end to end (offsets: where each
    starts), each dataset batched by its own sampler."""

    def __init__(self, samplers: list[ShuffledBatchSampler], offsets: list[int],
                 strategy: MultiDatasetBatchSamplers, seed: int = 0) -> None:
        self.samplers, self.offsets = samplers, offsets
        self.strategy, self.seed, self.epoch = MultiDatasetBatchSamplers(strategy), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def _sources(self) -> list[int]:
        """The dataset of each batch, in order."""
        if self.strategy == MultiDatasetBatchSamplers.ROUND_ROBIN:
            return list(range(len(self.samplers))) * min(len(s) for s in self.samplers)
        sources = torch.tensor([i for i, s in enumerate(self.samplers) for _ in range(len(s))])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return sources[torch.randperm(len(sources), generator=generator)].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        batches = [iter(s) for s in self.samplers]
        for source in self._sources():
            batch = next(batches[source], None)  # a no-duplicates sampler may yield fewer batches than it counts
            if batch is not None:
                yield [self.offsets[source] + i for i in batch]

    def __len__(self) -> int:
        lengths = [len(s) for s in self.samplers]
        if self.strategy == MultiDatasetBatchSamplers.ROUND_ROBIN:
            return min(lengths) * len(lengths)
        return sum(lengths)
