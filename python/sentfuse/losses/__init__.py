"""Training losses with sentence-transformers' names, arguments and values, on sentfuse's differentiable forward."""

from .base import EmbeddingLoss
from .batch_triplet import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchHardTripletLossDistanceFunction,
    BatchSemiHardTripletLoss,
)
from .cached import CachedMultipleNegativesRankingLoss, CachedMultipleNegativesSymmetricRankingLoss
from .contrastive import ContrastiveLoss, OnlineContrastiveLoss, SiameseDistanceMetric
from .cosent import AnglELoss, CoSENTLoss
from .cosine import CosineSimilarityLoss
from .distill import DistillKLDivLoss, EmbedDistillLoss, MarginMSELoss, MSELoss
from .gist import GISTEmbedLoss
from .matryoshka import MatryoshkaLoss
from .ranking import MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss
from .regularization import GlobalOrthogonalRegularizationLoss
from .softmax import SoftmaxLoss
from .triplet import TripletDistanceMetric, TripletLoss

__all__ = [
    "AnglELoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "BatchSemiHardTripletLoss",
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "CoSENTLoss",
    "ContrastiveLoss",
    "CosineSimilarityLoss",
    "DistillKLDivLoss",
    "EmbedDistillLoss",
    "EmbeddingLoss",
    "GISTEmbedLoss",
    "GlobalOrthogonalRegularizationLoss",
    "MSELoss",
    "MarginMSELoss",
    "MatryoshkaLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "OnlineContrastiveLoss",
    "SiameseDistanceMetric",
    "SoftmaxLoss",
    "TripletDistanceMetric",
    "TripletLoss",
]
