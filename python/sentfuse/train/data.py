"""Training data in sentence-transformers' column conventions, checked, and collated into token columns.

A dataset's columns are, in order, the texts a loss reads (anchor, positive, negatives..., or
sentence1, sentence2); a column named "label" or "score" holds the label instead. Problems are
reported before training starts, naming the column (and the row, for a bad cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .forward import TokenColumn, tokenize_column

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

LABEL_COLUMNS = ("label", "score")
RESERVED_COLUMNS = ("return_loss", "dataset_name")


@dataclass(frozen=True)
class Columns:
    texts: tuple[str, ...]  # input columns, in the order the loss reads them
    label: str | None


def dataset_columns(dataset: Any, name: str = "train_dataset") -> Columns:
    """The text and label columns of a datasets.Dataset, after checking it is usable for training."""
    names = list(getattr(dataset, "column_names", None) or [])
    if not names:
        raise ValueError(f"{name} has no columns; expected a datasets.Dataset with text columns "
                         f"(e.g. anchor, positive) and optionally a 'label' or 'score' column")
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train on")
    reserved = [c for c in names if c in RESERVED_COLUMNS]
    if reserved:
        raise ValueError(f"{name} uses reserved column name(s) {reserved}; rename them")
    label = next((c for c in names if c in LABEL_COLUMNS), None)
    texts = tuple(c for c in names if c != label)
    if not texts:
        raise ValueError(f"{name} has no text column besides {label!r}")
    features = getattr(dataset, "features", None) or {}
    for column in texts:
        dtype = getattr(features.get(column), "dtype", "string")
        if dtype not in ("string", "large_string"):
            raise ValueError(f"{name}: column {column!r} holds {dtype}, not text; text columns must be strings "
                             f"(a label column must be named 'label' or 'score')")
    return Columns(texts, label)


def _check_cell(value: Any, column: str, row: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"column {column!r}, row {row}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _label(value: Any, row: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"column 'label', row {row}: expected a finite number, got {value!r}")
    return float(value)


class TextPairCollator:
    """Rows (dicts) -> {"columns": [TokenColumn per text column], "labels": [B] tensor, "texts": first texts}.

    Texts are tokenized unpadded here, in the data loader; padding happens per length run in the forward.
    """

    def __init__(self, model: Encoder, columns: Columns) -> None:
        self.model = model
        self.columns = columns

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [[_check_cell(r[c], c, i) for i, r in enumerate(rows)] for c in self.columns.texts]
        if self.columns.label is None:
            labels = torch.zeros(len(rows))
        else:
            labels = torch.tensor([_label(r[self.columns.label], i) for i, r in enumerate(rows)])
        return {
            "columns": [tokenize_column(self.model, column) for column in texts],
            "labels": labels,
            "texts": [column[0] for column in texts],  # named in errors about this batch
        }


@dataclass
class InputExample:
    """One training example in sentence-transformers' pre-3.0 form: its texts and an optional label."""

    guid: str = ""
    texts: list[str] | None = None
    label: int | float = 0


def rows_from_examples(examples: list[Any]) -> dict[str, list]:
    """sentence-transformers' InputExample list (texts, label) as dataset columns sentence_0..n[, label]."""
    widths = {len(e.texts) for e in examples}
    if not examples:
        raise ValueError("the training DataLoader holds no examples")
    if len(widths) != 1:
        raise ValueError(f"every InputExample of one objective must have as many texts; got {sorted(widths)}")
    columns: dict[str, list] = {f"sentence_{i}": [e.texts[i] for e in examples] for i in range(widths.pop())}
    labels = [getattr(e, "label", 0) for e in examples]
    if any(label != 0 for label in labels):
        columns["label"] = labels
    return columns


__all__ = ["Columns", "InputExample", "TextPairCollator", "TokenColumn", "dataset_columns", "rows_from_examples"]
