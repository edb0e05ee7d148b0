"""Fine-tuning sentfuse Encoders: a differentiable forward, sentence-transformers' trainer and fit."""

from .forward import TokenColumn, embed_tokens, tokenize_column
from .mode import inference_mode, trainable_modules, training_mode

__all__ = ["TokenColumn", "embed_tokens", "inference_mode", "tokenize_column", "trainable_modules", "training_mode"]
