"""In-batch-negatives ranking losses: MultipleNegativesRankingLoss and its symmetric form.

Each anchor (query) i must score its own positive above every other document of the batch (the other
rows' positives and everybody's hard negatives): cross-entropy over scaled similarities. Options follow
sentence-transformers 6.3: extra interaction directions (query_to_query, doc_to_query, doc_to_doc), one
softmax over them or one per direction, and hardness weighting that adds alpha * stop_grad(cos) to
chosen negatives' logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .. import _ops
from ..search.similarity import cos_sim, metric_of
from ..util import similarity_fct_name
from .base import EmbeddingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

logger = logging.getLogger(__name__)

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
# (directions, partition_mode) -> the fused contrastive_loss op's `symmetric`, for the settings it computes.
FUSED_FORMS = {
    (("query_to_doc",), "joint"): False,
    (("query_to_doc",), "per_direction"): False,
    (("query_to_doc", "doc_to_query"), "per_direction"): True,
}


@dataclass(frozen=True)
class RankingSettings:
    scale: float
    similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    directions: tuple[str, ...]
    partition_mode: str
    hardness_mode: str | None
    hardness_strength: float

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if not self.directions or any(d not in DIRECTIONS for d in self.directions):
            raise ValueError(f"directions must be a non-empty tuple of {DIRECTIONS}, got {self.directions!r}")
        if "query_to_doc" not in self.directions:
            raise ValueError("directions must include 'query_to_doc' (it holds the positive pair)")
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got {self.partition_mode!r}")
        if self.partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(self.directions):
            raise ValueError("partition_mode='per_direction' needs the positive in every direction's candidates; "
                             "'query_to_query' and 'doc_to_doc' have none: use partition_mode='joint'")
        if self.hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES}, got {self.hardness_mode!r}")
        if self.hardness_strength < 0:
            raise ValueError(f"hardness_strength must be non-negative, got {self.hardness_strength}")
        if self.hardness_mode is not None and self.hardness_strength == 0:
            logger.warning("hardness_mode=%r with hardness_strength=0 has no effect", self.hardness_mode)


def _hardness_penalty(settings: RankingSettings, query_to_doc: torch.Tensor, batch: int) -> torch.Tensor | None:
    """alpha * stop_grad(similarity) on the negatives hardness_mode picks, 0 elsewhere; None when off."""
    if settings.hardness_mode is None or settings.hardness_strength == 0:
        return None
    columns = torch.arange(query_to_doc.shape[1], device=query_to_doc.device)
    own = (columns % batch).unsqueeze(0) == torch.arange(batch, device=columns.device).unsqueeze(1)  # own docs
    hard = columns >= batch  # explicit hard negatives (any row's)
    if settings.hardness_mode == "in_batch_negatives":
        picked = ~own
    elif settings.hardness_mode == "hard_negatives":
        picked = own & hard
    else:  # all_negatives: everything but the positive
        picked = ~(own & ~hard)
    return settings.hardness_strength * query_to_doc.detach() * picked


def _fused_symmetric(settings: RankingSettings) -> bool | None:
    """The contrastive_loss op's `symmetric` when it computes exactly these settings (cosine, no hardness)."""
    if metric_of(settings.similarity_fct) != "cosine" or (settings.hardness_mode and settings.hardness_strength):
        return None
    return FUSED_FORMS.get((settings.directions, settings.partition_mode))


def ranking_loss(settings: RankingSettings, queries: torch.Tensor, docs: list[torch.Tensor]) -> torch.Tensor:
    """Mean over anchors of -log softmax(positive) for queries [B, D], docs[0] positives [B, D], docs[1:]
    hard negatives [B, D] each. The common forms run in the fused contrastive_loss op (no [B, B * columns]
    logits kept for the backward pass); the others in plain PyTorch."""
    symmetric = _fused_symmetric(settings)
    if symmetric is not None:
        return _ops.contrastive_loss(queries, torch.cat(docs), settings.scale, symmetric)
    batch = queries.shape[0]
    rows = torch.arange(batch, device=queries.device)
    docs_all = torch.cat(docs)
    sim = settings.similarity_fct
    scores = {"query_to_doc": sim(queries, docs_all)}
    if "query_to_query" in settings.directions:
        scores["query_to_query"] = sim(queries, queries).masked_fill(torch.eye(batch, dtype=torch.bool,
                                                                               device=queries.device), -torch.inf)
    if "doc_to_query" in settings.directions:
        scores["doc_to_query"] = sim(docs[0], queries)
    if "doc_to_doc" in settings.directions:
        own = torch.eye(batch, dtype=torch.bool, device=queries.device).repeat(1, len(docs))
        scores["doc_to_doc"] = sim(docs[0], docs_all).masked_fill(own, -torch.inf)
    penalty = _hardness_penalty(settings, scores["query_to_doc"], batch)
    scores = {k: v * settings.scale for k, v in scores.items()}
    if penalty is not None:
        scores["query_to_doc"] = scores["query_to_doc"] + penalty
    positive = scores["query_to_doc"][rows, rows]
    if settings.partition_mode == "joint":
        log_z = torch.logsumexp(torch.cat(list(scores.values()), dim=1), dim=1)
    else:
        log_z = sum(torch.logsumexp(s, dim=1) for s in scores.values()) / len(scores)
    return (log_z - positive).mean()


class MultipleNegativesRankingLoss(EmbeddingLoss):
    """Columns (anchor, positive[, negative_1, ...]), no labels. Arguments as sentence-transformers 6.3's;
    gather_across_devices is accepted for compatibility and must be False (one process trains)."""

    def __init__(
        self,
        model: Encoder,
        scale: float = 20.0,
        similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
    ) -> None:
        super().__init__(model)
        if gather_across_devices:
            raise ValueError("gather_across_devices=True needs several training processes; sentfuse trains in one")
        self.gather_across_devices = False
        self.settings = RankingSettings(float(scale), similarity_fct, tuple(directions), partition_mode,
                                        hardness_mode, float(hardness_strength))

    # scale, similarity_fct, directions, ... are read from the settings, and assigning one replaces the settings
    # (checked again), as sentence-transformers' attributes of those names may be set between steps.
    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings")
        if settings is not None and name in RankingSettings.__dataclass_fields__:
            return getattr(settings, name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        settings = self.__dict__.get("settings")
        if settings is None or name not in RankingSettings.__dataclass_fields__:
            super().__setattr__(name, value)
            return
        if name in ("scale", "hardness_strength"):
            value = float(value)
        elif name == "directions":
            value = tuple(value)
        super().__setattr__("settings", replace(settings, **{name: value}))

    @property
    def temperature(self) -> float:
        return 1.0 / self.settings.scale

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        if len(embeddings) < 2:
            raise ValueError(f"{type(self).__name__} expects at least 2 text columns (anchor, positive), "
                             f"got {len(embeddings)}")
        return ranking_loss(self.settings, embeddings[0], embeddings[1:])

    def get_config_dict(self) -> dict[str, Any]:
        s = self.settings
        return {"scale": s.scale, "similarity_fct": similarity_fct_name(s.similarity_fct),
                "gather_across_devices": self.gather_across_devices, "directions": s.directions,
                "partition_mode": s.partition_mode,
                "hardness_mode": s.hardness_mode, "hardness_strength": s.hardness_strength}


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with directions ("query_to_doc", "doc_to_query"), one softmax each."""

    def __init__(
        self,
        model: Encoder,
        scale: float = 20.0,
        similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model, scale, similarity_fct, gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
