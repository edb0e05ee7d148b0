"""CoSENTLoss (Su, 2022): every pair scored below a pair with a higher label adds to a log-sum-exp; AnglELoss
(Li and Li, 2023) is the same ranking over the AnglE similarity."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..search.similarity import pairwise_angle_sim, pairwise_cos_sim
from .base import EmbeddingLoss, expect_columns, one_label_per_row

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


class CoSENTLoss(EmbeddingLoss):
    """Columns (sentence_A, sentence_B) with a float similarity label per pair.

    loss = log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (s_j - s_i))), computed in
    O(B log B) by sorting the labels: the pairs below i are a suffix log-sum-exp of the sorted scores.
    """

    def __init__(self, model: Encoder, scale: float = 20.0,
                 similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = pairwise_cos_sim) -> None:
        super().__init__(model)
        self.scale = scale
        self.similarity_fct = similarity_fct

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        expect_columns(self, embeddings, 2)
        labels = one_label_per_row(self, embeddings, labels)
        scores = self.similarity_fct(embeddings[0], embeddings[1]).float() * self.scale
        labels, order = (labels.int() if labels.dtype == torch.bool else labels).sort()
        scores = scores[order]
        # For row i (sorted), the rows with a strictly higher label start at higher[i].
        higher = torch.searchsorted(labels, labels, right=True)
        suffix = torch.logcumsumexp(-scores.flip(0), dim=0).flip(0)
        suffix = torch.cat((suffix, scores.new_full((1,), -torch.inf)))
        terms = scores + suffix[higher]
        return torch.logsumexp(torch.cat((scores.new_zeros(1), terms)), dim=0)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": getattr(self.similarity_fct, "__name__", str(self.similarity_fct))}


class AnglELoss(CoSENTLoss):
    """CoSENTLoss scored by pairwise_angle_sim. Columns (sentence_A, sentence_B) with a label, or (anchor,
    positive, negatives...) where every anchor-positive pair counts as label 1 (or the row's label) and every
    anchor-negative pair as 1 - label, as sentence-transformers reads such batches."""

    def __init__(self, model: Encoder, scale: float = 20.0) -> None:
        super().__init__(model, scale, similarity_fct=pairwise_angle_sim)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        if len(embeddings) <= 2:
            if labels is None:
                raise ValueError("AnglELoss needs a label per pair: the dataset needs a 'label' or 'score' column")
            return super().compute_loss_from_embeddings(embeddings, labels)
        anchor, others = embeddings[0], embeddings[1:]
        labels = (torch.ones(anchor.shape[0], device=anchor.device) if labels is None
                  else one_label_per_row(self, embeddings, labels))
        pairs = [anchor.repeat(len(others), 1), torch.cat(others)]
        return super().compute_loss_from_embeddings(pairs, torch.cat([labels, (1 - labels).repeat(len(others) - 1)]))
