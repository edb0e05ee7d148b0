"""EmbeddingSimilarityEvaluator: how well the model's pair similarities follow gold scores (STS-B style)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..search.similarity import PAIRWISE_SIMILARITY_FUNCTIONS
from .base import BaseEvaluator
from .stats import pearson, spearman
from .writing import prefixed, write_csv_row


class EmbeddingSimilarityEvaluator(BaseEvaluator):
    """Pearson and Spearman correlation between gold scores and the model's similarity of each
    (sentences1[i], sentences2[i]), for each similarity function (default: the model's own). Metric names
    as sentence-transformers': pearson_cosine, spearman_cosine, ... (prefixed by name); primary: spearman."""
    csv_kind = "similarity_evaluation"

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False, write_csv: bool = True, precision: str | None = None,
                 truncate_dim: int | None = None) -> None:
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError(f"sentences1, sentences2 and scores must be as long; got {len(sentences1)}, "
                             f"{len(sentences2)}, {len(scores)}")
        names = list(similarity_fn_names or ([main_similarity] if main_similarity else []))
        unknown = [n for n in names if n not in PAIRWISE_SIMILARITY_FUNCTIONS]
        if unknown:
            raise ValueError(f"similarity_fn_names must be among {sorted(PAIRWISE_SIMILARITY_FUNCTIONS)}, got {unknown}")
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), list(scores)
        self.similarity_fn_names = names
        self.batch_size, self.name, self.show_progress_bar = batch_size, name, show_progress_bar
        self.write_csv, self.precision, self.truncate_dim = write_csv, precision, truncate_dim
        self.greater_is_better = True
        self.primary_metric = ""

    def _embed(self, model: Any, texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                            convert_to_tensor=True, precision=self.precision or "float32",
                            truncate_dim=self.truncate_dim).float()

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        first, second = self._embed(model, self.sentences1), self._embed(model, self.sentences2)
        names = self.similarity_fn_names or [model.similarity_fn_name]
        gold = np.asarray(self.scores, dtype=np.float64)
        metrics: dict[str, float] = {}
        for fn in names:
            predicted = PAIRWISE_SIMILARITY_FUNCTIONS[fn](first, second).cpu().double().numpy()
            metrics[f"pearson_{fn}"] = pearson(gold, predicted)
            metrics[f"spearman_{fn}"] = spearman(gold, predicted)
        self.primary_metric = f"spearman_{names[0]}" if len(names) == 1 else "spearman_max"
        if len(names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in names)
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps, metrics)
        self.primary_metric = prefixed(self.name, self.primary_metric)
        return {prefixed(self.name, k): v for k, v in metrics.items()}
