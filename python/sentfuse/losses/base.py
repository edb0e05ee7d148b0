"""What every sentfuse loss shares: embed the batch's columns once, then score the embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..train.forward import TokenColumn, as_token_columns, embed_tokens

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


class EmbeddingLoss(nn.Module):
    """A loss over sentence embeddings. forward(sentence_features, labels) embeds every column in one pass
    (sentfuse.train.forward) and hands the embeddings to compute_loss_from_embeddings, as
    sentence-transformers' losses do; subclasses write only the latter."""

    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.model = model

    def embed(self, sentence_features: Iterable[TokenColumn]) -> list[torch.Tensor]:
        return embed_tokens(self.model, as_token_columns(sentence_features))

    def forward(self, sentence_features: Iterable[TokenColumn], labels: torch.Tensor | None) -> torch.Tensor:
        return self.compute_loss_from_embeddings(self.embed(sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define compute_loss_from_embeddings")

    def get_config_dict(self) -> dict[str, Any]:
        return {}


def one_label_per_row(loss: nn.Module, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
    """labels as a flat [B] tensor, checked against the batch size (the message names the loss)."""
    rows = embeddings[0].shape[0]
    if labels is None or labels.numel() != rows:
        got = "none" if labels is None else f"{labels.numel()} with shape {tuple(labels.shape)}"
        raise ValueError(f"{type(loss).__name__} expects {rows} labels (one per example), got {got}: "
                         f"the dataset needs a 'label' or 'score' column")
    return labels.reshape(-1)


def expect_columns(loss: nn.Module, embeddings: list[torch.Tensor], count: int) -> None:
    if len(embeddings) != count:
        raise ValueError(f"{type(loss).__name__} expects {count} text columns, got {len(embeddings)}")
