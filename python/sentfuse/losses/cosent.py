"""CoSENTLoss (Su, 2022): every pair scored below a pair with a higher label adds to a log-sum-exp."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..search.similarity import pairwise_cos_sim
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
