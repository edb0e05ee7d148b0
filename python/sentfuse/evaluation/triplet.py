"""TripletEvaluator: how often the model scores (anchor, positive) above (anchor, negative)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..search.similarity import PAIRWISE_SIMILARITY_FUNCTIONS
from .base import BaseEvaluator
from .writing import write_csv_row


class TripletEvaluator(BaseEvaluator):
    """Accuracy of sim(anchor, positive) > sim(anchor, negative) + margin, per similarity function (default: the
    model's own). Anchors are encoded as queries, positives and negatives as documents. Metric names as
    sentence-transformers': cosine_accuracy, ... (max_accuracy with several functions), prefixed by name."""
    csv_kind = "triplet_evaluation"

    def __init__(self, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str],
                 main_similarity_function: str | None = None, margin: float | dict[str, float] | None = None,
                 name: str = "", batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None,
                 main_distance_function: str | None = "deprecated") -> None:
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError(f"anchors, positives and negatives must be as long; got {len(anchors)}, "
                             f"{len(positives)}, {len(negatives)}")
        if main_distance_function != "deprecated" and main_similarity_function is None:
            main_similarity_function = main_distance_function  # its older name
        known = list(PAIRWISE_SIMILARITY_FUNCTIONS)
        self.main_similarity_function = None if main_similarity_function is None else str(
            getattr(main_similarity_function, "value", main_similarity_function))
        names = list(similarity_fn_names or ([self.main_similarity_function] if self.main_similarity_function else []))
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"similarity_fn_names: unknown {unknown}, expected names among {known}")
        if margin is None or isinstance(margin, (int, float)):
            self.margin = {k: margin or 0 for k in known}
        elif isinstance(margin, dict):
            unknown = sorted(set(margin) - set(known))
            if unknown:
                raise ValueError(f"margin: unknown keys {unknown}, expected keys among {known}")
            self.margin = {**{k: 0 for k in known}, **margin}
        else:
            raise ValueError(f"margin must be a number or a dict keyed by {known}, got {margin!r}")
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.similarity_fn_names = names
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.greater_is_better = True
        self.primary_metric = ""

    @classmethod
    def from_input_examples(cls, examples: list[Any], **kwargs: Any) -> TripletEvaluator:
        return cls(*([e.texts[i] for e in examples] for i in range(3)), **kwargs)

    def _embed(self, encode: Any, texts: list[str]) -> np.ndarray:
        return encode(texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                      convert_to_numpy=True, truncate_dim=self.truncate_dim)

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        anchors = self._embed(model.encode_query, self.anchors)
        positives = self._embed(model.encode_document, self.positives)
        negatives = self._embed(model.encode_document, self.negatives)
        names = self.similarity_fn_names or [model.similarity_fn_name]
        metrics: dict[str, float] = {}
        for fn in names:
            score = PAIRWISE_SIMILARITY_FUNCTIONS[fn]
            wins = score(anchors, positives) > score(anchors, negatives) + self.margin[fn]
            metrics[f"{fn}_accuracy"] = wins.float().mean().item()
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps, metrics)
        if len(names) > 1:
            metrics["max_accuracy"] = max(metrics.values())
        if self.main_similarity_function:
            self.primary_metric = f"{self.main_similarity_function}_accuracy"
        else:
            self.primary_metric = "max_accuracy" if len(names) > 1 else f"{names[0]}_accuracy"
        return self.prefix_name_to_metrics(metrics, self.name)

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if any(self.margin.values()):
            config["margin"] = self.margin
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        return config
