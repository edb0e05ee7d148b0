"""similarity_matrix: every cosine similarity between two sets of rows, written chunk by chunk into an
array the caller gives, such as a numpy memmap for matrices larger than memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import NUMPY_DTYPES, parse_dtype, positive_int
from .similarity import as_embeddings, scoring_rows

__all__ = ["similarity_matrix"]

# Bytes of fp32 scores one chunk holds when chunk_size is not given.
_CHUNK_BYTES = 64 << 20


def _check_out(out: Any, shape: tuple[int, int], dtype: torch.dtype) -> None:
    expected = f"expected shape {shape} and dtype {str(dtype).removeprefix('torch.')}"
    if isinstance(out, torch.Tensor):
        found_dtype = str(out.dtype).removeprefix("torch.")
        ok_dtype = out.dtype == dtype
    elif isinstance(out, np.ndarray):
        found_dtype = str(out.dtype)
        ok_dtype = out.dtype == NUMPY_DTYPES[dtype]
        if not out.flags.writeable:
            raise ValueError(f"out is a read-only numpy array (open a memmap with mode 'w+' or 'r+'); {expected}")
    else:
        raise TypeError(f"out must be a torch tensor or numpy array (memmap included), got {type(out).__name__}")
    if tuple(out.shape) != shape or not ok_dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {found_dtype}; {expected}")


def similarity_matrix(
    a: Any,
    b: Any = None,
    *,
    out: torch.Tensor | np.ndarray | None = None,
    dtype: Any = torch.float32,
    chunk_size: int | None = None,
    show_progress_bar: bool = False,
) -> torch.Tensor | np.ndarray:
    """Cosine similarities of the rows of a [N, D] and b [M, D] (b=None: a with itself) -> out [N, M].

    Written chunk_size rows at a time into out: a torch tensor or numpy array of shape (N, M) and
    the given dtype (float32 or float16), such as a numpy memmap opened with mode 'w+' for a matrix
    larger than memory. out=None allocates a tensor on a's device. Scores are computed in fp32;
    chunk_size=None picks about 64 MB of scores per chunk. Returns out.
    """
    dtype = parse_dtype(dtype, allowed=("float32", "float16"))
    a = as_embeddings(a, "a")
    b_rows = a if b is None else as_embeddings(b, "b")
    if a.shape[1] != b_rows.shape[1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b_rows.shape)} must have the same embedding dimension")
    chunk_size = positive_int(chunk_size, "chunk_size")
    shape = (a.shape[0], b_rows.shape[0])
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=a.device)
    else:
        _check_out(out, shape, dtype)
    n, m = shape
    if n == 0 or m == 0:
        return out

    b_unit = scoring_rows(b_rows.to(a.device), "cosine")
    rows = chunk_size or max(1, _CHUNK_BYTES // (4 * m))
    for start in tqdm(range(0, n, rows), desc="Similarity matrix", unit="chunk", disable=not show_progress_bar):
        stop = min(start + rows, n)
        a_unit = b_unit[start:stop] if b is None else scoring_rows(a[start:stop], "cosine")
        block = torch.mm(a_unit, b_unit.T).to(dtype)
        if isinstance(out, torch.Tensor):
            out[start:stop].copy_(block)
        else:
            out[start:stop] = block.cpu().numpy()
    if isinstance(out, np.memmap):
        out.flush()
    return out
