"""cosine_topk's bf16 scan on the CPU (bf16_rescore=True) at the edges of its micro-kernel's blocks.

On a CPU with AMX or AVX512-BF16 the scan scores 32 x 32 blocks of packed bf16 unit rows (csrc/cpu/amx_tiles.cpp:
tiles or vector dot products) in corpus chunks of 256 rows; elsewhere the same scan runs on ATen's bf16 GEMM.
Either way the answer is the exact fp32 one: checked against reference.py on shapes that are not multiples of any
block, ties and near-ties, k beyond the candidates, and non-finite inputs in a late chunk. The last tests run the
bf16 cases again with SENTFUSE_CPU_BLOCKS=off (the ATen path) and, on AMX CPUs that have AVX512-BF16 too,
SENTFUSE_CPU_BLOCKS=avx512_bf16 (the vector blocks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentfuse import _C, _ops, cpu_features, reference
from test_topk import assert_same_topk, normal

TESTS = Path(__file__).resolve().parent


def bf16_topk(queries, corpus, k, **kwargs):
    return _ops.cosine_topk(queries, corpus, k, bf16_rescore=True, **kwargs)


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (31, 33, 17), (33, 257, 33), (70, 600, 64), (5, 1100, 384)])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_block_edges_match_the_reference(m, n, d, metric, dtype):
    queries, corpus = normal(m, d, 50, dtype), normal(n, d, 51, dtype)
    for k in (1, 7, n + 3):
        got = bf16_topk(queries, corpus, k, metric=metric)
        expected = reference.cosine_topk(queries, corpus, k, metric=metric)
        scale = expected[0][torch.isfinite(expected[0])].abs().max().clamp(min=1).item()  # dot scores: fp32 relative
        assert_same_topk(got, expected, atol=2e-6 * scale)


def test_last_bit_near_ties_are_ranked_by_their_fp32_scores():
    """Rows that differ from a base row in the last bits of a few features: far below bf16's resolution, so
    only the fp32 rescoring can order them; every returned row must be among the reference's best."""
    g = torch.Generator().manual_seed(52)
    base = torch.nn.functional.normalize(torch.randn(4, 96, generator=g), dim=1)
    corpus = torch.randn(900, 96, generator=g)
    for c in range(4):
        rows = torch.arange(c, 900, 4)[:60]  # spread over chunks and blocks
        bits = torch.randint(-3, 4, (60, 96), generator=g, dtype=torch.int32)
        corpus[rows] = (base[c].view(torch.int32) + bits).view(torch.float32)
    expected = reference.cosine_topk(base, corpus, 40)
    got = bf16_topk(base, corpus, 40)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=0)
    full = reference.cosine_topk(base, corpus, 900)[0]
    for q in range(4):
        scores = (torch.nn.functional.normalize(corpus, dim=1) @ base[q])[got[1][q]]
        assert (scores >= full[q, 39] - 1e-6).all()
        assert got[1][q].unique().numel() == 40


def test_exact_ties_across_chunks_keep_the_lowest_indices():
    base = normal(3, 40, 53)
    corpus = torch.cat([normal(1000, 40, 54), base.repeat(300, 1)])  # 300 copies each, rows 1000... in 4 chunks
    got = bf16_topk(base, corpus, 50, exclude_self=True, query_offset=1000)
    for q in range(3):
        assert got[1][q].tolist() == [1000 + q + 3 * t for t in range(1, 51)]


def test_all_equal_scores_and_k_beyond_the_candidates():
    _, indices = bf16_topk(torch.ones(40, 8), torch.ones(700, 8), 5)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 40
    queries, corpus = normal(40, 24, 55), normal(500, 24, 56)
    got = bf16_topk(queries, corpus, 300, min_score=0.3)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, 300, min_score=0.3))
    assert (got[1][:, -1] == -1).all()


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_near_ties_after_rising_scores_prune_the_survivors(metric):
    """Corpus rows ever closer to the query, then many rows within the bf16 bound of the best: each one reaches the
    bar when it is seen, so every thread's survivor list passes its first prune (4,096) while it holds the answer,
    and the prunes must keep exactly what can still win."""
    rising, near, d = 10000, 10000, 64
    q = normal(2, d, 61)
    g = torch.Generator().manual_seed(63)
    angle = torch.cat([torch.linspace(1.5, 0.3, rising), 0.3 + 0.002 * torch.rand(near, generator=g)])[:, None]
    side = torch.nn.functional.normalize(normal(rising + near, d, 62), dim=1)
    corpus = angle.cos() * torch.nn.functional.normalize(q[:1], dim=1) + angle.sin() * side
    if metric == "dot":
        corpus = corpus * (1 + 0.01 * torch.rand(rising + near, 1, generator=g))
    got = bf16_topk(q, corpus, 20, metric=metric)
    expected = reference.cosine_topk(q, corpus, 20, metric=metric)
    assert_same_topk(got, expected, atol=2e-6 * max(1.0, expected[0].abs().max().item()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("row", [0, 999])
def test_non_finite_in_any_chunk_raises(bad, row):
    corpus = normal(1000, 16, 57)
    corpus[row, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        bf16_topk(normal(3, 16, 58), corpus, 4)


def test_threads_agree():
    queries, corpus = normal(100, 48, 59), normal(3000, 48, 60)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = bf16_topk(queries, corpus, 25, metric="dot")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single[0], bf16_topk(queries, corpus, 25, metric="dot")[0])


def test_block_unit_is_the_kernels_choice():
    assert cpu_features.bf16_block_unit() == (None if _C.cpu_block_unit() == "none" else _C.cpu_block_unit())


def test_block_unit_env_is_checked(monkeypatch):
    monkeypatch.setenv(cpu_features.BLOCKS_ENV, "tiles")
    with pytest.raises(ValueError, match="SENTFUSE_CPU_BLOCKS"):
        cpu_features.bf16_block_unit()


def run_again(blocks: str, expected_unit: str) -> None:
    """This file's other tests in a process whose blocks are SENTFUSE_CPU_BLOCKS=blocks."""
    env = dict(os.environ, **{cpu_features.BLOCKS_ENV: blocks})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not passes_the_same_tests",
         str(TESTS / "test_topk_amx.py")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
    unit = subprocess.run([sys.executable, "-c", "from sentfuse import _C; print(_C.cpu_block_unit())"], env=env,
                          capture_output=True, text=True, timeout=300).stdout.strip()
    assert unit == expected_unit


def test_aten_bf16_path_passes_the_same_tests():
    run_again("off", "none")


@pytest.mark.skipif(cpu_features.bf16_block_unit() != "amx" or not cpu_features.BF16_VECTOR_FLAGS
                    <= cpu_features.cpu_flags(), reason="the vector blocks already ran above (or cannot run here)")
def test_vector_blocks_pass_the_same_tests():
    run_again("avx512_bf16", "avx512_bf16")
