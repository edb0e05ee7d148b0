"""MatryoshkaLoss (Kusupati et al. 2022): a loss applied to the first d features of the embeddings for each
of several widths d, so truncated embeddings stay useful. The columns are embedded once; each width
scores a truncated, re-normalized copy."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..train.forward import TokenColumn
from .base import EmbeddingLoss
from .cached import CachedMultipleNegativesRankingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

logger = logging.getLogger(__name__)


def shrink(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first dim features of x, L2-normalized (in float32 for half-precision input)."""
    if dim > x.shape[-1]:
        raise ValueError(f"matryoshka dimension {dim} exceeds the embedding dimension {x.shape[-1]}")
    part = x[..., :dim]
    return F.normalize(part.float() if part.dtype in (torch.float16, torch.bfloat16) else part, p=2, dim=-1).to(x.dtype)


class MatryoshkaLoss(EmbeddingLoss):
    """loss at each of matryoshka_dims (weighted by matryoshka_weights, default 1 each); n_dims_per_step > 0
    samples that many widths per step. Wraps any sentfuse loss, CachedMultipleNegativesRankingLoss included."""

    def __init__(self, model: Encoder, loss: EmbeddingLoss, matryoshka_dims: Sequence[int],
                 matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1) -> None:
        super().__init__(model)
        self.loss = loss
        if not matryoshka_dims or any(d <= 0 for d in matryoshka_dims):
            raise ValueError(f"matryoshka_dims must be a non-empty list of positive ints, got {matryoshka_dims!r}")
        weights = [1] * len(matryoshka_dims) if matryoshka_weights is None else list(matryoshka_weights)
        if len(weights) != len(matryoshka_dims):
            raise ValueError("matryoshka_weights must be as long as matryoshka_dims")
        full = model._dim  # training embeds at the full width, whatever truncate_dim encode applies
        if any(d > full for d in matryoshka_dims):
            raise ValueError(f"matryoshka_dims {list(matryoshka_dims)} exceed the model's embedding dimension {full}")
        if full not in matryoshka_dims:
            logger.warning("matryoshka_dims %s leave out the full dimension %d, which then is not trained",
                           list(matryoshka_dims), full)
        pairs = sorted(zip(matryoshka_dims, weights), key=lambda p: p[0], reverse=True)
        self.matryoshka_dims = tuple(d for d, _ in pairs)
        self.matryoshka_weights = tuple(w for _, w in pairs)
        self.n_dims_per_step = n_dims_per_step
        if isinstance(loss, CachedMultipleNegativesRankingLoss):
            loss.loss_on_embeddings = self._over_dims(loss.compute_loss_from_embeddings)

    def _dims(self) -> list[int]:
        indices = list(range(len(self.matryoshka_dims)))
        if 0 < self.n_dims_per_step < len(indices):
            indices = sorted(random.sample(indices, self.n_dims_per_step))
        return indices

    def _over_dims(self, score):
        def weighted_sum(embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
            total = 0.0
            for i in self._dims():
                dim = self.matryoshka_dims[i]
                total = total + self.matryoshka_weights[i] * score([shrink(e, dim) for e in embeddings], labels)
            return total
        return weighted_sum

    def forward(self, sentence_features: Iterable[TokenColumn], labels: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.loss, CachedMultipleNegativesRankingLoss):
            return self.loss(sentence_features, labels)
        return self._over_dims(self.loss.compute_loss_from_embeddings)(self.loss.embed(sentence_features), labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": type(self.loss).__name__, "matryoshka_dims": self.matryoshka_dims,
                "matryoshka_weights": self.matryoshka_weights, "n_dims_per_step": self.n_dims_per_step}
