"""`sentfuse encode --sparse`: texts -> sparse vectors in a scipy CSR .npz or JSON lines of {token: weight}."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._checks import plural, positive_int_arg
from .._io import atomic_write
from ..model.pretrained import quiet_progress_bars
from .encoder import SparseEncoder
from .vectors import SparseRows

FORMATS = (".npz", ".jsonl")


def add_sparse_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `sentfuse encode` takes for sparse models."""
    parser.add_argument("--sparse", action="store_true",
                        help="the model is a SparseEncoder (SPLADE): write OUT.npz (scipy CSR, columns = token ids) "
                             "or OUT.jsonl (one {token: weight} object per text)")
    parser.add_argument("--max-active-dims", type=positive_int_arg, default=None,
                        help="sparse only: keep each vector's largest weights (default: the model's setting)")


def _write_npz(coo: torch.Tensor, path: Path) -> None:
    import scipy.sparse

    indices, values = coo.indices().numpy(), coo.values().numpy()
    csr = scipy.sparse.csr_matrix((values, (indices[0], indices[1])), shape=tuple(coo.shape))
    with atomic_write(path) as f:
        scipy.sparse.save_npz(f, csr)


def _write_jsonl(coo: torch.Tensor, tokenizer: Any, path: Path) -> None:
    with atomic_write(path) as f:
        for row in SparseRows.split(coo):
            values, order = torch.sort(row.values(), descending=True, stable=True)
            tokens = tokenizer.convert_ids_to_tokens(row.indices()[0][order].tolist())
            f.write((json.dumps(dict(zip(tokens, values.tolist())), ensure_ascii=False) + "\n").encode("utf-8"))


def encode_sparse_file(texts: list[str], output: str | os.PathLike, model: str | os.PathLike, *,
                       device: str | None = None, dtype: str | None = None, batch_size: int | None = None,
                       max_batch_tokens: int | None = None, max_seq_length: int | None = None,
                       prompt_name: str | None = None, max_active_dims: int | None = None,
                       show_progress_bar: bool = True) -> dict[str, float]:
    """Encode texts (as encode_document does) and write row i for text i to output (.npz or .jsonl).

    show_progress_bar False also hides transformers' bar while the weights load. Returns the sparsity
    statistics of the vectors written.
    """
    path = Path(output)
    if path.suffix not in FORMATS:
        raise ValueError(f"output {output} must end in .npz (scipy CSR) or .jsonl (JSON lines) for sparse vectors")
    if path.suffix == ".npz" and importlib.util.find_spec("scipy") is None:  # before the work, not after it
        raise ValueError(f"output {output}: writing .npz needs scipy (pip install 'sentfuse[sparse]'), "
                         "or name a .jsonl file")
    with quiet_progress_bars() if not show_progress_bar else contextlib.nullcontext():
        encoder = SparseEncoder(model, device=device, dtype=dtype, max_seq_length=max_seq_length)
    coo = encoder.encode_document(texts, prompt_name=prompt_name, batch_size=batch_size,
                                  max_batch_tokens=max_batch_tokens, max_active_dims=max_active_dims,
                                  show_progress_bar=show_progress_bar, save_to_cpu=True)
    if path.suffix == ".npz":
        _write_npz(coo, path)
    else:
        _write_jsonl(coo, encoder.tokenizer, path)
    return encoder.sparsity(coo)


def run_sparse_encode(args: argparse.Namespace, texts: list[str]) -> int:
    """`sentfuse encode --sparse`: what the CLI runs once it has read the input texts."""
    if args.model is None:
        raise ValueError("--sparse needs --model: a sentence-transformers SparseEncoder folder")
    if args.normalize or args.precision != "float32":
        raise ValueError("--normalize and --precision apply to dense embeddings, not to --sparse vectors")
    start = time.perf_counter()
    stats = encode_sparse_file(texts, args.output, args.model, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                               max_seq_length=args.max_seq_length, prompt_name=args.prompt_name,
                               max_active_dims=args.max_active_dims, show_progress_bar=not args.no_progress)
    print(f"encoded {plural(len(texts), 'text')} in {time.perf_counter() - start:.2f} s, {stats['active_dims']:.1f} active "
          f"dims per text on average -> {args.output}", file=sys.stderr)
    return 0
