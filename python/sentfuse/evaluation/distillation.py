"""Evaluators of multilingual distillation (a student learning a teacher's embeddings of source sentences for
their translations): MSEEvaluator and TranslationEvaluator."""

from __future__ import annotations

from typing import Any


from ..search.similarity import cos_sim
from ..search.topk import search_topk
from .base import BaseEvaluator
from .writing import write_csv_row


class _Encoded(BaseEvaluator):
    def __init__(self, batch_size: int, show_progress_bar: bool, name: str, write_csv: bool,
                 truncate_dim: int | None) -> None:
        self.batch_size, self.show_progress_bar, self.name = batch_size, show_progress_bar, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim

    def _embed(self, model: Any, texts: list[str], **kwargs: Any) -> Any:
        return model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                            truncate_dim=self.truncate_dim, **kwargs)

    def get_config_dict(self) -> dict[str, Any]:
        return {} if self.truncate_dim is None else {"truncate_dim": self.truncate_dim}


class MSEEvaluator(_Encoded):
    """negative_mse: -100 x the mean squared difference between the teacher's embeddings of source_sentences
    (computed once, here) and the student's of target_sentences."""
    csv_kind = "mse_evaluation"

    def __init__(self, source_sentences: list[str], target_sentences: list[str], teacher_model: Any = None,
                 show_progress_bar: bool = False, batch_size: int = 32, name: str = "", write_csv: bool = True,
                 truncate_dim: int | None = None) -> None:
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must be as long")
        if teacher_model is None:
            raise ValueError("MSEEvaluator needs teacher_model: it embeds the source sentences once")
        super().__init__(batch_size, show_progress_bar, name, write_csv, truncate_dim)
        self.target_sentences = list(target_sentences)
        self.primary_metric = "negative_mse"
        self.source_embeddings = self._embed(teacher_model, list(source_sentences), convert_to_numpy=True)

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        target = self._embed(model, self.target_sentences, convert_to_numpy=True)
        mse = float(((self.source_embeddings - target) ** 2).mean() * 100)
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps, {"MSE": mse})
        metrics = self.prefix_name_to_metrics({"negative_mse": -mse}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @property
    def description(self) -> str:
        return "Knowledge Distillation"


class TranslationEvaluator(_Encoded):
    """src2trg_accuracy: how often a source sentence's most similar target (cosine, over all targets, by the
    top-k kernel) is its own translation (or an identical text); trg2src_accuracy the other way; mean_accuracy."""
    csv_kind = "translation_evaluation"

    def __init__(self, source_sentences: list[str], target_sentences: list[str], show_progress_bar: bool = False,
                 batch_size: int = 16, name: str = "", print_wrong_matches: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None) -> None:
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must be as long")
        super().__init__(batch_size, show_progress_bar, name, write_csv, truncate_dim)
        self.source_sentences, self.target_sentences = list(source_sentences), list(target_sentences)
        self.print_wrong_matches = print_wrong_matches
        self.primary_metric = "mean_accuracy"

    def _accuracy(self, queries: Any, corpus: Any, texts: list[str], label: str) -> float:
        _, best = search_topk(queries, corpus, 1, score_function=cos_sim)
        best = best[:, 0].tolist()
        wrong = [i for i, j in enumerate(best) if texts[i] != texts[j]]
        if self.print_wrong_matches:
            for i in wrong:
                print(f"{label}: row {i} matched row {best[i]} ({texts[best[i]]!r}) instead of {texts[i]!r}")
        return 1 - len(wrong) / max(len(texts), 1)

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        source = self._embed(model, self.source_sentences, convert_to_tensor=True)
        target = self._embed(model, self.target_sentences, convert_to_tensor=True)
        forward = self._accuracy(source, target, self.target_sentences, "src2trg")
        backward = self._accuracy(target, source, self.source_sentences, "trg2src")
        if output_path and self.write_csv:
            write_csv_row(output_path, self.csv_file, epoch, steps,
                          {"src2trg": forward, "trg2src": backward})
        metrics = self.prefix_name_to_metrics({"src2trg_accuracy": forward, "trg2src_accuracy": backward,
                                               "mean_accuracy": (forward + backward) / 2}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


__all__ = ["MSEEvaluator", "TranslationEvaluator"]
