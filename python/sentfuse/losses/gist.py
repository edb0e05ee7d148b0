"""GISTEmbedLoss (Solatorio 2024): MultipleNegativesRankingLoss whose in-batch negatives are vetted by a guide
model: a candidate the guide scores above the pair's own positive (less a margin) is likely a false negative
and leaves the softmax."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train.forward import TokenColumn, as_token_columns, embed_tokens
from .base import EmbeddingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

MARGIN_STRATEGIES = ("absolute", "relative")


def _similarities(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[len(x), len(y)] cosine similarities, by the broadcast form sentence-transformers uses (same eps)."""
    return F.cosine_similarity(x[:, None], y[None, :], dim=-1)


class GISTEmbedLoss(EmbeddingLoss):
    """Columns (anchor, positive[, negative]). The guide (a sentfuse model, frozen) embeds the same texts: from
    the batch's token ids where its vocabulary is the model's and its length limit no shorter, else from the
    decoded texts. Scores: anchor-positive, and (contrast_anchors) anchor-anchor, (contrast_positives)
    positive-positive and the negatives, masked where the guide finds them false negatives, over temperature;
    cross-entropy towards each anchor's own positive. One process: gather_across_devices is accepted and does
    nothing there, as in sentence-transformers without a process group."""

    def __init__(self, model: Encoder, guide: Encoder, temperature: float = 0.01, margin_strategy: str = "absolute",
                 margin: float = 0.0, contrast_anchors: bool = True, contrast_positives: bool = True,
                 gather_across_devices: bool = False) -> None:
        super().__init__(model)
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ValueError(f"margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
        for name, owner in (("model", model), ("guide", guide)):
            if getattr(owner, "tokenizer", None) is None or not hasattr(owner.tokenizer, "get_vocab"):
                raise ValueError(f"GISTEmbedLoss: the {name} needs a Hugging Face tokenizer")
        self.guide = guide
        self.temperature, self.margin_strategy, self.margin = temperature, margin_strategy, margin
        self.contrast_anchors, self.contrast_positives = contrast_anchors, contrast_positives
        self.gather_across_devices = gather_across_devices
        self.must_retokenize = (model.tokenizer.get_vocab() != guide.tokenizer.get_vocab()
                                or guide.max_seq_length < model.max_seq_length)
        self.cross_entropy_loss = nn.CrossEntropyLoss()

    @torch.no_grad()
    def _guide_embeddings(self, columns: list[TokenColumn]) -> list[torch.Tensor]:
        if not self.must_retokenize:
            return embed_tokens(self.guide, columns)
        decode = self.model.tokenizer.batch_decode
        return [self.guide.encode(decode(c.input_ids, skip_special_tokens=True), convert_to_tensor=True,
                                  show_progress_bar=False) for c in columns]

    def forward(self, sentence_features: Iterable[TokenColumn], labels: torch.Tensor | None) -> torch.Tensor:
        columns = as_token_columns(sentence_features)
        return self.loss_from(self.embed(columns), self._guide_embeddings(columns))

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        raise ValueError("GISTEmbedLoss needs the batch's texts for its guide: call it on the batch (forward)")

    def _vetted(self, guide_scores: torch.Tensor, scores: torch.Tensor, own: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """scores with -inf wherever the guide rates the candidate above the row's own pair (less the margin)."""
        slack = self.margin if self.margin_strategy == "absolute" else own.abs() * self.margin
        suspicious = guide_scores > own - slack
        if keep is not None:
            suspicious &= ~keep
        return scores.masked_fill(suspicious, -torch.inf)

    def loss_from(self, embeddings: list[torch.Tensor], guides: list[torch.Tensor]) -> torch.Tensor:
        if len(embeddings) not in (2, 3):
            raise ValueError(f"GISTEmbedLoss expects 2 or 3 text columns (anchor, positive[, negative]), "
                             f"got {len(embeddings)}")
        anchor, positive = embeddings[:2]
        guide_anchor, guide_positive = guides[:2]
        rows = anchor.shape[0]
        diagonal = torch.eye(rows, dtype=torch.bool, device=anchor.device)
        guide_ap = _similarities(guide_anchor, guide_positive)
        own = guide_ap.diagonal().view(-1, 1)  # the guide's score of each row's own pair
        parts = [self._vetted(guide_ap, _similarities(anchor, positive), own, keep=diagonal)]
        if self.contrast_anchors:
            parts.append(self._vetted(_similarities(guide_anchor, guide_anchor), _similarities(anchor, anchor), own)
                         .masked_fill(diagonal, -torch.inf))
        if self.contrast_positives:
            parts.append(self._vetted(_similarities(guide_positive, guide_positive),
                                      _similarities(positive, positive), own).masked_fill(diagonal, -torch.inf))
        if len(embeddings) == 3:
            parts.append(self._vetted(_similarities(guide_anchor, guides[2]), _similarities(anchor, embeddings[2]), own))
        scores = torch.cat(parts, dim=1) / self.temperature
        return self.cross_entropy_loss(scores, torch.arange(rows, device=anchor.device))

    def get_config_dict(self) -> dict[str, Any]:
        return {"guide": self.guide, "temperature": self.temperature, "margin_strategy": self.margin_strategy,
                "margin": self.margin, "contrast_anchors": self.contrast_anchors,
                "contrast_positives": self.contrast_positives, "gather_across_devices": self.gather_across_devices}
