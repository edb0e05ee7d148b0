"""Distillation losses: the student's embeddings against a teacher's, computed beforehand and passed as the
dataset's label column (EmbedDistillLoss, MSELoss), its score margins against the teacher's (MarginMSELoss), or
its softmax over the candidates against the teacher's (DistillKLDivLoss)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_path
from ..search.similarity import pairwise_dot_score
from ..util import similarity_fct_name
from .base import EmbeddingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

DISTANCES = ("mse", "l2", "cosine")


def _teachers(loss: nn.Module, embeddings: list[torch.Tensor],
              labels: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """One teacher embedding tensor per text column: labels [B, D] serve every column, [B, columns, D] one
    each; a list of tensors is taken as it is."""
    name = type(loss).__name__
    if labels is None:
        raise ValueError(f"{name} needs the teacher's embeddings as labels: compute them once with the teacher "
                         f"and add them as a 'label' column")
    if isinstance(labels, (list, tuple)):
        return list(labels)
    labels = labels.detach()
    if labels.dim() == 2:
        return [labels] * len(embeddings)
    if labels.dim() == 3 and labels.shape[1] == len(embeddings):
        return list(labels.unbind(1))
    raise ValueError(f"{name} expects labels [batch, teacher_dim] (one target for every column) or "
                     f"[batch, {len(embeddings)}, teacher_dim] (one per column), got {tuple(labels.shape)}")


class EmbedDistillLoss(EmbeddingLoss):
    """Mean over the text columns of a distance between the student's embedding (through an optional trained
    projection to the teacher's width) and the teacher's: "mse", "l2" (mean Euclidean distance) or "cosine"."""

    def __init__(self, model: Encoder, distance_metric: str = "cosine", projection_dim: int | None = None) -> None:
        super().__init__(model)
        if distance_metric not in DISTANCES:
            raise ValueError(f"distance_metric must be one of {', '.join(map(repr, DISTANCES))}, "
                             f"got {distance_metric!r}")
        self.distance_metric = distance_metric
        self.projection_dim = projection_dim
        self.projection: nn.Linear | None = None
        if projection_dim is not None:
            self.projection = nn.Linear(model.get_embedding_dimension(), projection_dim, device=model.device)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor],
                                     labels: torch.Tensor | Sequence[torch.Tensor] | None) -> torch.Tensor:
        terms = []
        for student, teacher in zip(embeddings, _teachers(self, embeddings, labels)):
            dtype = student.dtype if self.projection is None else self.projection.weight.dtype
            teacher = teacher.to(device=student.device, dtype=dtype)
            if self.projection is not None:
                student = self.projection(student.to(dtype))
            if student.shape != teacher.shape:
                raise ValueError(f"{type(self).__name__}: student embeddings {tuple(student.shape)} and teacher "
                                 f"embeddings {tuple(teacher.shape)} differ in shape (projection_dim maps the "
                                 f"student's width to the teacher's)")
            if self.distance_metric == "mse":
                terms.append(F.mse_loss(student, teacher))
            elif self.distance_metric == "l2":
                terms.append(torch.linalg.vector_norm(student - teacher, dim=-1).mean())
            else:
                terms.append((1 - F.cosine_similarity(student, teacher, dim=-1)).mean())
        return torch.stack(terms).mean()

    def save_projection(self, path: str | os.PathLike) -> None:
        """The projection's weights as a safetensors file (the trainer saves only the model), written atomically."""
        from safetensors.torch import save_model

        if self.projection is None:
            raise ValueError(f"{type(self).__name__} has no projection to save: construct it with projection_dim")
        with atomic_path(path) as temporary:
            save_model(self.projection, str(temporary))

    def load_projection(self, path: str | os.PathLike) -> None:
        """A projection saved by save_projection; it creates the projection if there is none yet."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        out_features, in_features = state["weight"].shape
        if self.projection is None:
            width = self.model.get_embedding_dimension()
            if in_features != width:
                raise ValueError(f"the saved projection takes {in_features}-wide embeddings; this model's are {width}")
            self.projection = nn.Linear(in_features, out_features, device=self.model.device)
            self.projection_dim = out_features
        elif (self.projection.in_features, self.projection.out_features) != (in_features, out_features):
            raise ValueError(f"the saved projection maps {in_features} -> {out_features}, this loss's "
                             f"{self.projection.in_features} -> {self.projection.out_features}")
        self.projection.load_state_dict(state)

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": self.distance_metric, "projection_dim": self.projection_dim}


class MSELoss(EmbedDistillLoss):
    """Mean squared error between the student's and the teacher's embeddings (multilingual distillation)."""

    def __init__(self, model: Encoder, projection_dim: int | None = None) -> None:
        super().__init__(model, distance_metric="mse", projection_dim=projection_dim)

    def get_config_dict(self) -> dict[str, Any]:
        return {"projection_dim": self.projection_dim}


class MarginMSELoss(EmbeddingLoss):
    """Columns (query, positive, negatives...): MSE between the student's score margins sim(q, p) - sim(q, n)
    and the teacher's. Labels: [B] (one negative) or [B, negatives] margins, or [B, 1 + negatives] scores
    (positive first), from which the margins are taken."""

    def __init__(self, model: Encoder,
                 similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = pairwise_dot_score) -> None:
        super().__init__(model)
        self.similarity_fct = similarity_fct
        self.loss_fct = nn.MSELoss()

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        if len(embeddings) < 3:
            raise ValueError(f"MarginMSELoss expects a query, a positive and at least one negative column, "
                             f"got {len(embeddings)} columns")
        query, positive, negatives = embeddings[0], embeddings[1], embeddings[2:]
        rows, count = query.shape[0], len(negatives)
        if labels is None:
            raise ValueError("MarginMSELoss needs the teacher's margins (or scores) as labels: the dataset needs a "
                             "'label' or 'score' column")
        labels = labels.detach()
        if labels.shape == (rows, count + 1):
            labels = labels[:, :1] - labels[:, 1:]
        elif labels.shape == (rows,):
            labels = labels[:, None]
        if labels.shape != (rows, count):
            raise ValueError(f"MarginMSELoss expects labels of shape {(rows, count)} (margins) or "
                             f"{(rows, count + 1)} (scores, positive first), got {tuple(labels.shape)}")
        positive_scores = self.similarity_fct(query, positive)
        margins = torch.stack([positive_scores - self.similarity_fct(query, n) for n in negatives], dim=1)
        return self.loss_fct(margins, labels.to(margins.dtype))

    def get_config_dict(self) -> dict[str, Any]:
        return {"similarity_fct": similarity_fct_name(self.similarity_fct)}


class DistillKLDivLoss(EmbeddingLoss):
    """Columns (query, candidate, candidate...), labels [B, candidates]: the teacher's scores. KL divergence of
    the student's softmax over its candidate scores (at student_temperature) from the teacher's (at
    teacher_temperature), per query, times student_temperature^2."""

    def __init__(self, model: Encoder,
                 similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = pairwise_dot_score,
                 temperature: float = 1.0, student_temperature: float | None = None,
                 teacher_temperature: float | None = None) -> None:
        super().__init__(model)
        self.similarity_fct = similarity_fct
        self.temperature = temperature
        self.student_temperature = temperature if student_temperature is None else student_temperature
        self.teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
        for name in ("temperature", "student_temperature", "teacher_temperature"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.loss_fct = nn.KLDivLoss(reduction="batchmean")

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        if len(embeddings) < 3:
            raise ValueError(f"DistillKLDivLoss expects a query and at least two candidate columns, got "
                             f"{len(embeddings)} columns (over one candidate the softmax is constant)")
        query, candidates = embeddings[0], embeddings[1:]
        shape = (query.shape[0], len(candidates))
        if labels is None or labels.shape != shape:
            got = "none" if labels is None else tuple(labels.shape)
            raise ValueError(f"DistillKLDivLoss expects the teacher's scores as labels of shape {shape}, got {got}")
        student = torch.stack([self.similarity_fct(query, c) for c in candidates], dim=1)
        teacher = torch.softmax(labels.detach().to(student.dtype) / self.teacher_temperature, dim=1)
        log_student = torch.log_softmax(student / self.student_temperature, dim=1)
        return self.loss_fct(log_student, teacher) * self.student_temperature ** 2

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"similarity_fct": similarity_fct_name(self.similarity_fct),
                                  "temperature": self.temperature}
        for name in ("student_temperature", "teacher_temperature"):
            if getattr(self, name) != self.temperature:
                config[name] = getattr(self, name)
        return config
