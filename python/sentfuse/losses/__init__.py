"""Training losses with sentence-transformers' names, arguments and values, on sentfuse's differentiable forward."""

from .base import EmbeddingLoss
from .cached import CachedMultipleNegativesRankingLoss
from .cosent import CoSENTLoss
from .cosine import CosineSimilarityLoss
from .matryoshka import MatryoshkaLoss
from .ranking import MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss
from .triplet import TripletDistanceMetric, TripletLoss

__all__ = [
    "CachedMultipleNegativesRankingLoss",
    "CoSENTLoss",
    "CosineSimilarityLoss",
    "EmbeddingLoss",
    "MatryoshkaLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "TripletDistanceMetric",
    "TripletLoss",
]
