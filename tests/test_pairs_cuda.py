"""CUDA threshold_pairs against reference.threshold_pairs (run on CPU in fp32 from the same stored values)."""

from __future__ import annotations

import pytest
import torch
from test_pairs import assert_same_pairs, planted

from sentfuse import _ops

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    pytest.mark.skipif(not _ops.WITH_CUDA, reason="sentfuse was built without its CUDA kernels"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32 from the same stored values; only summation order differs.
TOL = 5e-5


def cuda_planted(*args, **kwargs):
    return planted(*args, **kwargs).cuda()


def check(a, b, threshold, metric="cosine", max_pairs=None, tol=TOL):
    got = _ops.threshold_pairs(a, b, threshold, metric=metric, max_pairs=max_pairs)
    assert all(t.is_cuda and t.device == a.device for t in got)
    assert_same_pairs(got, a, b, threshold, metric=metric, max_pairs=max_pairs, tol=tol)
    return got


# (N, M), M None for a against itself. CUDA tiles are at most 2048 rows x 16384 columns: (2100, 16500) spans
# two each way, and 16500 against itself also runs the partial tiles along the diagonal.
SHAPES = [(1, None), (2, None), (37, None), (4500, None), (1, 5000), (37, 1100), (2100, 16500)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_planted_near_duplicates(dtype, shape):
    n, m = shape
    a = planted(n, 24, 0, dtype, copies=n // 10)
    b = None if m is None else planted(m, 24, 1, dtype, source=a, copies=min(m, n) // 3).cuda()
    a = a.cuda()
    for threshold in (0.9, 0.5):
        check(a, b, threshold)


def test_self_pairs_across_many_tiles():
    a = cuda_planted(16500, 16, 2, copies=3000)
    check(a, None, 0.8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("self_pairs", [True, False])
def test_normalized_dot_product(dtype, self_pairs):
    a = torch.nn.functional.normalize(planted(1500, 32, 3, copies=200), dim=1).to(dtype)
    b = None if self_pairs else torch.nn.functional.normalize(planted(4200, 32, 4, source=a, copies=300), dim=1)
    a, b = a.cuda(), None if b is None else b.to(dtype).cuda()
    check(a, b, 0.85, metric="dot")
    a = cuda_planted(300, 8, 5, dtype, copies=30)
    b = None if self_pairs else cuda_planted(500, 8, 6, dtype, source=a.cpu(), copies=50) * 3
    check(a, b, 5.0, metric="dot", tol=2e-4)


@pytest.mark.parametrize("max_pairs", [0, 1, 7, 1000, 10**9])
@pytest.mark.parametrize("self_pairs", [True, False])
def test_max_pairs_keeps_the_best(max_pairs, self_pairs):
    a = cuda_planted(2100, 16, 7, copies=300)
    b = None if self_pairs else cuda_planted(16500, 16, 8, source=a.cpu(), copies=500)
    # At 0.1 the pairs found outgrow the prune limit (4M) mid-scan, so the running prune runs.
    for threshold in (0.9, 0.1):
        check(a, b, threshold, max_pairs=max_pairs)


def test_max_pairs_ties_go_to_smaller_row_col():
    a = torch.ones(4500, 4, device="cuda")  # every pair scores exactly the same
    rows, cols, _ = _ops.threshold_pairs(a, None, 0.5, max_pairs=3)
    assert rows.tolist() == [0, 0, 0] and cols.tolist() == [1, 2, 3]
    rows, cols, _ = _ops.threshold_pairs(a[:1100], a[:10].neg(), -1.0, max_pairs=4)
    assert rows.tolist() == [0, 0, 0, 0] and cols.tolist() == [0, 1, 2, 3]
    rows, cols, _ = _ops.threshold_pairs(a[:2100], torch.ones(17000, 4, device="cuda"), 0.0, max_pairs=70000)
    assert len(rows) == 70000 and (rows < 5).all() and rows[-1] == 4 and cols[-1] == 70000 - 4 * 17000 - 1


@pytest.mark.parametrize("self_pairs", [True, False])
def test_zero_vectors_score_zero(self_pairs):
    a = planted(40, 8, 9, copies=5)
    a[[3, 17]] = 0
    b = None if self_pairs else torch.cat([a[:20], torch.zeros(3, 8)]).cuda()
    a = a.cuda()
    for threshold in (-0.5, 0.0, 0.5):
        assert not torch.isnan(check(a, b, threshold)[2]).any()


@pytest.mark.parametrize(
    "a, b, max_pairs",
    [((0, 8), None, None), ((1, 8), None, None), ((0, 8), (5, 8), None), ((3, 8), (0, 8), None),
     ((6, 8), None, 0), ((6, 8), (4, 8), 0)],
)
def test_empty_outputs(a, b, max_pairs):
    b = None if b is None else torch.randn(b, device="cuda")
    rows, cols, scores = _ops.threshold_pairs(torch.randn(a, device="cuda"), b, -1.0, max_pairs=max_pairs)
    assert rows.shape == cols.shape == scores.shape == (0,) and rows.is_cuda
    assert rows.dtype == cols.dtype == torch.int64 and scores.dtype == torch.float32


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 1.0001, -1.5])
def test_threshold_validation(threshold):
    a = torch.randn(5, 8, device="cuda")
    with pytest.raises(ValueError, match="threshold"):
        _ops.threshold_pairs(a, None, threshold)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["a", "b", "self"])
def test_non_finite_input_raises(bad, where):
    a, b = planted(50, 8, 10), planted(600, 8, 11)
    (b if where == "b" else a)[3, 2] = bad
    with pytest.raises(ValueError, match="contain NaN or inf"):
        _ops.threshold_pairs(a.cuda(), None if where == "self" else b.cuda(), 0.5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"a \[2, 8\] and b \[3, 7\] must have the same embedding dimension"):
        _ops.threshold_pairs(torch.randn(2, 8, device="cuda"), torch.randn(3, 7, device="cuda"), 0.5)
    with pytest.raises(ValueError, match="a is on cuda.* but b is on cpu"):
        _ops.threshold_pairs(torch.randn(2, 8, device="cuda"), torch.randn(3, 8), 0.5)


def test_non_contiguous_and_deterministic():
    a = planted(24, 900, 12).t().cuda()  # [900, 24] with feature stride 900
    b = planted(600, 48, 13)[:, ::2].cuda()
    b[:100] = a[:100] * 2
    for bb in (None, b):
        first = check(a, bb, 0.4)
        again = _ops.threshold_pairs(a, bb, 0.4)
        assert all(torch.equal(x, y) for x, y in zip(first, again))


def test_runs_on_the_current_stream():
    a = cuda_planted(3000, 16, 14, copies=300)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = _ops.threshold_pairs(a, None, 0.8)
    stream.synchronize()
    assert_same_pairs(got, a, None, 0.8, tol=TOL)


@pytest.mark.parametrize("self_pairs", [True, False])
def test_opcheck(self_pairs):
    a = cuda_planted(30, 16, 16, copies=10)
    b = None if self_pairs else cuda_planted(70, 16, 17, source=a.cpu(), copies=20)
    torch.library.opcheck(torch.ops.sentfuse.threshold_pairs.default, (a, b, 0.6))
    torch.library.opcheck(torch.ops.sentfuse.threshold_pairs.default, (a, b, 0.2), dict(max_pairs=5))
