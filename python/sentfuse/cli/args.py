"""Argument types and the option groups several commands share, each defined once."""

from __future__ import annotations

import argparse

from .._checks import cosine_arg as cosine, plural, positive_int_arg as positive
from ..model.compute import COMPUTE_MODES
from .inputs import FORMATS

__all__ = ["add_backbone_options", "add_corpus_arguments", "add_input_options", "add_model_options", "add_run_options",
           "cosine", "plural", "positive"]


def add_input_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--format", choices=FORMATS, default="auto",
                         help="input format (default: jsonl for files ending in .jsonl, else text)")
    command.add_argument("--field", default=None, help='JSON field holding the text (jsonl only; default "text")')


def add_corpus_arguments(command: argparse.ArgumentParser) -> None:
    """Queries scored against the items of a corpus file (search and rerank)."""
    command.add_argument("queries", nargs="+", metavar="QUERY", help="query texts")
    command.add_argument("--corpus", required=True, help="text or .jsonl file, one corpus item per line/record")
    add_input_options(command)


def add_model_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default=None, help="model folder or cached hub name (default: all-MiniLM-L6-v2)")
    add_run_options(command)


def add_run_options(command: argparse.ArgumentParser) -> None:
    """How a model runs: batch size, device, progress bar (commands whose --model means another kind of model)."""
    command.add_argument("--batch-size", type=positive, default=None, help="most texts per forward pass (default: by device)")
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_backbone_options(command: argparse.ArgumentParser) -> None:
    """How the backbone runs (encode, search and rerank; part of what a saved embeddings file records)."""
    command.add_argument("--max-seq-length", type=positive, default=None,
                         help="truncate texts (or text pairs) to this many tokens (at most the model's position limit)")
    command.add_argument("--dtype", choices=("float32", "bfloat16", "float16", *COMPUTE_MODES), default=None,
                         help="backbone dtype (default: as the checkpoint), or a CPU compute mode: bf16-mixed (bf16 "
                              "matrix products, float32 elsewhere), int8-dynamic (int8 linear layers); sentfuse info "
                              "lists what runs each here. Embeddings and scores come back as float32")
