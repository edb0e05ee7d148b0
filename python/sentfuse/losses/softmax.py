"""SoftmaxLoss (Reimers and Gurevych 2019, SBERT's NLI objective): a linear classifier over (u, v, |u - v|[,
u * v]) of the pair's embeddings, trained with the encoder by cross-entropy against the class label."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import EmbeddingLoss, expect_columns, one_label_per_row

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


class SoftmaxLoss(EmbeddingLoss):
    """Columns (premise, hypothesis) with an integer class label in [0, num_labels)."""

    def __init__(self, model: Encoder, embedding_dimension: int, num_labels: int,
                 concatenation_sent_rep: bool = True, concatenation_sent_difference: bool = True,
                 concatenation_sent_multiplication: bool = False,
                 loss_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.CrossEntropyLoss()) -> None:
        super().__init__(model)
        self.num_labels = num_labels
        self.concatenation_sent_rep = concatenation_sent_rep
        self.concatenation_sent_difference = concatenation_sent_difference
        self.concatenation_sent_multiplication = concatenation_sent_multiplication
        parts = 2 * concatenation_sent_rep + concatenation_sent_difference + concatenation_sent_multiplication
        if parts == 0:
            raise ValueError("SoftmaxLoss needs at least one of concatenation_sent_rep, concatenation_sent_difference "
                             "and concatenation_sent_multiplication")
        self.classifier = nn.Linear(parts * embedding_dimension, num_labels, device=model.device)
        self.loss_fct = loss_fct  # the default is one stateless module, shared

    def logits(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        """[B, num_labels] class scores of the pairs."""
        u, v = embeddings
        features = [u, v] if self.concatenation_sent_rep else []
        if self.concatenation_sent_difference:
            features.append((u - v).abs())
        if self.concatenation_sent_multiplication:
            features.append(u * v)
        return self.classifier(torch.cat(features, dim=1).to(self.classifier.weight.dtype))

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        expect_columns(self, embeddings, 2)
        labels = one_label_per_row(self, embeddings, labels)
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            raise ValueError("SoftmaxLoss expects integer class labels, got fractional ones")
        labels = labels.long()
        if bool(((labels < 0) | (labels >= self.num_labels)).any()):
            raise ValueError(f"SoftmaxLoss labels must lie in [0, {self.num_labels}) (num_labels={self.num_labels}), "
                             f"got {sorted(set(labels.tolist()))}")
        return self.loss_fct(self.logits(embeddings), labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "concatenation_sent_rep": self.concatenation_sent_rep,
                "concatenation_sent_difference": self.concatenation_sent_difference,
                "concatenation_sent_multiplication": self.concatenation_sent_multiplication}
