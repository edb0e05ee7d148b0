"""CUDA cosine_topk against reference.cosine_topk (run on CPU in fp32 from the same stored values)."""

from __future__ import annotations

import pytest
import torch

from sentfuse import _ops, reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    pytest.mark.skipif(not _ops.WITH_CUDA, reason="sentfuse was built without its CUDA kernels"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32 from the same stored values; only summation order differs.
TOL = 5e-5
KS = [1, 2, 7, 31, 64, 100, 255, 256, 511, 700, 1023, 1024, 1025, 2500]


def embeddings(rows: int, dim: int, dtype: torch.dtype, seed: int, duplicates: int = 0, zeros: int = 0):
    """Random unit-ish rows with some exact duplicate rows and zero rows, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    if duplicates and rows > 1:
        src = torch.randint(0, rows, (duplicates,), generator=g)
        dst = torch.randint(0, rows, (duplicates,), generator=g)
        x[dst] = x[src]
    if zeros and rows:
        x[torch.randint(0, rows, (zeros,), generator=g)] = 0
    return x.to(dtype).cuda()


def integer_embeddings(rows: int, dim: int, dtype: torch.dtype, seed: int, distinct: int = 6):
    """Rows drawn from a few small-integer vectors (one of them zero): every score is computed exactly,
    so GPU and CPU agree bit for bit and ties are real."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-2, 3, (distinct, dim), generator=g).float()
    base[0] = 0
    return base[torch.randint(0, distinct, (rows,), generator=g)].to(dtype).cuda()


def run_reference(queries, corpus, k, chunk: int = 512, **kw):
    """reference.cosine_topk on CPU in fp32, a chunk of queries at a time (query_offset moves with it)."""
    q, c = queries.float().cpu(), corpus.float().cpu()
    offset = kw.pop("query_offset", 0)
    parts = [
        reference.cosine_topk(q[i : i + chunk], c, k, query_offset=offset + i, **kw) for i in range(0, len(q), chunk)
    ]
    if not parts:
        return reference.cosine_topk(q, c, k, query_offset=offset, **kw)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def cosine(queries, corpus, rows, metric):
    """fp64 scores of the given query rows against every corpus row."""
    q, c = queries.double().cpu()[rows], corpus.double().cpu()
    s = q @ c.T
    if metric == "cosine":
        s = torch.nan_to_num(s / (q.norm(dim=1, keepdim=True) * c.norm(dim=1)), nan=0.0)
    return s


def check_topk(queries, corpus, k, out, *, metric="cosine", exclude_self=False, min_score=None, query_offset=0,
               corpus_offset=0):
    scores, indices = out
    kw = dict(metric=metric, exclude_self=exclude_self, min_score=min_score, query_offset=query_offset,
              corpus_offset=corpus_offset)
    ref_scores, ref_indices = run_reference(queries, corpus, k, **kw)
    m, n = queries.shape[0], corpus.shape[0]
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert scores.device == queries.device and indices.device == queries.device
    assert scores.shape == ref_scores.shape == (m, min(k, n)) and indices.shape == scores.shape
    scores, indices = scores.cpu(), indices.cpu()
    valid = indices >= 0
    assert torch.equal(scores == float("-inf"), ~valid), "padding must be exactly (-inf, -1)"
    assert torch.isfinite(scores[valid]).all()
    if scores.shape[1] > 1:
        assert (scores[:, :-1] >= scores[:, 1:]).all(), "best first"
        same = (scores[:, 1:] == scores[:, :-1]) & valid[:, 1:]
        assert (indices[:, 1:][same] > indices[:, :-1][same]).all(), "equal scores: lower index first"
    for row in range(m):
        picked = indices[row][valid[row]]
        assert picked.unique().numel() == picked.numel(), f"duplicate indices in row {row}"
    # How many survive: exact without min_score; with it, only scores within TOL of min_score may differ.
    count, ref_count = valid.sum(1), (ref_indices >= 0).sum(1)
    if min_score is None:
        assert torch.equal(count, ref_count)
    else:
        full = torch.tensor(0.0)
        if m and n:
            full = cosine(queries, corpus, torch.arange(m), metric)
            if exclude_self:
                r = torch.arange(m).unsqueeze(1) + query_offset
                full = full.masked_fill(r == torch.arange(n) + corpus_offset, float("-inf"))
            lo = (full >= min_score + TOL).sum(1).clamp(max=scores.shape[1])
            hi = (full >= min_score - TOL).sum(1).clamp(max=scores.shape[1])
            assert ((count >= lo) & (count <= hi)).all()
        assert (scores[valid] >= min_score - TOL).all()
    both = valid & (ref_indices >= 0)
    torch.testing.assert_close(scores[both], ref_scores[both], atol=TOL, rtol=0)
    # Indices may differ from the reference only on (near-)ties: each must score what it was reported with.
    for start in range(0, m, 128):
        rows = torch.arange(start, min(start + 128, m))
        local = indices[rows] - corpus_offset
        mask = valid[rows]
        assert ((local >= 0) & (local < n))[mask].all()
        got = cosine(queries, corpus, rows, metric).gather(1, local.clamp(min=0, max=max(n - 1, 0)))
        torch.testing.assert_close(got[mask].float(), scores[rows][mask], atol=TOL, rtol=0)
        if exclude_self:
            assert (local + corpus_offset != rows.unsqueeze(1) + query_offset)[mask].all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("k", KS)
def test_matches_reference(dtype, metric, k):
    queries = embeddings(37, 48, dtype, seed=k, zeros=2)
    corpus = embeddings(5003, 48, dtype, seed=k + 1, duplicates=300, zeros=3)
    corpus[:5] = queries[:5]  # exact self-matches and cross duplicates
    out = _ops.cosine_topk(queries, corpus, k, metric=metric)
    check_topk(queries, corpus, k, out, metric=metric)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("k", [1, 3, 64, 1000, 1024, 1100, 3001, 5000])
def test_exact_ties(dtype, metric, exclude_self, k):
    queries = integer_embeddings(45, 24, dtype, seed=k)
    corpus = integer_embeddings(3001, 24, dtype, seed=k + 7)
    kw = dict(metric=metric, exclude_self=exclude_self, query_offset=3, corpus_offset=1)
    scores, indices = _ops.cosine_topk(queries, corpus, k, **kw)
    ref_scores, ref_indices = run_reference(queries, corpus, k, **kw)
    assert torch.equal(scores.cpu(), ref_scores)
    assert torch.equal(indices.cpu(), ref_indices)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "m,k", [(3, 10), (3, 1024), (19, 100), (300, 17), (2100, 64), (2100, 1024), (5, 1500)], ids=str
)
def test_large_corpus_spans_tiles(dtype, m, k):
    # 2100 rows pass the 2048-row query tile; with few rows each tile row is split into slices and merged.
    queries = embeddings(m, 32, dtype, seed=m + k)
    corpus = embeddings(70_001, 32, dtype, seed=m + k + 1, duplicates=2000, zeros=5)
    out = _ops.cosine_topk(queries, corpus, k)
    check_topk(queries, corpus, k, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 50, 1024, 1300])
@pytest.mark.parametrize("min_score", [None, 0.25, 0.6, 2.0, -5.0])
@pytest.mark.parametrize("offsets", [(0, 0), (100, 0), (0, 50), (1000, 1070)], ids=str)
def test_exclude_self_and_min_score(dtype, k, min_score, offsets):
    query_offset, corpus_offset = offsets
    corpus = embeddings(3000, 16, dtype, seed=k, duplicates=100, zeros=2)
    # Queries are corpus rows query_offset - corpus_offset onwards, so exclude_self removes real self-matches.
    start = max(query_offset - corpus_offset, 0)
    queries = corpus[start : start + 70].clone()
    kw = dict(exclude_self=True, min_score=min_score, query_offset=query_offset, corpus_offset=corpus_offset)
    out = _ops.cosine_topk(queries, corpus, k, **kw)
    check_topk(queries, corpus, k, out, **kw)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("k", [1, 10, 100, 500, 1000, 1024, 2000])
@pytest.mark.parametrize("data", ["clustered", "random"])
@pytest.mark.parametrize("kw", [{}, dict(exclude_self=True, min_score=0.3, query_offset=5)], ids=str)
def test_bf16_rescore_is_exact(metric, k, data, kw):
    if data == "random":
        # Dense score distribution: most queries cannot prove their margin and go back to the exact path.
        corpus = embeddings(20_011, 64, torch.float32, seed=k, duplicates=500, zeros=3)
        queries = embeddings(150, 64, torch.float32, seed=k + 1)
    else:
        # Clear neighbours: the margin usually proves the bf16 stage kept every answer.
        g = torch.Generator().manual_seed(k)
        centers = torch.nn.functional.normalize(torch.randn(300, 64, generator=g), dim=1)
        corpus = centers.repeat_interleave(60, 0) + 0.05 * torch.randn(18_000, 64, generator=g)
        corpus = torch.nn.functional.normalize(corpus, dim=1).cuda()
        queries = corpus[::97].clone() + 0.01
    exact = _ops.cosine_topk(queries, corpus, k, metric=metric, **kw)
    fast = _ops.cosine_topk(queries, corpus, k, metric=metric, bf16_rescore=True, **kw)
    check_topk(queries, corpus, k, fast, metric=metric, **kw)
    # Same answer as the exact path: scores to fp32 rounding, indices wherever scores are not near-tied.
    fast_scores, exact_scores = fast[0].cpu(), exact[0].cpu()
    both = torch.isfinite(fast_scores) & torch.isfinite(exact_scores)
    torch.testing.assert_close(fast_scores[both], exact_scores[both], atol=TOL, rtol=0)
    # The last column may tie with a row neither returned, so it is left to check_topk.
    gaps = (exact_scores[:, 1:] - exact_scores[:, :-1]).abs()
    clear = both.clone()
    clear[:, 1:] &= gaps > TOL
    clear[:, :-1] &= gaps > TOL
    clear[:, -1] = False
    assert torch.equal(fast[1].cpu()[clear], exact[1].cpu()[clear])


def test_bf16_rescore_on_16bit_inputs():
    queries = embeddings(20, 32, torch.float16, seed=1)
    corpus = embeddings(4000, 32, torch.float16, seed=2)
    out = _ops.cosine_topk(queries, corpus, 20, bf16_rescore=True)
    check_topk(queries, corpus, 20, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["queries", "corpus"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bf16_rescore", [False, True])
def test_nonfinite_raises(dtype, where, bad, bf16_rescore):
    queries = embeddings(8, 16, dtype, seed=3)
    corpus = embeddings(500, 16, dtype, seed=4)
    (queries if where == "queries" else corpus)[3, 5] = bad
    with pytest.raises((ValueError, RuntimeError), match="NaN or inf"):
        _ops.cosine_topk(queries, corpus, 5, bf16_rescore=bf16_rescore)


def test_dim_mismatch_raises():
    with pytest.raises(ValueError, match="embedding dimension"):
        _ops.cosine_topk(torch.randn(3, 8, device="cuda"), torch.randn(5, 9, device="cuda"), 2)


def test_mixed_dtype_raises():
    with pytest.raises(TypeError):
        _ops.cosine_topk(torch.randn(3, 8, device="cuda"), torch.randn(5, 8, device="cuda").half(), 2)


@pytest.mark.parametrize("m,n,k", [(0, 10, 3), (4, 0, 3), (4, 10, 0), (0, 0, 0), (1, 1, 1), (1, 1, 5), (3, 2, 4)])
def test_empty_and_tiny(m, n, k):
    queries, corpus = embeddings(m, 8, torch.float32, seed=5), embeddings(n, 8, torch.float32, seed=6)
    out = _ops.cosine_topk(queries, corpus, k, exclude_self=True)
    assert out[0].shape == out[1].shape == (m, min(k, n))
    check_topk(queries, corpus, k, out, exclude_self=True)


def test_all_candidates_filtered_pads():
    queries = embeddings(4, 8, torch.float32, seed=7)
    corpus = embeddings(30, 8, torch.float32, seed=8)
    scores, indices = _ops.cosine_topk(queries, corpus, 10, min_score=1.5)
    assert (scores.cpu() == float("-inf")).all() and (indices.cpu() == -1).all()


def test_noncontiguous_inputs():
    queries = embeddings(24, 40, torch.float16, seed=9).T.contiguous().T
    corpus = embeddings(2000, 80, torch.float16, seed=10)[:, ::2]
    assert not queries.is_contiguous() and not corpus.is_contiguous()
    out = _ops.cosine_topk(queries, corpus, 33)
    check_topk(queries, corpus, 33, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    queries = embeddings(5, 16, dtype, seed=11)
    corpus = embeddings(300, 16, dtype, seed=12)
    op = torch.ops.sentfuse.cosine_topk.default
    torch.library.opcheck(op, (queries, corpus, 7))
    torch.library.opcheck(op, (queries, corpus, 400), dict(exclude_self=True, min_score=0.1, corpus_offset=2))
    torch.library.opcheck(op, (queries, corpus, 1100), dict(metric="dot", bf16_rescore=True))
