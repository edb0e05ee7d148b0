"""threshold_pairs on every device against the brute-force reference (full score matrix, mask, nonzero; CPU).

Argument errors: test_op_errors.py; random inputs: test_op_properties.py.
"""

from __future__ import annotations

import pytest
import torch

from op_devices import cuda_only, device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32 from the same stored values; only the order of operations differs (the CUDA
# kernel sums in a different order from the CPU's GEMM, hence more than one fp32 rounding of slack).
TOL = 5e-5


def planted(rows, dim, seed, dtype=torch.float32, source=None, copies=0, noise=0.05):
    """Random rows; `copies` of them (from `source`, else from themselves) replaced by noisy near-duplicates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    if copies and rows:
        src = source.float() if source is not None else x.clone()
        picked = torch.randint(0, src.shape[0], (copies,), generator=g)
        dst = torch.randperm(rows, generator=g)[:copies]
        scale = noise * torch.rand(copies, 1, generator=g)  # a spread of scores near 1
        x[dst] = src[picked] + scale * torch.randn(copies, dim, generator=g)
    return x.to(dtype)


def pairs_on(device, a, b, threshold, **kwargs):  # noqa: F811
    """threshold_pairs run on `device`, its results brought back to the CPU."""
    out = _ops.threshold_pairs(a.to(device), None if b is None else b.to(device), threshold, **kwargs)
    assert all(t.device.type == device for t in out)
    return tuple(t.cpu() for t in out)


def keys(rows, cols, num_cols):
    return rows * num_cols + cols


def assert_same_pairs(got, a, b, threshold, metric="cosine", max_pairs=None, tol=TOL):
    """Sorted, unique, every pair scoring >= threshold + tol found, none scoring < threshold - tol; scores close."""
    rows, cols, scores = got
    assert rows.dtype == cols.dtype == torch.int64 and scores.dtype == torch.float32
    assert rows.dim() == cols.dim() == scores.dim() == 1 and rows.shape == cols.shape == scores.shape
    a, b = a.cpu(), None if b is None else b.cpu()
    rows, cols, scores = rows.cpu(), cols.cpu(), scores.cpu()
    num_cols = a.shape[0] if b is None else b.shape[0]
    got_keys = keys(rows, cols, num_cols)
    assert (got_keys[1:] > got_keys[:-1]).all(), "pairs not strictly sorted by (row, col)"
    if b is None:
        assert (rows < cols).all()
    expected_scores = reference.pair_scores(a, b, rows, cols, metric=metric)
    assert (expected_scores >= threshold - tol).all(), "a pair scoring below the threshold"
    torch.testing.assert_close(scores, expected_scores, atol=tol, rtol=0)
    # Pairs scoring within tol of the threshold may round either way; those above it must be found. A cosine of
    # exactly 1 may round below 1, so none is required to pass a threshold of 1.
    hi = threshold + tol
    required = (0, 0, []) if metric == "cosine" and hi > 1.0 else reference.threshold_pairs(a, b, hi, metric=metric)
    required_keys = keys(required[0], required[1], num_cols) if len(required[2]) else got_keys[:0]
    if max_pairs is None:
        assert torch.isin(required_keys, got_keys).all(), "a qualifying pair is missing"
        return
    assert min(max_pairs, len(required_keys)) <= len(got_keys) <= max_pairs
    if len(required_keys) <= max_pairs:
        assert torch.isin(required_keys, got_keys).all(), "a qualifying pair is missing"
        return
    e_rows, e_cols, e_scores = reference.threshold_pairs(a, b, threshold, metric=metric, max_pairs=max_pairs)
    # The kept set may differ from the reference's only among scores tied (within tol) with the cutoff.
    expected_keys = keys(e_rows, e_cols, num_cols)
    if len(expected_keys):
        cutoff = e_scores.min()
        assert (scores[~torch.isin(got_keys, expected_keys)] <= cutoff + tol).all()
        assert (e_scores[~torch.isin(expected_keys, got_keys)] <= cutoff + tol).all()


# (N, M): M is None for a against itself. Tiles are 1024 rows x >= 4096 columns: the larger shapes span
# several tiles each way and are not multiples of either.
SHAPES = [(1, None), (2, None), (37, None), (1100, None), (4500, None), (1, 5000), (37, 1100), (1100, 4500),
          (3000, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_planted_near_duplicates(device, dtype, shape):  # noqa: F811
    n, m = shape
    a = planted(n, 24, 0, dtype, copies=n // 10)
    b = None if m is None else planted(m, 24, 1, dtype, source=a, copies=min(m, n) // 3)
    for threshold in (0.9, 0.5):
        assert_same_pairs(pairs_on(device, a, b, threshold), a, b, threshold)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("self_pairs", [True, False])
def test_normalized_dot_product(device, dtype, self_pairs):  # noqa: F811
    a = torch.nn.functional.normalize(planted(1500, 32, 2, copies=200), dim=1).to(dtype)
    b = None if self_pairs else torch.nn.functional.normalize(planted(4200, 32, 3, source=a, copies=300), dim=1).to(dtype)
    assert_same_pairs(pairs_on(device, a, b, 0.85, metric="dot"), a, b, 0.85, metric="dot")
    # Unnormalized inputs with metric="dot": raw dot products, any finite threshold.
    a = planted(300, 8, 4, dtype, copies=30)
    b = None if self_pairs else planted(500, 8, 5, dtype, source=a, copies=50) * 3
    assert_same_pairs(pairs_on(device, a, b, 5.0, metric="dot"), a, b, 5.0, metric="dot", tol=1e-4)


def test_matches_reference_exactly_in_fp32():
    a = planted(1100, 16, 5, copies=100)
    b = planted(4500, 16, 6, source=a, copies=400)
    for bb in (None, b):
        got, expected = _ops.threshold_pairs(a, bb, 0.8), reference.threshold_pairs(a, bb, 0.8)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        torch.testing.assert_close(got[2], expected[2], atol=TOL, rtol=0)


@pytest.mark.parametrize("max_pairs", [0, 1, 7, 100, 1000, 10**9])
@pytest.mark.parametrize("self_pairs", [True, False])
def test_max_pairs_keeps_the_best(device, max_pairs, self_pairs):  # noqa: F811
    a = planted(1100, 16, 7, copies=300)
    b = None if self_pairs else planted(4500, 16, 8, source=a, copies=500)
    # threshold 0.1 leaves far more pairs than max_pairs, so the running prune kicks in mid-scan.
    for threshold in (0.9, 0.1):
        got = pairs_on(device, a, b, threshold, max_pairs=max_pairs)
        assert_same_pairs(got, a, b, threshold, max_pairs=max_pairs)


def test_max_pairs_ties_go_to_smaller_row_col(device):  # noqa: F811
    a = torch.ones(4500, 4)  # every pair scores exactly the same
    rows, cols, scores = pairs_on(device, a, None, 0.5, max_pairs=3)
    assert rows.tolist() == [0, 0, 0] and cols.tolist() == [1, 2, 3]
    rows, cols, _ = pairs_on(device, a[:1100], a[:10].neg().clone(), -1.0, max_pairs=4)
    assert rows.tolist() == [0, 0, 0, 0] and cols.tolist() == [0, 1, 2, 3]
    b = torch.ones(5000, 4)
    b[4321] *= 2  # same direction: ties everywhere; max_pairs beyond one tile's worth of pairs
    rows, cols, _ = pairs_on(device, a[:50], b, 0.0, max_pairs=70000)
    assert rows.tolist() == sorted(rows.tolist()) and len(rows) == 70000
    assert rows[-1] == 13 and (rows < 14).all()


@pytest.mark.parametrize("self_pairs", [True, False])
def test_zero_vectors_score_zero(device, self_pairs):  # noqa: F811
    a = planted(40, 8, 9, copies=5)
    a[[3, 17]] = 0
    b = None if self_pairs else torch.cat([a[:20], torch.zeros(3, 8)])
    for threshold in (-0.5, 0.0, 0.5):
        got = pairs_on(device, a, b, threshold)
        assert not torch.isnan(got[2]).any()
        assert_same_pairs(got, a, b, threshold)
    rows, cols, scores = pairs_on(device, torch.zeros(3, 8), None, 0.0)
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 2, 2] and scores.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "a, b, max_pairs",
    [((0, 8), None, None), ((1, 8), None, None), ((0, 8), (5, 8), None), ((3, 8), (0, 8), None),
     ((0, 8), (0, 8), None), ((6, 8), None, 0), ((6, 8), (4, 8), 0)],
)
def test_empty_outputs(device, a, b, max_pairs):  # noqa: F811
    rows, cols, scores = pairs_on(device, torch.randn(a), None if b is None else torch.randn(b), -1.0,
                                              max_pairs=max_pairs)
    assert rows.shape == cols.shape == scores.shape == (0,)
    assert rows.dtype == cols.dtype == torch.int64 and scores.dtype == torch.float32


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf"), 1.0001, -1.5])
def test_threshold_validation(device, threshold):  # noqa: F811
    a = torch.randn(5, 8)
    with pytest.raises(ValueError, match="threshold"):
        pairs_on(device, a, None, threshold)
    if abs(threshold) < float("inf"):  # any finite value is a valid dot-product threshold
        assert_same_pairs(pairs_on(device, a, None, threshold, metric="dot"), a, None, threshold,
                          metric="dot")
    else:
        with pytest.raises(ValueError, match="threshold must be finite"):
            pairs_on(device, a, None, threshold, metric="dot")


def test_threshold_bounds_are_inclusive(device):  # noqa: F811
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    rows, cols, _ = pairs_on(device, a, None, 1.0)
    assert rows.tolist() == [0] and cols.tolist() == [1]
    assert len(pairs_on(device, a, None, -1.0)[0]) == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["a", "b", "self"])
def test_non_finite_input_raises(device, bad, where):  # noqa: F811
    a, b = planted(50, 8, 10), planted(600, 8, 11)
    (b if where == "b" else a)[3, 2] = bad
    with pytest.raises(ValueError, match="contain NaN or inf"):
        pairs_on(device, a, None if where == "self" else b, 0.5)


def test_non_contiguous_inputs(device):  # noqa: F811
    a = planted(24, 900, 12, copies=0).t()  # [900, 24] with feature stride 900
    b = planted(600, 48, 13)[:, ::2]
    b[:100] = a[:100] * 2
    for bb in (None, b):
        assert_same_pairs(pairs_on(device, a, bb, 0.4), a, bb, 0.4)


def test_single_thread_matches():
    a = planted(1100, 16, 14, copies=200)
    b = planted(4500, 16, 15, source=a, copies=500)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for bb in (None, b):
            assert_same_pairs(_ops.threshold_pairs(a, bb, 0.7), a, bb, 0.7)
            assert_same_pairs(_ops.threshold_pairs(a, bb, 0.2, max_pairs=500), a, bb, 0.2, max_pairs=500)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("self_pairs", [True, False])
def test_opcheck(device, self_pairs):  # noqa: F811
    a = planted(30, 16, 16, copies=10)
    b = None if self_pairs else planted(70, 16, 17, source=a, copies=20)
    a, b = a.to(device), None if b is None else b.to(device)
    torch.library.opcheck(torch.ops.sentfuse.threshold_pairs.default, (a, b, 0.6))
    torch.library.opcheck(torch.ops.sentfuse.threshold_pairs.default, (a, b, 0.2), dict(max_pairs=5))


# CUDA kernel paths: tiles are at most 2048 rows x 16384 columns, so (2100, 16500) spans two each way; at a low
# threshold the pairs found outgrow the running prune limit (4M) mid-scan.
@cuda_only
@pytest.mark.parametrize("max_pairs", [None, 7])
def test_tiles_and_running_prune_on_cuda(max_pairs):
    a = planted(2100, 16, 7, copies=300)
    b = planted(16500, 16, 8, source=a, copies=500)
    for threshold in (0.9, 0.1) if max_pairs else (0.9,):
        assert_same_pairs(pairs_on("cuda", a, b, threshold, max_pairs=max_pairs), a, b, threshold,
                          max_pairs=max_pairs)


@cuda_only
def test_max_pairs_ties_beyond_one_tile_on_cuda():
    rows, cols, _ = _ops.threshold_pairs(torch.ones(2100, 4, device="cuda"), torch.ones(17000, 4, device="cuda"), 0.0,
                                         max_pairs=70000)
    assert len(rows) == 70000 and (rows < 5).all() and rows[-1] == 4 and cols[-1] == 70000 - 4 * 17000 - 1


@cuda_only
def test_runs_on_the_current_stream_cuda():
    a = planted(3000, 16, 14, copies=300).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = _ops.threshold_pairs(a, None, 0.8)
    stream.synchronize()
    assert_same_pairs(got, a, None, 0.8)
