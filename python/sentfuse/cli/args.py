"""Argument types and the option groups several commands share, each defined once."""

from __future__ import annotations

import argparse

from .inputs import FORMATS


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def cosine(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {value!r}")
    return number


def add_input_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--format", choices=FORMATS, default="auto",
                         help="input format (default: jsonl for files ending in .jsonl, else text)")
    command.add_argument("--field", default=None, help='JSON field holding the text (jsonl only; default "text")')


def add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default=None, help="model folder or cached hub name (default: all-MiniLM-L6-v2)")
    command.add_argument("--batch-size", type=positive, default=None, help="most texts per forward pass (default: by device)")
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
