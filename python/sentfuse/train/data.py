"""Training data in sentence-transformers' column conventions, checked, and collated into token columns.

A dataset's columns are, in order, the texts a loss reads (anchor, positive, negatives..., or
sentence1, sentence2); a column named "label", "labels", "score" or "scores" holds the label instead: a number
(or a bool) per row, or a list of numbers per row (teacher embeddings or scores for the distillation losses).
Without one, losses receive labels=None, as sentence-transformers' do. Problems are reported before training
starts, naming the column (and the row, for a bad cell).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .forward import TokenColumn, tokenize_column

if TYPE_CHECKING:
    from ..encode.encoder import Encoder

LABEL_COLUMNS = ("label", "labels", "score", "scores")  # sentence-transformers' names, in its order
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
                             f"(a label column must be named one of {', '.join(LABEL_COLUMNS)})")
    return Columns(texts, label)


def _check_cell(value: Any, column: str, row: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"column {column!r}, row {row}: expected a string, got {type(value).__name__} {value!r}")
    return value


def label_problem(value: Any) -> str | None:
    """Why value cannot be a training label (None where it can): a finite number or bool, or a non-empty
    list (nested lists too) of them."""
    value = value.tolist() if hasattr(value, "tolist") else value  # numpy / torch cells
    if isinstance(value, (list, tuple)):
        return next((p for p in map(label_problem, value) if p), None) if value else "expected numbers, got []"
    if isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
        return None
    return f"expected a finite number (or a list of them), got {value!r}"


def labels_tensor(values: list[Any], column: str) -> torch.Tensor:
    """[B] or [B, ...] float32 labels, every cell checked (the message names the column and the row)."""
    cells = [v.tolist() if hasattr(v, "tolist") else v for v in values]
    for row, cell in enumerate(cells):
        problem = label_problem(cell)
        if problem:
            raise ValueError(f"column {column!r}, row {row}: {problem}")
    try:
        return torch.tensor(cells, dtype=torch.float32)
    except (ValueError, TypeError):
        raise ValueError(f"column {column!r}: the rows' labels differ in shape (every row needs as many "
                         f"numbers)") from None


class TextPairCollator:
    """Rows (dicts) -> {"columns": [TokenColumn per text column], "labels": [B] or [B, ...] tensor or None,
    "texts": first texts}.

    Texts are tokenized unpadded here, in the data loader; padding happens per length run in the forward.
    """

    def __init__(self, model: Encoder, columns: Columns) -> None:
        self.model = model
        self.columns = columns

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [[_check_cell(r[c], c, i) for i, r in enumerate(rows)] for c in self.columns.texts]
        label = self.columns.label
        labels = None if label is None else labels_tensor([r[label] for r in rows], label)
        return {
            "columns": [tokenize_column(self.model, column) for column in texts],
            "labels": labels,
            "texts": [column[0] for column in texts],  # named in errors about this batch
        }


DATASET_KEY = "__dataset__"  # the name of the dataset a row came from, in multi-dataset training


class DatasetsEndToEnd(torch.utils.data.Dataset):
    """Named datasets as one index space, each row tagged with its dataset's name (DATASET_KEY)."""

    def __init__(self, datasets: dict[str, Any]) -> None:
        self.names, self.parts = list(datasets), list(datasets.values())
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        part = bisect.bisect_right(self.offsets, index) - 1
        return {**self.parts[part][index - self.offsets[part]], DATASET_KEY: self.names[part]}


class MultiDatasetCollator:
    """Batches drawn from one named dataset at a time: that dataset's TextPairCollator, plus "dataset_name"
    (which picks the loss)."""

    def __init__(self, model: Encoder, columns: dict[str, Columns]) -> None:
        self.collators = {name: TextPairCollator(model, c) for name, c in columns.items()}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        name = rows[0][DATASET_KEY]
        return {**self.collators[name](rows), "dataset_name": name}


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


__all__ = ["Columns", "DatasetsEndToEnd", "InputExample", "MultiDatasetCollator", "TextPairCollator", "TokenColumn",
           "dataset_columns", "label_problem", "labels_tensor", "rows_from_examples"]
