"""pair_scores (CPU, and CUDA where a GPU is visible) against reference.pair_scores."""

from __future__ import annotations

import pytest
import torch

from sentfuse import _ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HAS_CUDA = torch.cuda.is_available() and _ops.WITH_CUDA
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible"))]
# Both sides accumulate in fp32 from the same stored values; only the summation order differs.
TOL = 2e-5


def inputs(n, m, dim, pairs, seed, dtype, device, same=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g)
    a[0] = 0  # a zero vector scores 0 as a cosine
    b = None if same else torch.randn(m, dim, generator=g)
    rows = torch.randint(0, n, (pairs,), generator=g)
    cols = torch.randint(0, n if same else m, (pairs,), generator=g)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(a.to(dtype)), move(None if b is None else b.to(dtype)), move(rows), move(cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("dim", [1, 7, 8, 33, 384])
def test_matches_reference(device, dtype, metric, same, dim):
    a, b, rows, cols = inputs(50, 40, dim, 3000, dim, dtype, device, same)
    got = _ops.pair_scores(a, b, rows, cols, metric=metric)
    assert got.dtype == torch.float32 and got.shape == rows.shape and got.device == a.device
    expected = reference.pair_scores(a.cpu(), None if b is None else b.cpu(), rows.cpu(), cols.cpu(),
                                     metric=metric)
    scale = 1.0 if metric == "cosine" else float(dim)  # dot products grow with the dimension
    torch.testing.assert_close(got.cpu(), expected, atol=TOL * scale, rtol=1e-5)
    if metric == "cosine":
        assert (got[rows == 0] == 0).all(), "the zero row must score 0, not NaN"


@pytest.mark.parametrize("device", DEVICES)
def test_matches_threshold_pairs(device):
    """The score pair_scores gives a pair is the one threshold_pairs reports for it."""
    a, b, _, _ = inputs(300, 200, 64, 0, 3, torch.float32, device)
    rows, cols, scores = _ops.threshold_pairs(a, b, 0.2)
    assert len(rows) > 100
    torch.testing.assert_close(_ops.pair_scores(a, b, rows, cols), scores, atol=TOL, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_strided(device):
    a, b, rows, cols = inputs(20, 30, 16, 100, 5, torch.float32, device)
    assert _ops.pair_scores(a, b, rows[:0], cols[:0]).shape == (0,)
    wide = torch.zeros(20, 32, device=device)
    wide[:, ::2] = a  # a non-contiguous view of the same values
    got = _ops.pair_scores(wide[:, ::2], b, rows[::3], cols[::3])
    torch.testing.assert_close(got, _ops.pair_scores(a, b, rows[::3], cols[::3]))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    a, b, rows, cols = inputs(20, 30, 16, 10, 6, torch.float32, device)
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 20\)"):
        _ops.pair_scores(a, b, rows + 20, cols)
    with pytest.raises(IndexError, match=r"cols must lie in \[0, 30\)"):
        _ops.pair_scores(a, b, rows, cols - 31)
    with pytest.raises(ValueError, match="same length"):
        _ops.pair_scores(a, b, rows, cols[:5])
    with pytest.raises(TypeError, match="rows must be int64"):
        _ops.pair_scores(a, b, rows.int(), cols)
    with pytest.raises(ValueError, match="same embedding dimension"):
        _ops.pair_scores(a, b[:, :8], rows, cols)
    bad = a.clone()
    bad[rows[0]] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        _ops.pair_scores(bad, b, rows, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("same", [False, True])
def test_opcheck(device, same):
    a, b, rows, cols = inputs(30, 25, 16, 64, 7, torch.float32, device, same)
    torch.library.opcheck(torch.ops.sentfuse.pair_scores.default, (a, b, rows, cols))
    torch.library.opcheck(torch.ops.sentfuse.pair_scores.default, (a, b, rows, cols), dict(metric="dot"))
