"""ParaphraseMiningEvaluator: mine a collection's most similar pairs (sentfuse's paraphrase mining on the
kernels) and score them against the known duplicate pairs: average precision, best F1 and its threshold."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..search.paraphrase import paraphrase_mining
from ..search.similarity import KERNEL_SCORE_FUNCTIONS
from .base import BaseEvaluator
from .writing import write_csv_row


def _closed(duplicates: dict[str, dict[str, bool]]) -> dict[str, dict[str, bool]]:
    """duplicates with every pair inside each connected group marked (if a ~ b and b ~ c, then a ~ c)."""
    seen: set[str] = set()
    for start in list(duplicates):
        if start in seen:
            continue
        group, queue = {start}, [start]
        while queue:
            node = queue.pop()
            for other, is_duplicate in list(duplicates[node].items()):
                if is_duplicate and other not in group:
                    group.add(other)
                    queue.append(other)
        seen |= group
        for a in group:
            for b in group:
                if a != b:
                    duplicates[a][b] = True
    return duplicates


class ParaphraseMiningEvaluator(BaseEvaluator):
    """sentences_map {id: text}; duplicates as (id1, id2) pairs or {id1: {id2: True}}."""
    csv_kind = "paraphrase_mining_evaluation"

    def __init__(self, sentences_map: dict[str, str], duplicates_list: list[tuple[str, str]] | None = None,
                 duplicates_dict: dict[str, dict[str, bool]] | None = None, add_transitive_closure: bool = False,
                 query_chunk_size: int = 5000, corpus_chunk_size: int = 100000, max_pairs: int = 500000,
                 top_k: int = 100, show_progress_bar: bool = False, batch_size: int = 16, name: str = "",
                 write_csv: bool = True, truncate_dim: int | None = None) -> None:
        self.ids, self.sentences = list(sentences_map), list(sentences_map.values())
        self.name, self.show_progress_bar, self.batch_size = name, show_progress_bar, batch_size
        self.query_chunk_size, self.corpus_chunk_size = query_chunk_size, corpus_chunk_size
        self.max_pairs, self.top_k, self.truncate_dim, self.write_csv = max_pairs, top_k, truncate_dim, write_csv
        self._add_transitive_closure = add_transitive_closure
        self.duplicates = duplicates_dict if duplicates_dict is not None else defaultdict(lambda: defaultdict(bool))
        for a, b in duplicates_list or ():
            if a in sentences_map and b in sentences_map:
                self.duplicates[a][b] = self.duplicates[b][a] = True
        if add_transitive_closure:
            self.duplicates = _closed(self.duplicates)
        self.total_num_duplicates = len({tuple(sorted((a, b))) for a in self.duplicates for b in self.duplicates[a]
                                         if a in sentences_map and b in sentences_map and self._is_duplicate(a, b)})
        self.primary_metric = "average_precision"

    def _is_duplicate(self, a: str, b: str) -> bool:
        return bool(self.duplicates.get(a, {}).get(b) or self.duplicates.get(b, {}).get(a))

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        score_function = KERNEL_SCORE_FUNCTIONS.get(getattr(model, "similarity_fn_name", None), model.similarity)
        pairs = paraphrase_mining(model, self.sentences, show_progress_bar=self.show_progress_bar,
                                  batch_size=self.batch_size, query_chunk_size=self.query_chunk_size,
                                  corpus_chunk_size=self.corpus_chunk_size, max_pairs=self.max_pairs, top_k=self.top_k,
                                  truncate_dim=self.truncate_dim, score_function=score_function)
        total = self.total_num_duplicates
        found = taken = found_before = 0
        best = dict(f1=0.0, precision=0.0, recall=0.0, threshold=0.0)
        ap = 0.0
        for index, (score, i, j) in enumerate(pairs):
            taken += 1
            found += self._is_duplicate(self.ids[i], self.ids[j])
            if index + 1 < len(pairs) and pairs[index + 1][0] == score:
                continue  # tied scores are one cut
            if found > found_before:
                precision, recall = found / taken, (found / total if total else 0.0)
                f1 = 2 * precision * recall / (precision + recall)
                ap += precision * (found - found_before)
                if f1 > best["f1"]:
                    following = pairs[min(index + 1, len(pairs) - 1)][0]
                    best = dict(f1=f1, precision=precision, recall=recall, threshold=(score + following) / 2)
            found_before = found
        ap = ap / total if total else 0.0
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps,
                          {"precision": best["precision"], "recall": best["recall"], "f1": best["f1"],
                           "threshold": best["threshold"], "average_precision": ap})
        metrics = self.prefix_name_to_metrics({"average_precision": ap, **best}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        config = {"add_transitive_closure": self._add_transitive_closure, "max_pairs": self.max_pairs,
                  "top_k": self.top_k}
        return config if self.truncate_dim is None else {**config, "truncate_dim": self.truncate_dim}
