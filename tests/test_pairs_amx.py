"""threshold_pairs on the CPU's bf16 block units (no max_pairs), at the edges of its 32-row blocks and 256-column
chunks.

On a CPU with AMX or AVX512-BF16 the pairs come from bf16 blocks whose candidates are scored in fp32
(csrc/cpu/pairs.cpp); elsewhere, and with max_pairs, from fp32 tiles. Both must give the reference's pairs, up to
fp32 rounding of scores equal to the threshold. The last test runs test_pairs.py with SENTFUSE_CPU_BLOCKS=off,
which covers the fp32 tiles on such CPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentfuse import _ops
from test_topk import normal

TESTS = Path(__file__).resolve().parent


def expected_pairs(a, b, threshold, metric):
    """(row, col) -> fp64 score of every pair at or above threshold (j > i against itself)."""
    x, y = a.double(), (a if b is None else b).double()
    if metric == "cosine":
        x, y = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    scores = x @ y.T
    if b is None:
        scores = scores.triu(1) + torch.full_like(scores, -float("inf")).tril()
    rows, cols = (scores >= threshold).nonzero(as_tuple=True)
    return {(int(i), int(j)): float(scores[i, j]) for i, j in zip(rows, cols)}, scores


@pytest.mark.parametrize("n,m,d", [(1, 33, 17), (33, 257, 33), (70, 600, 64), (300, 300, 384)])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pairs_match_the_reference(n, m, d, metric, self_pairs, dtype):
    a, b = normal(n, d, 70, dtype), (None if self_pairs else normal(m, d, 71, dtype))
    base = a if b is None else b
    b = None if self_pairs else torch.cat([base[: m // 2], a[: min(n, m - m // 2)] * 1.5])  # planted close pairs
    threshold = 0.2 if metric == "cosine" else 0.2 * d
    rows, cols, scores = _ops.threshold_pairs(a, b, threshold, metric=metric)
    want, full = expected_pairs(a, b, threshold, metric)
    got = {(int(i), int(j)): float(s) for i, j, s in zip(rows, cols, scores)}
    finite = full[torch.isfinite(full)].abs()
    tol = 1e-5 * max([1.0] + finite.tolist())  # dot scores: fp32 rounding is relative to their size
    for pair in got.keys() ^ want.keys():  # only pairs scoring the threshold up to rounding may differ
        assert abs(full[pair].item() - threshold) < tol, f"pair {pair} scores {full[pair].item()}"
    for pair in got.keys() & want.keys():
        assert abs(got[pair] - want[pair]) < tol
    order = list(zip(rows.tolist(), cols.tolist()))
    assert order == sorted(order) and len(set(order)) == len(order)


def test_non_finite_raises():
    a = normal(400, 16, 72)
    a[350, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        _ops.threshold_pairs(a, None, 0.5)


def test_fp32_tiles_pass_the_pairs_tests():
    env = dict(os.environ, SENTFUSE_CPU_BLOCKS="off")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", str(TESTS / "test_pairs.py")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
