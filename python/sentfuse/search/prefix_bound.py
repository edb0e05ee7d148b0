"""Exact pairs above a threshold among the rows of one matrix, with a cheap first pass where it pays.

Real sentence embeddings keep most of their energy in a few directions (all-MiniLM-L6-v2 on SQuAD
questions: 65% in 64 of 384), which bounds a dot product from a short prefix. Rotate the rows onto
the principal axes of their second moment (orthogonal, so dot products do not change) and split each
rotated row y into its first d coordinates and the norm r of the rest; by Cauchy-Schwarz on the rest

    y_i . y_j  <=  y_i[:d] . y_j[:d] + r_i r_j,

which is the dot product of the (d + 1)-dim rows [y_i[:d], r_i]. threshold_pairs on those rows
finds a superset of the answer for (d + 1) / D of the GEMM work, and pair_scores rescores the
candidates on the original rows, so the result is the pairs the plain kernel finds (up to fp32
rounding of scores equal to the threshold). A sample of random pairs predicts how many candidates
each d lets through; the first pass runs only where that predicts a clear saving, so rows without
such structure take the plain kernel unless the threshold is far above their typical scores.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _ops, cpu_features

__all__ = ["first_pass", "pair_score_quantile", "self_pairs"]

# Prefix lengths tried; the cost model picks one (or none).
_PREFIXES = (16, 24, 32, 48, 64, 96, 128, 192)
# Cost per pair of the N^2 / 2, in units of one feature of GEMM work per pair, fitted on a 2-core AVX2
# CPU (20,000 x 384 SQuAD embeddings, prefixes 64-192, thresholds 0.49-0.75; within ~15% there):
# writing and scanning a score costs about 25 features of GEMM, a candidate (kept by the kernel, then
# rescored from memory) about 10,000, and the plan plus the rotation about 0.3 s, one unit being ~3e-11 s.
_SCAN_COST = 25.0
_CANDIDATE_COST = 10000.0
_FIXED_SECONDS = 0.3
_UNIT_SECONDS = 3e-11
# On AMX CPUs threshold_pairs scores bf16 blocks on the matrix units (fp32 rescoring of candidates): its
# GEMM work per feature costs about 1/8 of the fp32 kernel's (issue 21's table: 2,995 vs 341 GFLOP/s). Measured
# on the 2-core AMX Xeon, 20,000 planted rows at paraphrase mining's cutoff: plain kernel 2.2 s, prefix 3.7 s.
# On AVX512-BF16 CPUs without AMX the vector blocks run at ~2x the fp32 rate (2-core Zen 4 EPYC).
_BLOCK_GEMM_SPEEDUP = {"amx": 8.0, "avx512_bf16": 2.0}
_MIN_SAVING = 0.85  # take the prefix bound only when predicted to cost at most this fraction of the plain kernel
# Margin for fp32 rounding in the rotation and the prefix GEMM: far above their typical error (~1e-6)
# and above the worst-case bound for 384-d unit rows (~1e-3).
_SLACK = 2e-3
_MIN_ROWS = 4096  # below this the plain kernel takes milliseconds
_MOMENT_ROWS = 4096  # rows the rotation is fitted on (any rotation is exact; the sample only shapes it)
_SAMPLE_ROWS = 1536  # rows whose ~1.2 million pairs estimate candidate fractions and score quantiles
_BLOCK_CANDIDATES = 1 << 20  # expected candidates per kernel call: bounds the first pass's memory (~100 MB)
_ROTATE_ROWS = 8192  # rows rotated at a time
_MIN_BLOCK = 256  # rows per kernel call at least
_ONE_CALL_ROWS = 32768  # above this, row blocks, so that a misjudged candidate share cannot blow up memory


def _sample_rows(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """count distinct random rows of x (all of them if fewer)."""
    return x[torch.randperm(len(x), generator=generator)[:count].to(x.device)]


def _upper(square: torch.Tensor) -> torch.Tensor:
    """The entries above the diagonal of a square matrix: one per pair of sampled rows."""
    i, j = torch.triu_indices(len(square), len(square), offset=1, device=square.device)
    return square[i, j]


def pair_score_quantile(x: torch.Tensor, fraction: float, seed: int = 0) -> float:
    """A score that about `fraction` of all pairs of rows of x reach (dot products), from the pairs of
    _SAMPLE_ROWS random rows."""
    rows = _sample_rows(x, _SAMPLE_ROWS, torch.Generator().manual_seed(seed)).float()
    scores = _upper(rows @ rows.T).cpu().numpy()
    if len(scores) == 0:
        return -float("inf")
    rank = min(max(int(round((1.0 - fraction) * (len(scores) - 1))), 0), len(scores) - 1)
    return float(np.partition(scores, rank)[rank])  # the same order statistic as kthvalue, ~10x faster


def _eigh_one_thread(moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.linalg.eigh of the [D, D] second moment on one CPU thread. At D = 384 threads gain nothing (~20 ms),
    but MKL's threaded eigensolver waits on a descheduled thread for seconds when another process holds a
    core: 4.9 s with 2 threads against 0.022 s with 1 on the 2-core AVX2 EPYC at load 5. The thread count is
    the process's: torch work in other Python threads runs on one thread for these milliseconds too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(moment)
    finally:
        torch.set_num_threads(threads)


def _plan(
    x: torch.Tensor, bound: float, seed: int, prefix: int | None = None
) -> tuple[torch.Tensor, int, float] | None:
    """(rotation [D, D], prefix d, predicted fraction of pairs whose bound reaches `bound`), or None where
    the plain kernel is cheaper. A given prefix is taken whatever it costs."""
    dim = x.shape[1]
    gemm = 1.0 / _BLOCK_GEMM_SPEEDUP.get(cpu_features.bf16_block_unit(), 1.0) if x.device.type == "cpu" else 1.0
    plain_cost = dim * gemm + _SCAN_COST
    fixed_cost = _FIXED_SECONDS / (_UNIT_SECONDS * max(len(x) * (len(x) - 1) / 2, 1))
    if prefix is None and (_PREFIXES[0] + 1) * gemm + _SCAN_COST + fixed_cost > _MIN_SAVING * plain_cost:
        return None  # no prefix can pay for the plan itself: skip its eigendecomposition and sample
    g = torch.Generator().manual_seed(seed)
    rows = _sample_rows(x, _MOMENT_ROWS, g)
    eigenvalues, vectors = _eigh_one_thread((rows.T @ rows).double())
    rotation = vectors[:, eigenvalues.argsort(descending=True)].to(x.dtype)

    # Every pair of _SAMPLE_ROWS rows: their prefix dot products (grown one slice of coordinates at a
    # time) plus the product of their tail norms, counted off the diagonal (each pair twice).
    y = rows[:_SAMPLE_ROWS] @ rotation
    tails = y.square().flip(1).cumsum(1).flip(1).sqrt()  # column d: norm of coordinates d...
    ordered_pairs = max(len(y) * (len(y) - 1), 1)
    prefix_dots = y.new_zeros((len(y), len(y)))
    done = 0
    best = None
    for d in [prefix] if prefix else [d for d in _PREFIXES if d < dim]:
        prefix_dots += y[:, done:d] @ y[:, done:d].T
        done = d
        upper = prefix_dots + torch.outer(tails[:, d], tails[:, d])
        hits = int((upper >= bound).sum()) - int((upper.diagonal() >= bound).sum())
        fraction = hits / ordered_pairs
        cost = (d + 1) * gemm + _SCAN_COST + _CANDIDATE_COST * fraction + fixed_cost
        if (prefix or cost <= _MIN_SAVING * plain_cost) and (best is None or cost < best[0]):
            best = (cost, d, fraction)
    if best is None:
        return None
    return rotation, best[1], best[2]


def first_pass(
    x: torch.Tensor, threshold: float, *, prefix: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, int, float, float] | None:
    """The prefix-bound pass self_pairs runs for x and threshold, as (rotation, d, predicted candidate
    share, bound threshold), or None for the plain kernel. prefix as in self_pairs."""
    n, dim = x.shape
    if prefix is not None and prefix != 0 and not 0 < prefix < dim:
        raise ValueError(f"prefix must be None, 0, or in (0, {dim}) for {dim}-dim rows, got {prefix}")
    if n < 2 or prefix == 0 or (prefix is None and (x.device.type != "cpu" or n < _MIN_ROWS)):
        return None
    x32 = x.float()
    # The margin covers rounding relative to the largest product of norms (1 for unit rows).
    bound = threshold - _SLACK * max(1.0, float(torch.linalg.vector_norm(x32, dim=1).max()) ** 2)
    plan = _plan(x32, bound, seed, prefix)
    return None if plan is None else (*plan, bound)


def self_pairs(
    x: torch.Tensor, threshold: float, *, prefix: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair i < j of rows of x [N, D] (fp32) with x_i . x_j >= threshold -> (rows, cols, scores),
    sorted by (row, col): what threshold_pairs(x, None, threshold, metric="dot") returns.

    prefix=None lets the cost model choose: on CPU, rows with a few dominant directions go through the
    prefix bound above; otherwise, and on other devices (the model is fitted to CPUs), the plain kernel
    runs. prefix=d forces the bound on the first d rotated coordinates (0 < d < D; tests use it);
    prefix=0 forces the plain kernel.
    """
    n = len(x)
    x32 = x.float()
    plan = first_pass(x32, threshold, prefix=prefix, seed=seed)
    if plan is None:
        return _ops.threshold_pairs(x, None, threshold, metric="dot")
    rotation, d, fraction, bound = plan
    # [y[:d], |y[d:]|] per row, rotated a chunk of rows at a time so that no N x D copy is made.
    bound_rows = x32.new_empty((n, d + 1))
    for start in range(0, n, _ROTATE_ROWS):
        y = x32[start : start + _ROTATE_ROWS] @ rotation
        bound_rows[start : start + len(y), :d] = y[:, :d]
        bound_rows[start : start + len(y), d] = torch.linalg.vector_norm(y[:, d:], dim=1)
    # One symmetric call for up to _ONE_CALL_ROWS rows whose candidates fit the budget; otherwise row
    # blocks, each against the rows from its start on, sized from the candidates per scored pair seen so
    # far, and at most n / 8 rows so that the duplicated lower half of each block's diagonal square stays
    # a small share of the work.
    predicted = fraction if fraction == fraction else 1.0
    # The sample can miss clusters: until a block has been seen, blocks assume 4x the predicted candidates.
    per_pair = 4 * predicted
    found = []
    start = 0
    while start < n:
        width = n - start
        if start == 0 and n <= _ONE_CALL_ROWS and predicted * n * n / 2 <= _BLOCK_CANDIDATES:
            rows, cols, _ = _ops.threshold_pairs(bound_rows, None, bound, metric="dot")
            stop = n
        else:
            fit = int(_BLOCK_CANDIDATES / max(per_pair * width, 1e-9))
            stop = start + min(width, max(_MIN_BLOCK, min(fit, n // 8)))
            rows, cols, _ = _ops.threshold_pairs(bound_rows[start:stop], bound_rows[start:], bound, metric="dot")
            per_pair = max(len(rows) / ((stop - start) * width), 1e-9)
            keep = cols > rows  # this block's rows against each other: each pair once, i < j
            rows, cols = rows[keep] + start, cols[keep] + start
        scores = _ops.pair_scores(x, None, rows, cols, metric="dot")
        hit = scores >= threshold
        found.append((rows[hit], cols[hit], scores[hit]))
        start = stop
    return tuple(torch.cat(parts) for parts in zip(*found))
