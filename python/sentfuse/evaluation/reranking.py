"""RerankingEvaluator: per query, its positive and negative documents ranked by the model's similarity: MAP,
MRR@k and NDCG@k (ties in the scores share their gains, as scikit-learn's ndcg_score counts them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .base import BaseEvaluator
from .binary import average_precision
from .writing import write_csv_row


def tied_ndcg(relevant: np.ndarray, scores: np.ndarray, k: int) -> float:
    """NDCG@k of binary relevance under scores, each group of tied scores taking its members' mean gain."""
    discount = 1 / np.log2(np.arange(len(scores)) + 2)
    discount[k:] = 0
    order = np.argsort(-scores, kind="stable")
    ranked, gains = scores[order], relevant[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    group_gain = np.add.reduceat(gains, starts) / np.diff(np.r_[starts, len(ranked)])
    dcg = float((group_gain * np.add.reduceat(discount, starts)).sum())
    ideal = float((np.sort(relevant)[::-1] * discount).sum())
    return dcg / ideal if ideal > 0 else 0.0


class RerankingEvaluator(BaseEvaluator):
    """samples: [{"query": text, "positive": [texts], "negative": [texts]}] (a dict of them, or single texts,
    accepted); samples without a positive or a negative are left out."""
    csv_kind = "RerankingEvaluator"

    def __init__(self, samples: Any, at_k: int = 10, name: str = "", write_csv: bool = True,
                 similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 batch_size: int = 64, show_progress_bar: bool = False, use_batched_encoding: bool = True,
                 truncate_dim: int | None = None, mrr_at_k: int | None = None) -> None:
        samples = list(samples.values()) if isinstance(samples, dict) else list(samples)
        as_list = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
        samples = [{**s, "positive": as_list(s["positive"]), "negative": as_list(s["negative"])} for s in samples]
        self.samples = [s for s in samples if s["positive"] and s["negative"]]
        self.at_k = at_k if mrr_at_k is None else mrr_at_k  # mrr_at_k: the older name
        self.name, self.write_csv, self.similarity_fct = name, write_csv, similarity_fct
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.use_batched_encoding = use_batched_encoding  # every query and document is encoded in one call each
        self.primary_metric = f"ndcg@{self.at_k}"

    def compute_metrics(self, model: Any) -> dict[str, float]:
        encode = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar, convert_to_tensor=True,
                      truncate_dim=self.truncate_dim)
        queries = model.encode_query([s["query"] for s in self.samples], **encode)
        documents = model.encode_document([d for s in self.samples for d in s["positive"] + s["negative"]], **encode)
        similarity = self.similarity_fct or model.similarity
        aps, mrrs, ndcgs, start = [], [], [], 0
        for query, sample in zip(queries, self.samples):
            count = len(sample["positive"]) + len(sample["negative"])
            scores = similarity(query[None], documents[start:start + count])[0].float().cpu().numpy()
            start += count
            relevant = np.r_[np.ones(len(sample["positive"])), np.zeros(len(sample["negative"]))]
            top = np.argsort(-scores, kind="stable")[:self.at_k]
            hit = np.flatnonzero(relevant[top])
            mrrs.append(1 / (hit[0] + 1) if len(hit) else 0.0)
            ndcgs.append(tied_ndcg(relevant, scores, self.at_k))
            aps.append(average_precision(scores, relevant))
        return {"map": float(np.mean(aps)), "mrr": float(np.mean(mrrs)), "ndcg": float(np.mean(ndcgs))}

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        scores = self.compute_metrics(model)
        k = self.at_k
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps,
                          {"MAP": scores["map"], f"MRR@{k}": scores["mrr"], f"NDCG@{k}": scores["ndcg"]})
        metrics = self.prefix_name_to_metrics({"map": scores["map"], f"mrr@{k}": scores["mrr"],
                                               f"ndcg@{k}": scores["ndcg"]}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"at_k": self.at_k}
        return config if self.truncate_dim is None else {**config, "truncate_dim": self.truncate_dim}
