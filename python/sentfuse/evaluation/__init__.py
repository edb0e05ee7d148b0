"""Evaluators with sentence-transformers' names, arguments and metric names, on sentfuse's encode and kernels."""

from .binary import BinaryClassificationEvaluator
from .retrieval import InformationRetrievalEvaluator
from .sequential import SequentialEvaluator
from .similarity import EmbeddingSimilarityEvaluator
from .triplet import TripletEvaluator

__all__ = ["BinaryClassificationEvaluator", "EmbeddingSimilarityEvaluator", "InformationRetrievalEvaluator",
           "SequentialEvaluator", "TripletEvaluator"]
