"""SentenceTransformerTrainingArguments: transformers' TrainingArguments plus the batch sampler."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .samplers import BatchSamplers, MultiDatasetBatchSamplers


@dataclass
class SentenceTransformerTrainingArguments(TrainingArguments):
    """TrainingArguments (learning_rate, num_train_epochs, per_device_train_batch_size, warmup_steps, bf16,
    save_steps, eval_strategy, seed, ...) with sentence-transformers' batch_sampler and
    multi_dataset_batch_sampler, and sentfuse's
    max_batch_tokens (padded tokens per backbone call; texts are batched by length within a batch)."""

    batch_sampler: BatchSamplers | str = field(default=BatchSamplers.BATCH_SAMPLER,
                                                metadata={"help": "batch_sampler or no_duplicates"})
    multi_dataset_batch_sampler: MultiDatasetBatchSamplers | str = field(
        default=MultiDatasetBatchSamplers.PROPORTIONAL,
        metadata={"help": "with several train datasets: proportional or round_robin"})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "padded tokens per backbone call"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.batch_sampler = BatchSamplers(self.batch_sampler)
        self.multi_dataset_batch_sampler = MultiDatasetBatchSamplers(self.multi_dataset_batch_sampler)
        # The collator reads every column itself (text columns, label); none may be dropped.
        self.remove_unused_columns = False
