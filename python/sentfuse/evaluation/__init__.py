"""Evaluators with sentence-transformers' names, arguments and metric names, on sentfuse's encode and kernels."""

from .retrieval import InformationRetrievalEvaluator
from .similarity import EmbeddingSimilarityEvaluator

__all__ = ["EmbeddingSimilarityEvaluator", "InformationRetrievalEvaluator"]
