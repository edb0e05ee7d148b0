"""TripletLoss: the anchor must sit closer to the positive than to the negative by a margin."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..search.similarity import pairwise_cos_sim, pairwise_euclidean_sim, pairwise_manhattan_sim
from .base import EmbeddingLoss, expect_columns

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


def _cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - pairwise_cos_sim(x, y)


def _euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -pairwise_euclidean_sim(x, y)


def _manhattan_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -pairwise_manhattan_sim(x, y)


class TripletDistanceMetric(Enum):
    """Distances between paired rows, under sentence-transformers' names (TripletDistanceMetric.EUCLIDEAN, ...)."""

    COSINE = (_cosine_distance,)
    EUCLIDEAN = (_euclidean_distance,)
    MANHATTAN = (_manhattan_distance,)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.value[0](x, y)


class TripletLoss(EmbeddingLoss):
    """Columns (anchor, positive, negative): mean of relu(d(a, p) - d(a, n) + triplet_margin)."""

    def __init__(self, model: Encoder, distance_metric=TripletDistanceMetric.EUCLIDEAN, triplet_margin: float = 5) -> None:
        super().__init__(model)
        self.distance_metric = distance_metric
        self.triplet_margin = triplet_margin

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        expect_columns(self, embeddings, 3)
        anchor, positive, negative = embeddings
        gap = self.distance_metric(anchor, positive) - self.distance_metric(anchor, negative)
        return F.relu(gap + self.triplet_margin).mean()

    def get_config_dict(self) -> dict[str, Any]:
        name = getattr(self.distance_metric, "name", getattr(self.distance_metric, "__name__", str(self.distance_metric)))
        return {"distance_metric": f"TripletDistanceMetric.{name}", "triplet_margin": self.triplet_margin}
