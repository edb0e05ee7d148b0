"""The GPU 16-bit scans' rounding bound (csrc/cuda/select/rescore_bound.h), checked on the CPU.

cosine_topk's 16-bit stage and threshold_pairs' fused scan keep every row whose 16-bit score is within this
bound of the cut, then rescore in fp32: exactness rests on the bound covering the real error. The header is
plain C++, so it is compiled here with the system compiler and compared with the error of the same 16-bit
scoring simulated in float64 (products exact, the tile rounded as the GPU rounds it). The margin proof
built on it is mirrored at the end: it must never accept a wrong top-k.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[1] / "csrc"
FP16_U, BF16_U = 2.0**-11, 2.0**-8
FP16_SUBNORMAL, BF16_SUBNORMAL = 2.0**-24, 2.0**-133


@pytest.fixture(scope="module")
def rescore_bound(tmp_path_factory):
    """rescore_bound(dim, copies_roundoff, tile_roundoff, tile_subnormal) -> (relative, absolute), from the header."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    tmp = tmp_path_factory.mktemp("rescore_bound")
    src, lib = tmp / "bound.cpp", tmp / "bound.so"
    src.write_text(
        '#include "cuda/select/rescore_bound.h"\n'
        'extern "C" void bound(long dim, double u, double v, double s, double* out) {\n'
        "  const auto b = sentfuse::select::rescore_bound(dim, u, v, s);\n"
        "  out[0] = b.relative;\n  out[1] = b.absolute;\n}\n"
    )
    subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-I", str(CSRC), str(src), "-o", str(lib)],
                   check=True)
    fn = ctypes.CDLL(str(lib)).bound
    fn.argtypes = [ctypes.c_long, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.POINTER(ctypes.c_double)]

    def call(dim, u, v, s):
        out = (ctypes.c_double * 2)()
        fn(dim, u, v, s, out)
        return out[0], out[1]

    return call


def rows(n: int, dim: int, seed: int) -> torch.Tensor:
    """fp32 rows that stress the rounding: random, all-equal components (no cancellation), a spread of
    magnitudes down to fp16's subnormals, and norms far from 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    x[: n // 4] = x[: n // 4].abs().mean(1, keepdim=True)  # every component equal and positive
    scales = torch.logspace(-7, 0, dim)[torch.randperm(dim, generator=g)]
    x[n // 4 : n // 2] *= scales  # components from 1e-7 (fp16 subnormal after normalizing) to 1
    return x * torch.logspace(-3, 3, n)[torch.randperm(n, generator=g)].unsqueeze(1)


def exact_cosines(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    q64, c64 = q.double(), c.double()
    return (q64 @ c64.T) / (q64.norm(dim=1, keepdim=True) * c64.norm(dim=1))


def tile(dots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A GEMM's exact sums as the tile stores them: rounded to fp32, then to the 16-bit dtype."""
    return dots.float().to(dtype).double()


@pytest.mark.parametrize("dim", [24, 384, 1024])
def test_unit_copies_bound_fp32_inputs(rescore_bound, dim):
    # fp32 inputs: fp16 copies of the unit rows, fp16 tiles; the bound is all relative (cosine units).
    relative, absolute = rescore_bound(dim, FP16_U, FP16_U, FP16_SUBNORMAL)
    assert absolute == 0.0
    q, c = rows(64, dim, 1), rows(1500, dim, 2)
    q_unit = (q / q.norm(dim=1, keepdim=True)).half().double()
    c_unit = (c / c.norm(dim=1, keepdim=True)).half().double()
    error = (tile(q_unit @ c_unit.T, torch.float16) - exact_cosines(q, c)).abs().max().item()
    assert error <= relative
    # Tight enough to prove margins: a few fp16 roundoffs, not orders of magnitude more.
    assert relative < 8 * FP16_U + 4 * dim * 2.0**-24


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [24, 384])
def test_unit_copies_bound_16bit_inputs(rescore_bound, dtype, dim):
    # 16-bit inputs under metric "cosine" take the fp32 path's copies: each stored value converts to fp32
    # exactly, so the same bound must cover the cosines of the stored values.
    relative, _ = rescore_bound(dim, FP16_U, FP16_U, FP16_SUBNORMAL)
    q = rows(64, dim, 5).to(dtype).float()
    c = rows(1500, dim, 6).to(dtype).float()
    keep = (q.norm(dim=1) > 0).unsqueeze(1) & (c.norm(dim=1) > 0)  # rows that underflowed to zero score 0
    q_unit = (q / q.norm(dim=1, keepdim=True)).nan_to_num().half().double()
    c_unit = (c / c.norm(dim=1, keepdim=True)).nan_to_num().half().double()
    error = (tile(q_unit @ c_unit.T, torch.float16) - exact_cosines(q, c))[keep].abs().max().item()
    assert error <= relative


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [24, 384])
def test_raw_tiles_bound_16bit_inputs(rescore_bound, dtype, dim):
    # 16-bit inputs under metric "dot" are multiplied as stored; the tile rounds the dot product (dot-product units).
    u, sub = (FP16_U, FP16_SUBNORMAL) if dtype == torch.float16 else (BF16_U, BF16_SUBNORMAL)
    relative, absolute = rescore_bound(dim, 0.0, u, sub)
    q, c = rows(64, dim, 3), rows(1500, dim, 4)
    # Rows scaled into the 16-bit range, then stored in it: these stored values are the inputs.
    q = (q / q.abs().amax(1, keepdim=True)).to(dtype).double()
    c = (c / c.abs().amax(1, keepdim=True) * 8).to(dtype).double()
    exact = q @ c.T
    allowed = relative * q.norm(dim=1, keepdim=True) * c.norm(dim=1) + absolute
    assert ((tile(exact, dtype) - exact).abs() <= allowed).all()


def test_fused_scan_bound_has_no_tile_term(rescore_bound):
    # threshold_pairs' fused scan compares fp32 accumulators: no tile rounding, no absolute part.
    fused, absolute = rescore_bound(384, 0.0, 0.0, 0.0)
    tiled, _ = rescore_bound(384, 0.0, FP16_U, FP16_SUBNORMAL)
    assert absolute == 0.0 and fused < tiled - 0.9 * FP16_U


def test_margin_proof_never_accepts_a_wrong_topk(rescore_bound):
    """cosine_topk's proof (cuda/topk.cu rescore_check_kernel), mirrored: keep the `width` best 16-bit scores,
    rescore them, and accept the top-k when worst kept + bound < k-th rescored score. Clustered rows make
    near-ties; every accepted query must equal the float64 top-k."""
    dim, k, width = 64, 10, 74
    relative, _ = rescore_bound(dim, FP16_U, FP16_U, FP16_SUBNORMAL)
    g = torch.Generator().manual_seed(5)
    # Clusters of 20 (the 74th best lies outside: provable) and of 100 (near-ties: mostly not).
    centers = torch.randn(60, dim, generator=g)
    sizes = torch.tensor([20, 100]).repeat(30)
    c = centers.repeat_interleave(sizes, 0)
    c = c + 0.02 * torch.randn(c.shape, generator=g)
    q = c[::45] + 0.01 * torch.randn(c[::45].shape, generator=g)
    exact = exact_cosines(q, c)
    unit = lambda x: (x / x.norm(dim=1, keepdim=True)).half().double()  # noqa: E731
    approx = tile(unit(q) @ unit(c).T, torch.float16)
    kept_scores, kept = approx.topk(width, dim=1)
    rescored = exact.gather(1, kept).float().double()
    best = rescored.topk(k, dim=1)
    accepted = kept_scores[:, -1] + relative < best.values[:, -1]
    assert 0 < accepted.sum() < len(q), "on this data the proof must pass for some queries and fail for others"
    truth = exact.topk(k, dim=1).indices
    picked = kept.gather(1, best.indices)
    for row in torch.nonzero(accepted).flatten().tolist():
        assert set(picked[row].tolist()) == set(truth[row].tolist())


@pytest.mark.parametrize("clustered", [False, True], ids=["random", "near-ties"])
def test_seeded_filter_never_drops_a_top_k_row(rescore_bound, clustered):
    """cosine_topk's fused scan (cuda/topk_fused.cu), mirrored: the exact k-th best over a seed slice is the
    threshold, the fused filter compares fp32 accumulators of fp16 unit copies with twice the bound, and the
    rescored survivors' top-k must be the float64 top-k, with few survivors on random data."""
    dim, k, n, seed_rows = 48, 10, 6000, 1500
    relative, _ = rescore_bound(dim, FP16_U, 0.0, 0.0)
    g = torch.Generator().manual_seed(11)
    if clustered:
        centers = torch.randn(30, dim, generator=g)
        c = centers.repeat_interleave(n // 30, 0) + 0.01 * torch.randn(n, dim, generator=g)
    else:
        c = torch.randn(n, dim, generator=g)
    q = c[::97] + 0.02 * torch.randn(c[::97].shape, generator=g)
    exact = exact_cosines(q, c)
    thresholds = exact[:, :seed_rows].float().double().topk(k, dim=1).values[:, -1:]
    unit = lambda x: (x / x.norm(dim=1, keepdim=True)).half().double()  # noqa: E731
    accumulators = (unit(q) @ unit(c).T).float().double()  # fp32 sums of exact fp16 products
    kept = accumulators + 2 * relative >= thresholds
    truth = exact.topk(k, dim=1)
    assert kept.gather(1, truth.indices).all(), "a top-k row was filtered out"
    tied = exact >= truth.values[:, -1:]  # rows tied with the k-th best may stand in for it
    assert kept[tied].all()
    survivors = kept.sum(1).float()
    assert survivors.min() >= k
    if not clustered:
        assert survivors.mean() < 4 * k * n / seed_rows, "the seed should leave about k * n / seed_rows rows"
    picked = exact.masked_fill(~kept, float("-inf")).topk(k, dim=1)
    torch.testing.assert_close(picked.values, truth.values, rtol=0, atol=0)
