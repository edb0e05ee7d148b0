"""Metric names and the CSV an evaluator appends its results to, as sentence-transformers names them."""

from __future__ import annotations

import csv
from pathlib import Path


def prefixed(name: str, metric: str) -> str:
    return f"{name}_{metric}" if name else metric


def write_csv_row(output_path: str, csv_file: str, epoch: float, steps: int, metrics: dict[str, float]) -> None:
    """Append (epoch, steps, metrics...) to output_path/csv_file (an evaluator's csv_file), with a header when new."""
    path = Path(output_path) / csv_file
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", "steps", *metrics])
        writer.writerow([epoch, steps, *metrics.values()])
