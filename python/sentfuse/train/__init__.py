"""Fine-tuning sentfuse Encoders: a differentiable forward, sentence-transformers' trainer and fit."""

from .args import SentenceTransformerTrainingArguments
from .data import dataset_columns
from .forward import TokenColumn, embed_tokens, tokenize_column
from .mode import inference_mode, trainable_modules, training_mode
from .samplers import BatchSamplers
from .trainer import NonFiniteLossError, SentenceTransformerTrainer

__all__ = [
    "BatchSamplers",
    "NonFiniteLossError",
    "SentenceTransformerTrainer",
    "SentenceTransformerTrainingArguments",
    "TokenColumn",
    "dataset_columns",
    "embed_tokens",
    "inference_mode",
    "tokenize_column",
    "trainable_modules",
    "training_mode",
]
