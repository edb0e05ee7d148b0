"""ContrastiveLoss (Hadsell et al. 2006) and its online form: pairs labelled 1 (similar) are pulled together,
pairs labelled 0 pushed at least `margin` apart."""

from __future__ import annotations

import warnings
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .base import EmbeddingLoss, expect_columns, one_label_per_row

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


def _euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.pairwise_distance(x, y, p=2)


def _manhattan(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.pairwise_distance(x, y, p=1)


def _cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(x, y)


class SiameseDistanceMetric(Enum):
    """Distances between paired rows, under sentence-transformers' names and computed by the same torch
    functions, so the values agree exactly."""

    EUCLIDEAN = (_euclidean,)
    MANHATTAN = (_manhattan,)
    COSINE_DISTANCE = (_cosine_distance,)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.value[0](x, y)


def metric_name(metric: Any) -> str:
    """"SiameseDistanceMetric.NAME" for one of ours or of sentence-transformers' (whose members are the plain
    functions of its class body), else the callable's own name: what get_config_dict records."""
    if isinstance(metric, SiameseDistanceMetric):
        return f"SiameseDistanceMetric.{metric.name}"
    if getattr(metric, "__qualname__", "").startswith("SiameseDistanceMetric."):
        try:
            from sentence_transformers.sentence_transformer.losses import SiameseDistanceMetric as theirs
        except ImportError:
            theirs = object
        name = next((n for n, member in vars(theirs).items() if member is metric), None)
        if name:
            return f"SiameseDistanceMetric.{name}"
    return getattr(metric, "__name__", str(metric))


class _PairLoss(EmbeddingLoss):
    """Two columns and a 0/1 label per pair; labels other than 0 and 1 draw one warning (what each loss does
    with them differs, so the message is the loss's own)."""

    other_labels = ""

    def __init__(self, model: Encoder, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5) -> None:
        super().__init__(model)
        self.distance_metric = distance_metric
        self.margin = margin
        self._checked_labels = False

    def _distances_and_labels(self, embeddings: list[torch.Tensor],
                              labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        expect_columns(self, embeddings, 2)
        labels = one_label_per_row(self, embeddings, labels)
        if not self._checked_labels:
            self._checked_labels = True
            if bool(((labels != 0) & (labels != 1)).any()):
                warnings.warn(f"{type(self).__name__} expects labels 0 or 1; {self.other_labels}",
                              UserWarning, stacklevel=4)
        return self.distance_metric(embeddings[0], embeddings[1]), labels

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": metric_name(self.distance_metric), "margin": self.margin}


class ContrastiveLoss(_PairLoss):
    """Columns (sentence_A, sentence_B), label 1 or 0: mean (or sum) of
    0.5 * (label * d^2 + (1 - label) * relu(margin - d)^2)."""

    other_labels = "others weight the two terms as label and 1 - label"

    def __init__(self, model: Encoder, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE, margin: float = 0.5,
                 size_average: bool = True) -> None:
        super().__init__(model, distance_metric, margin)
        self.size_average = size_average

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        distances, labels = self._distances_and_labels(embeddings, labels)
        labels = labels.float()
        terms = 0.5 * (labels * distances.pow(2) + (1 - labels) * F.relu(self.margin - distances).pow(2))
        return terms.mean() if self.size_average else terms.sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "size_average": self.size_average}


class OnlineContrastiveLoss(_PairLoss):
    """ContrastiveLoss over the batch's hard pairs only: positives farther apart than the closest negative,
    negatives closer than the farthest positive; summed squared terms."""

    other_labels = "pairs with other labels are left out"

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        distances, labels = self._distances_and_labels(embeddings, labels)
        positives, negatives = distances[labels == 1], distances[labels == 0]
        # With one side empty, the other side's mean is the cut (sentence-transformers' rule).
        hard_negatives = negatives[negatives < (positives.max() if len(positives) else negatives.mean())]
        hard_positives = positives[positives > (negatives.min() if len(negatives) else positives.mean())]
        return hard_positives.pow(2).sum() + F.relu(self.margin - hard_negatives).pow(2).sum()
