"""GlobalOrthogonalRegularizationLoss (Zhang et al. 2017): spreads a batch's embeddings out, pushing the mean
of their pairwise similarities towards 0 and its second moment down to 1 / dim (that of random directions).
Usually added to another loss; it returns its terms by name, which the trainer sums."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..search.similarity import cos_sim
from ..util import similarity_fct_name
from .base import EmbeddingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

AGGREGATIONS = ("mean", "sum")


class GlobalOrthogonalRegularizationLoss(EmbeddingLoss):
    """Any text columns, no labels: {"gor_mean": ..., "gor_second_moment": ...}, each term over the columns
    aggregated by "mean" or "sum" and weighted (a weight of 0 or None leaves its term out)."""

    def __init__(self, model: Encoder, similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
                 mean_weight: float | None = 1.0, second_moment_weight: float | None = 1.0,
                 aggregation: str = "mean") -> None:
        super().__init__(model)
        if not mean_weight and not second_moment_weight:
            raise ValueError("GlobalOrthogonalRegularizationLoss needs mean_weight or second_moment_weight non-zero")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
        self.similarity_fct = similarity_fct
        self.mean_weight = mean_weight
        self.second_moment_weight = second_moment_weight
        self.aggregation = aggregation

    def compute_gor(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared mean, second moment above 1 / dim) of the off-diagonal similarities of one column."""
        rows, dim = embeddings.shape
        similarities = self.similarity_fct(embeddings, embeddings).fill_diagonal_(0.0)
        pairs = max(rows * (rows - 1), 1)
        mean = (similarities.sum() / pairs).pow(2)
        second_moment = torch.relu(similarities.pow(2).sum() / pairs - 1.0 / dim)
        return mean, second_moment

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor],
                                     labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        means, moments = zip(*map(self.compute_gor, embeddings))
        terms = {}
        for name, weight, values in (("gor_mean", self.mean_weight, means),
                                     ("gor_second_moment", self.second_moment_weight, moments)):
            if weight:
                stacked = torch.stack(values)
                terms[name] = weight * (stacked.sum() if self.aggregation == "sum" else stacked.mean())
        return terms

    def get_config_dict(self) -> dict[str, Any]:
        return {"similarity_fct": similarity_fct_name(self.similarity_fct),
                "mean_weight": self.mean_weight, "second_moment_weight": self.second_moment_weight,
                "aggregation": self.aggregation}
