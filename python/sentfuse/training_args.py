"""sentence-transformers' module of the same name: the training arguments and the batch sampler choices, so
`from sentence_transformers.training_args import BatchSamplers` switches by its import line alone."""

from .train.args import SentenceTransformerTrainingArguments
from .train.samplers import BatchSamplers, MultiDatasetBatchSamplers

__all__ = ["BatchSamplers", "MultiDatasetBatchSamplers", "SentenceTransformerTrainingArguments"]
