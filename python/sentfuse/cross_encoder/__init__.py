"""Cross-encoders (rerankers): sentence-transformers' CrossEncoder on sentfuse's encode pipeline, with the
classifier's logits as the head."""

from .model import CrossEncoder

__all__ = ["CrossEncoder"]
