"""SequentialEvaluator: several evaluators run one after another, their metrics merged."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .base import BaseEvaluator


class SequentialEvaluator(BaseEvaluator):
    """Every evaluator's metrics, plus sequential_score: main_score_function over their primary scores
    (default: the last evaluator's)."""

    def __init__(self, evaluators: Iterable[Any],
                 main_score_function: Callable[[list[float]], float] = lambda scores: scores[-1]) -> None:
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function
        self.greater_is_better = True
        self.primary_metric = "sequential_score"

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        results: dict[str, float] = {}
        scores = []
        for i, evaluator in enumerate(self.evaluators):
            evaluation = evaluator(model, output_path, epoch, steps)
            if not isinstance(evaluation, dict):  # an older evaluator returning its score alone
                scores.append(evaluation)
                evaluation = {f"evaluator_{i}": evaluation}
            else:
                primary = getattr(evaluator, "primary_metric", None)
                scores.append(evaluation[primary] if primary else next(iter(evaluation.values())))
            results.update(evaluation)
        results["sequential_score"] = self.main_score_function(scores) if scores else 0.0
        return results
