"""CosineSimilarityLoss: a regression of the pair's cosine similarity onto its label (MSE by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import EmbeddingLoss, expect_columns, one_label_per_row

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


class CosineSimilarityLoss(EmbeddingLoss):
    """Columns (sentence_A, sentence_B) with a float label; loss_fct(cos_score_transformation(cos), label)."""

    # Stateless module defaults, as sentence-transformers' signature has them (one instance serves every loss).
    def __init__(self, model: Encoder, loss_fct: nn.Module = nn.MSELoss(),
                 cos_score_transformation: nn.Module = nn.Identity()) -> None:
        super().__init__(model)
        self.loss_fct = loss_fct
        self.cos_score_transformation = cos_score_transformation

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        expect_columns(self, embeddings, 2)
        labels = one_label_per_row(self, embeddings, labels)
        cosine = torch.cosine_similarity(embeddings[0], embeddings[1])
        return self.loss_fct(self.cos_score_transformation(cosine), labels.float())

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss_fct": type(self.loss_fct).__name__,
                "cos_score_transformation": type(self.cos_score_transformation).__name__}
