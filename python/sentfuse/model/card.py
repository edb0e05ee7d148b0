"""model_card_data for Encoder and SparseEncoder: what sentence-transformers' evaluators write into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelCardData:
    """model_card_data when the caller gives none: keeps what sentence-transformers' evaluators report
    (set_evaluation_metrics). sentfuse writes no model card from it."""

    local_files_only: bool = False
    eval_results: list[dict[str, Any]] = field(default_factory=list)

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        self.eval_results.append(
            {"evaluator": type(evaluator).__name__, "metrics": dict(metrics), "epoch": epoch, "step": step}
        )
