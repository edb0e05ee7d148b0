"""InformationRetrievalEvaluator: queries against a corpus, ranked by sentfuse's top-k kernel, scored
against the relevant documents: accuracy, precision and recall@k, MRR@k, NDCG@k and MAP@k."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from ..search.similarity import KERNEL_SCORE_FUNCTIONS, cos_sim
from ..search.topk import search_topk
from .base import BaseEvaluator
from .writing import prefixed, write_csv_row


def ranking_metrics(ranked: list[list[str]], relevant: list[set[str]], ks: dict[str, list[int]]) -> dict[str, float]:
    """Mean over queries of each metric at each k, for ranked corpus ids (best first) per query."""
    sums: dict[str, float] = {}
    for hits, gold in zip(ranked, relevant):
        flags = [cid in gold for cid in hits]
        for k in ks["accuracy"]:
            sums[f"accuracy@{k}"] = sums.get(f"accuracy@{k}", 0.0) + float(any(flags[:k]))
        for k in ks["precision_recall"]:
            found = sum(flags[:k])
            sums[f"precision@{k}"] = sums.get(f"precision@{k}", 0.0) + found / k
            sums[f"recall@{k}"] = sums.get(f"recall@{k}", 0.0) + found / len(gold)
        for k in ks["mrr"]:
            first = next((i for i, f in enumerate(flags[:k]) if f), None)
            sums[f"mrr@{k}"] = sums.get(f"mrr@{k}", 0.0) + (0.0 if first is None else 1.0 / (first + 1))
        for k in ks["ndcg"]:
            dcg = sum(1.0 / math.log2(i + 2) for i, f in enumerate(flags[:k]) if f)
            ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), k)))
            sums[f"ndcg@{k}"] = sums.get(f"ndcg@{k}", 0.0) + dcg / ideal
        for k in ks["map"]:
            found, total = 0, 0.0
            for i, f in enumerate(flags[:k]):
                if f:
                    found += 1
                    total += found / (i + 1)
            sums[f"map@{k}"] = sums.get(f"map@{k}", 0.0) + total / min(k, len(gold))
    return {k: v / len(ranked) for k, v in sums.items()}


class InformationRetrievalEvaluator(BaseEvaluator):
    """queries {qid: text}, corpus {cid: text}, relevant_docs {qid: set of cids}; queries without relevant
    documents are left out. Metric names as sentence-transformers': cosine_ndcg@10 (primary),
    cosine_mrr@10, cosine_recall@k, ... (prefixed by name)."""
    csv_kind = "Information-Retrieval_evaluation"

    def __init__(self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]],
                 corpus_chunk_size: int = 50000, mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,),
                 accuracy_at_k: list[int] = (1, 3, 5, 10), precision_recall_at_k: list[int] = (1, 3, 5, 10),
                 map_at_k: list[int] = (100,), show_progress_bar: bool = False, batch_size: int = 32, name: str = "",
                 write_csv: bool = True, truncate_dim: int | None = None,
                 score_functions: dict[str, Any] | None = None, main_score_function: str | None = None,
                 query_prompt: str | None = None, query_prompt_name: str | None = None,
                 corpus_prompt: str | None = None, corpus_prompt_name: str | None = None,
                 write_predictions: bool = False) -> None:
        self.query_ids = [q for q in queries if relevant_docs.get(q)]
        if not self.query_ids:
            raise ValueError("no query has a relevant document in relevant_docs")
        self.queries = [queries[q] for q in self.query_ids]
        self.corpus_ids = list(corpus)
        self.corpus = [corpus[c] for c in self.corpus_ids]
        self.relevant_docs = {q: set(relevant_docs[q]) for q in self.query_ids}
        self.ks = {"mrr": list(mrr_at_k), "ndcg": list(ndcg_at_k), "accuracy": list(accuracy_at_k),
                   "precision_recall": list(precision_recall_at_k), "map": list(map_at_k)}
        self.score_functions = dict(score_functions) if score_functions else None
        self.main_score_function = main_score_function
        self.corpus_chunk_size, self.batch_size = corpus_chunk_size, batch_size
        self.show_progress_bar, self.name, self.write_csv, self.truncate_dim = show_progress_bar, name, write_csv, truncate_dim
        self.prompts = dict(query=(query_prompt, query_prompt_name), corpus=(corpus_prompt, corpus_prompt_name))
        self.write_predictions = write_predictions
        self.greater_is_better = True
        self.primary_metric = ""

    def _write_predictions(self, output_path: str, fn_name: str, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Each query's hits as a JSON line {query_id, query, results: [{corpus_id, score}]}, best first (ties by
        corpus id), in Information-Retrieval_evaluation[_name]_predictions_{fn_name}.jsonl, written atomically."""
        name = f"Information-Retrieval_evaluation{'_' + self.name if self.name else ''}_predictions_{fn_name}.jsonl"
        Path(output_path).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(output_path) / name, "w", encoding="utf-8") as f:
            for qid, query, row_scores, row in zip(self.query_ids, self.queries, scores.tolist(), indices.tolist()):
                hits = sorted(({"corpus_id": self.corpus_ids[i], "score": s} for s, i in zip(row_scores, row) if i >= 0),
                              key=lambda hit: (-hit["score"], hit["corpus_id"]))
                f.write(json.dumps({"query_id": qid, "query": query, "results": hits}) + "\n")

    def _embed(self, model: Any, texts: list[str], side: str) -> torch.Tensor:
        # encode_query / encode_document: the model's own query and document prompts unless one is given.
        prompt, prompt_name = self.prompts[side]
        encode = model.encode_query if side == "query" else model.encode_document
        return encode(texts, prompt=prompt, prompt_name=prompt_name, batch_size=self.batch_size,
                            show_progress_bar=self.show_progress_bar, convert_to_tensor=True,
                            truncate_dim=self.truncate_dim).float()

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        functions = self.score_functions or {model.similarity_fn_name: KERNEL_SCORE_FUNCTIONS.get(model.similarity_fn_name, cos_sim)}
        queries, corpus = self._embed(model, self.queries, "query"), self._embed(model, self.corpus, "corpus")
        top = max(max(v) for v in self.ks.values())
        relevant = [self.relevant_docs[q] for q in self.query_ids]
        metrics: dict[str, float] = {}
        for fn_name, fn in functions.items():
            scores, indices = search_topk(queries, corpus, top, score_function=fn,
                                          corpus_chunk_size=self.corpus_chunk_size)
            if self.write_predictions and output_path:
                self._write_predictions(output_path, fn_name, scores, indices)
            ranked = [[self.corpus_ids[i] for i in row if i >= 0] for row in indices.tolist()]
            metrics.update({f"{fn_name}_{k}": v for k, v in ranking_metrics(ranked, relevant, self.ks).items()})
        main = self.main_score_function or next(iter(functions))
        self.primary_metric = prefixed(self.name, f"{main}_ndcg@{max(self.ks['ndcg'])}")
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps, metrics)
        return {prefixed(self.name, k): v for k, v in metrics.items()}
