"""Fine-tuning sentfuse Encoders: a differentiable forward, sentence-transformers' trainer and fit.

The trainer and its arguments load transformers.Trainer and accelerate, which take seconds to import:
they are imported on first use, so `import sentfuse` (which gives Encoder its fit method) stays quick.
"""

from importlib import import_module
from typing import Any

from .data import InputExample, dataset_columns
from .forward import TokenColumn, embed_tokens, tokenize_column
from .mode import inference_mode, trainable_modules, training_mode
from .samplers import BatchSamplers, MultiDatasetBatchSamplers

_LAZY = {
    "SentenceTransformerTrainer": ".trainer",
    "NonFiniteLossError": ".trainer",
    "SentenceTransformerTrainingArguments": ".args",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchSamplers",
    "MultiDatasetBatchSamplers",
    "InputExample",
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
