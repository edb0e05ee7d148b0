"""What sentence-transformers' evaluators share, for evaluators written against sentfuse (subclass it as
sentence-transformers' SentenceEvaluator / BaseEvaluator): metric prefixes and the model card record."""

from __future__ import annotations

from typing import Any

from .writing import prefixed


class BaseEvaluator:
    """Subclasses define __call__(model, output_path=None, epoch=-1, steps=-1) -> {metric: value} and set
    primary_metric (the metric a trainer's best-model selection reads)."""

    greater_is_better: bool = True
    primary_metric: str | None = None
    csv_kind: str | None = None  # what an evaluator writing a CSV names its file for (sentence-transformers' names)
    name: str = ""

    @property
    def csv_file(self) -> str | None:
        """The file under output_path that __call__ appends its results to: {csv_kind}[_{name}]_results.csv."""
        if self.csv_kind is None:
            return None
        return f"{self.csv_kind}{'_' + self.name if self.name else ''}_results.csv"

    def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must define __call__")

    def prefix_name_to_metrics(self, metrics: dict[str, float], name: str) -> dict[str, float]:
        """metrics with keys prefixed by name (values as floats), primary_metric prefixed too."""
        if name and self.primary_metric and not self.primary_metric.startswith(f"{name}_"):
            self.primary_metric = prefixed(name, self.primary_metric)
        return {prefixed(name, key): float(value) for key, value in metrics.items()}

    def store_metrics_in_model_card_data(self, model: Any, metrics: dict[str, Any], epoch: int = 0,
                                         step: int = 0) -> None:
        card = getattr(model, "model_card_data", None)
        if card is not None and hasattr(card, "set_evaluation_metrics"):
            card.set_evaluation_metrics(self, metrics, epoch, step)

    @property
    def description(self) -> str:
        """The evaluator's name without "Evaluator", spaced: what a model card calls it."""
        name = type(self).__name__.removesuffix("Evaluator")
        return "".join(f" {c}" if c.isupper() and i else c for i, c in enumerate(name)).strip()

    def get_config_dict(self) -> dict[str, Any]:
        return {}


SentenceEvaluator = BaseEvaluator  # sentence-transformers' older name
