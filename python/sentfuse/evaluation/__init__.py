"""Evaluators with sentence-transformers' names, arguments and metric names, on sentfuse's encode and kernels."""

from ..search.similarity import SimilarityFunction
from .base import BaseEvaluator, SentenceEvaluator
from .binary import BinaryClassificationEvaluator
from .distillation import MSEEvaluator, TranslationEvaluator
from .mining import ParaphraseMiningEvaluator
from .reranking import RerankingEvaluator
from .retrieval import InformationRetrievalEvaluator
from .sequential import SequentialEvaluator
from .similarity import EmbeddingSimilarityEvaluator
from .triplet import TripletEvaluator

__all__ = ["BaseEvaluator", "BinaryClassificationEvaluator", "EmbeddingSimilarityEvaluator",
           "InformationRetrievalEvaluator", "MSEEvaluator", "ParaphraseMiningEvaluator", "RerankingEvaluator",
           "SentenceEvaluator", "SequentialEvaluator", "SimilarityFunction", "TranslationEvaluator",
           "TripletEvaluator"]
