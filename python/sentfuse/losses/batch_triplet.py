"""Triplet losses mined inside the batch (Hermans et al. 2017): one text column with a class label per row;
every row is an anchor, rows of its class its positives, all others its negatives.

- BatchAllTripletLoss: every valid (anchor, positive, negative), averaged over the triplets still violating
  the margin.
- BatchHardTripletLoss: per anchor its farthest positive against its closest negative;
  BatchHardSoftMarginTripletLoss the same with softplus in place of the margin.
- BatchSemiHardTripletLoss: per (anchor, positive) the closest negative farther than the positive (the
  farthest negative where none is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..search.similarity import cos_sim
from ..util import similarity_fct_name
from .base import EmbeddingLoss, expect_columns, one_label_per_row

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


class BatchHardTripletLossDistanceFunction:
    """[B, B] distances between all rows of an embedding batch, under sentence-transformers' names."""

    @staticmethod
    def cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
        distances = (1 - cos_sim(embeddings, embeddings)).clamp(min=0.0)
        return distances.fill_diagonal_(0.0)

    @staticmethod
    def euclidean_distance(embeddings: torch.Tensor, squared: bool = False) -> torch.Tensor:
        # From the Gram matrix (one product), in float32 for 16-bit embeddings: |a|^2 - 2 a.b + |b|^2.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            wide = embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings
            gram = wide @ wide.t()
        norms = gram.diagonal()
        squares = (norms[None, :] - 2.0 * gram + norms[:, None]).clamp(min=0)
        if squared:
            return squares
        # sqrt has an infinite slope at 0 (the diagonal): those entries take 0 and no gradient.
        zero = squares == 0
        return squares.masked_fill(zero, 1e-16).sqrt().masked_fill(zero, 0.0)

    eucledian_distance = euclidean_distance  # sentence-transformers' older spelling


class _InBatchTripletLoss(EmbeddingLoss):
    """One text column, a class label per row; subclasses score the [B, B] distances."""

    def __init__(self, model: Encoder, distance_metric=BatchHardTripletLossDistanceFunction.euclidean_distance,
                 margin: float = 5) -> None:
        super().__init__(model)
        self.distance_metric = distance_metric
        self.triplet_margin = margin

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        expect_columns(self, embeddings, 1)
        labels = one_label_per_row(self, embeddings, labels)
        same = labels[:, None] == labels[None, :]  # [B, B] same class, the diagonal included
        return self.score(self.distance_metric(embeddings[0]), same)

    def score(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": similarity_fct_name(self.distance_metric), "margin": self.triplet_margin}


def _hardest(distances: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 1] each anchor's farthest positive (0 with none) and closest negative (its farthest row with none)."""
    positive = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
    farthest_positive = (positive.float() * distances).max(1, keepdim=True).values
    # Rows that are not negatives are pushed up by the row's largest distance, out of the minimum's way.
    row_max = distances.max(1, keepdim=True).values
    closest_negative = (distances + row_max * same.float()).min(1, keepdim=True).values
    return farthest_positive, closest_negative


class BatchHardTripletLoss(_InBatchTripletLoss):
    def score(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        farthest_positive, closest_negative = _hardest(distances, same)
        return F.relu(farthest_positive - closest_negative + self.triplet_margin).mean()


class BatchHardSoftMarginTripletLoss(BatchHardTripletLoss):
    def __init__(self, model: Encoder, distance_metric=BatchHardTripletLossDistanceFunction.euclidean_distance) -> None:
        super().__init__(model, distance_metric)

    def score(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        farthest_positive, closest_negative = _hardest(distances, same)
        return F.softplus(farthest_positive - closest_negative).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": similarity_fct_name(self.distance_metric)}


class BatchAllTripletLoss(_InBatchTripletLoss):
    def score(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        positive = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
        anchor, other = positive.nonzero(as_tuple=True)  # every (anchor, positive) pair
        # [pairs, B]: d(a, p) - d(a, n) + margin for every n, kept where n is a negative of a.
        margins = (distances[anchor, other][:, None] - distances[anchor] + self.triplet_margin) * (~same[anchor]).float()
        margins = F.relu(margins)
        violating = int((margins > 1e-16).sum())
        return margins.sum() / (violating + 1e-16)


class BatchSemiHardTripletLoss(_InBatchTripletLoss):
    def score(self, distances: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        rows = len(same)
        negatives = distances.masked_fill(same, torch.inf).sort(dim=1, stable=True).values  # [B, B] ascending
        # For (a, p): the first of a's negatives beyond d(a, p) ...
        beyond = torch.searchsorted(negatives.detach().contiguous(), distances.detach().contiguous(), right=True)
        outside = negatives.gather(1, beyond.clamp(max=rows - 1))
        # ... or, where there is none, a's farthest negative (a masked maximum that stays differentiable).
        row_min = distances.min(1, keepdim=True).values
        farthest = ((distances - row_min) * (~same).float()).max(1, keepdim=True).values + row_min
        semi_hard = torch.where(torch.isfinite(outside), outside, farthest)
        positive = same.float() - torch.eye(rows, device=distances.device)
        terms = F.relu((distances - semi_hard + self.triplet_margin) * positive)
        return terms.sum() / positive.sum().clamp(min=1e-16)

    @property
    def margin(self) -> float:  # this loss's attribute name in sentence-transformers
        return self.triplet_margin
