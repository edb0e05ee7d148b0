"""BinaryClassificationEvaluator: pairs labelled 1 (duplicates, paraphrases) or 0, scored by the model's similarity:
the best accuracy and F1 over all thresholds, that threshold, precision, recall, average precision and Matthews
correlation, as sentence-transformers reports them (no scikit-learn needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..search.similarity import PAIRWISE_SIMILARITY_FUNCTIONS
from .base import BaseEvaluator
from .writing import write_csv_row

# Euclidean and Manhattan are reported as distances (lower means more similar), as sentence-transformers does.
DISTANCES = ("euclidean", "manhattan")
# The CSV's column order; the returned metrics follow sentence-transformers' own (f1_threshold after f1).
CSV_METRICS = ("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap", "mcc")


def _cuts(scores: np.ndarray, labels: np.ndarray, higher_is_similar: bool):
    """Scores sorted most similar first (stable), their labels, and the index of each tie group's last row:
    a threshold between two groups is a cut point."""
    order = np.argsort(-scores if higher_is_similar else scores, kind="stable")
    ranked, gold = scores[order], labels[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    return ranked, gold, ends


def _threshold(ranked: np.ndarray, end: int) -> Any:
    """The threshold after tie group ending at `end`: halfway to the next score (the score itself where halfway
    rounds onto the next one), or the score itself after the last group."""
    if end == len(ranked) - 1:
        return ranked[end]
    halfway = (ranked[end] + ranked[end + 1]) / 2
    return ranked[end] if halfway == ranked[end + 1] else halfway


def best_accuracy(scores: np.ndarray, labels: np.ndarray, higher_is_similar: bool) -> tuple[float, Any]:
    """(best accuracy, its threshold) over thresholds that call everything up to a cut similar."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0, -1
    ranked, gold, ends = _cuts(np.asarray(scores), labels, higher_is_similar)
    negatives = int((labels == 0).sum())
    positives_in = np.cumsum(gold == 1)[ends]
    negatives_out = negatives - (ends + 1 - positives_in)
    accuracies = (positives_in + negatives_out) / len(labels)
    best, threshold = negatives / len(labels), None  # calling nothing similar
    i = int(np.argmax(accuracies))
    if accuracies[i] > best:
        best, threshold = float(accuracies[i]), _threshold(ranked, ends[i])
    if threshold is None:  # just beyond the most similar score
        dtype = np.result_type(ranked.dtype, np.float16)
        threshold = np.nextafter(ranked[0], np.inf if higher_is_similar else -np.inf, dtype=dtype)
    return best, threshold


def best_f1(scores: np.ndarray, labels: np.ndarray, higher_is_similar: bool) -> tuple[float, float, float, Any]:
    """(best F1, its precision, its recall, its threshold); zeros where no cut finds a positive."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0, 0.0, 0.0, 0
    ranked, gold, ends = _cuts(np.asarray(scores), labels, higher_is_similar)
    found = np.cumsum(gold == 1)[ends].astype(np.float64)
    taken = (ends + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = found / taken, found / labels.sum()
        f1 = np.where(found > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    if f1[i] <= 0:
        return 0.0, 0.0, 0.0, 0
    return float(f1[i]), float(precision[i]), float(recall[i]), _threshold(ranked, ends[i])


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall steps, one step per distinct score (higher scores first)."""
    ranked, gold, ends = _cuts(np.asarray(scores), np.asarray(labels), True)
    found = np.cumsum(gold == 1)[ends]
    if found[-1] == 0:
        return 0.0
    precision, recall = found / (ends + 1), found / found[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def matthews(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation of binary predictions (0 where a marginal is empty)."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    tp, tn = float((labels & predicted).sum()), float((~labels & ~predicted).sum())
    fp, fn = float((~labels & predicted).sum()), float((labels & ~predicted).sum())
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator > 0 else 0.0


class BinaryClassificationEvaluator(BaseEvaluator):
    """Per similarity function (default: the model's own): {fn}_accuracy, _accuracy_threshold, _f1, _precision,
    _recall, _f1_threshold, _ap, _mcc (max_* with several functions), prefixed by name; primary: ap."""
    csv_kind = "binary_classification_evaluation"

    def __init__(self, sentences1: list[str], sentences2: list[str], labels: list[int], name: str = "",
                 batch_size: int = 32, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None) -> None:
        if not len(sentences1) == len(sentences2) == len(labels):
            raise ValueError(f"sentences1, sentences2 and labels must be as long; got {len(sentences1)}, "
                             f"{len(sentences2)}, {len(labels)}")
        bad = [label for label in labels if label not in (0, 1)]
        if bad:
            raise ValueError(f"labels must be 0 or 1, got {bad[:5]}")
        unknown = sorted(set(similarity_fn_names or []) - set(PAIRWISE_SIMILARITY_FUNCTIONS))
        if unknown:
            raise ValueError(f"similarity_fn_names: unknown {unknown}, expected names among "
                             f"{list(PAIRWISE_SIMILARITY_FUNCTIONS)}")
        self.sentences1, self.sentences2, self.labels = list(sentences1), list(sentences2), list(labels)
        self.similarity_fn_names = list(similarity_fn_names or [])
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.greater_is_better = True
        self.primary_metric = ""

    @staticmethod
    def find_best_acc_and_threshold(scores: Any, labels: Any, high_score_more_similar: bool) -> tuple[float, Any]:
        """(best accuracy, its threshold): sentence-transformers' static method of that name."""
        return best_accuracy(np.asarray(scores), np.asarray(labels), high_score_more_similar)

    @staticmethod
    def find_best_f1_and_threshold(scores: Any, labels: Any,
                                   high_score_more_similar: bool) -> tuple[float, float, float, Any]:
        """(best F1, its precision, its recall, its threshold): sentence-transformers' static method of that name."""
        return best_f1(np.asarray(scores), np.asarray(labels), high_score_more_similar)

    @classmethod
    def from_input_examples(cls, examples: list[Any], **kwargs: Any) -> BinaryClassificationEvaluator:
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **kwargs)

    def compute_metrics(self, model: Any) -> dict[str, dict[str, float]]:
        """{similarity function: {metric: value}}; each distinct sentence is encoded once."""
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))
        vectors = model.encode(unique, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                               convert_to_numpy=True, truncate_dim=self.truncate_dim)
        row = {text: i for i, text in enumerate(unique)}
        first = vectors[[row[t] for t in self.sentences1]]
        second = vectors[[row[t] for t in self.sentences2]]
        labels = np.asarray(self.labels)
        out = {}
        for fn in self.similarity_fn_names or [model.similarity_fn_name]:
            similar = fn not in DISTANCES
            scores = PAIRWISE_SIMILARITY_FUNCTIONS[fn](first, second).cpu().numpy()
            scores = scores if similar else -scores
            accuracy, accuracy_threshold = best_accuracy(scores, labels, similar)
            f1, precision, recall, f1_threshold = best_f1(scores, labels, similar)
            predicted = scores >= f1_threshold if similar else scores <= f1_threshold
            out[fn] = {"accuracy": accuracy, "accuracy_threshold": accuracy_threshold, "f1": f1,
                       "f1_threshold": f1_threshold, "precision": precision, "recall": recall,
                       "ap": average_precision(scores if similar else -scores, labels),
                       "mcc": matthews(labels, predicted)}
        return out

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        if not self.similarity_fn_names:
            self.similarity_fn_names = [model.similarity_fn_name]
        scores = self.compute_metrics(model)
        if output_path and self.write_csv:
            columns = {f"{fn}_{m}": float(values[m]) for fn, values in scores.items() for m in CSV_METRICS}
            write_csv_row(output_path, self.csv_file, epoch, steps, columns)
        metrics = {f"{fn}_{m}": float(v) for fn, values in scores.items() for m, v in values.items()}
        if len(scores) > 1:
            first = next(iter(scores.values()))
            metrics.update({f"max_{m}": max(float(values[m]) for values in scores.values()) for m in first})
            self.primary_metric = "max_ap"
        else:
            self.primary_metric = f"{self.similarity_fn_names[0]}_ap"
        return self.prefix_name_to_metrics(metrics, self.name)

    def get_config_dict(self) -> dict[str, Any]:
        return {} if self.truncate_dim is None else {"truncate_dim": self.truncate_dim}
