"""cosine_topk on every device against the brute-force reference (full score matrix + stable sort, on CPU).

The first part runs every case on every device; the second holds the cases that exercise the CUDA
kernel's own paths (selection queue sizes around k, tiles and slices, the bf16 rescoring proof). Argument
errors: test_op_errors.py; random inputs: test_op_properties.py.
"""

from __future__ import annotations

import pytest
import torch

from cpu_paths import FEATURE_SETS, spy_on_path
from op_devices import cuda_only, device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_same_topk(got, expected, atol=1e-5):
    """Scores equal within atol; indices equal except where scores tie; no duplicates per row."""
    (gs, gi), (es, ei) = got, expected
    assert gs.dtype == torch.float32 and gi.dtype == torch.int64
    assert gs.shape == es.shape and gi.shape == ei.shape
    torch.testing.assert_close(gs, es, atol=atol, rtol=0)
    for row_s, row_i, ref_s, ref_i in zip(gs, gi, es, ei):
        valid = row_i[row_i >= 0]
        assert valid.unique().numel() == valid.numel(), "duplicate index in a row"
        differs = row_i != ref_i
        if differs.any():
            # Positions may differ only inside a run of (near-)tied scores: compare as sets per tie group.
            for pos in differs.nonzero().flatten().tolist():
                tied = (ref_s - ref_s[pos]).abs() <= atol
                assert int(row_i[pos]) in set(ref_i[tied].tolist()) or ref_s[pos] <= ref_s[-1] + atol, (
                    f"index {row_i[pos]} at {pos} is not tied with the reference's {ref_i[pos]}")


def topk_on(device, queries, corpus, k, **kwargs):  # noqa: F811
    """cosine_topk run on `device`, its results brought back to the CPU."""
    out = _ops.cosine_topk(queries.to(device), corpus.to(device), k, **kwargs)
    assert all(t.device.type == device for t in out)
    return tuple(t.cpu() for t in out)


def normal(rows, dim, seed, dtype=torch.float32):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


# None is this CPU's default path (cpu_features.topk_bf16_default), False forces fp32 tiles.
PATHS = [None, False]


@pytest.mark.parametrize("k", [1, 2, 7, 10, 64, 100, 333, 1024])
@pytest.mark.parametrize("bf16_rescore", PATHS)
def test_every_k_small_cases(device, k, bf16_rescore):  # noqa: F811
    queries, corpus = normal(37, 24, 0), normal(1100, 24, 1)  # neither a multiple of any tile
    got = topk_on(device, queries, corpus, k, bf16_rescore=bf16_rescore)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5000), (16, 3001), (131, 1537), (300, 513)])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("bf16_rescore", PATHS)
def test_shapes_and_dtypes(device, dtype, shape, metric, bf16_rescore):  # noqa: F811
    m, n = shape
    queries, corpus = normal(m, 67, 2, dtype), normal(n, 67, 3, dtype)
    if metric == "dot":
        queries = torch.nn.functional.normalize(queries.float(), dim=1).to(dtype)
        corpus = torch.nn.functional.normalize(corpus.float(), dim=1).to(dtype)
    got = topk_on(device, queries, corpus, 10, metric=metric, bf16_rescore=bf16_rescore)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, 10, metric=metric))


def test_duplicates_and_ties_keep_the_lower_index_first(device):  # noqa: F811
    base = normal(50, 16, 4)
    corpus = torch.cat([base, base, base[:10]])  # rows j, j + 50 (and j + 100) are identical
    got_s, got_i = topk_on(device, base[:10], corpus, 3)
    for q in range(10):
        assert got_i[q].tolist() == [q, q + 50, q + 100]
        assert torch.allclose(got_s[q], torch.ones(3), atol=1e-5)
    assert_same_topk((got_s, got_i), reference.cosine_topk(base[:10], corpus, 3))


def test_all_equal_scores_pick_lowest_indices(device):  # noqa: F811
    corpus = torch.ones(2000, 8)
    _, indices = topk_on(device, torch.ones(3, 8), corpus, 5)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 3


def test_exclude_self_with_offsets(device):  # noqa: F811
    data = normal(700, 20, 5)
    got = topk_on(device, data, data, 5, exclude_self=True)
    assert not (got[1] == torch.arange(700).unsqueeze(1)).any()
    assert_same_topk(got, reference.cosine_topk(data, data, 5, exclude_self=True))
    # Query rows 100..199 of the set against corpus rows 150..699, indices reported globally.
    kwargs = dict(exclude_self=True, query_offset=100, corpus_offset=150)
    got = topk_on(device, data[100:200], data[150:], 4, **kwargs)
    assert_same_topk(got, reference.cosine_topk(data[100:200], data[150:], 4, **kwargs))
    assert got[1].min() >= 150


@pytest.mark.parametrize("min_score", [-1.0, 0.0, 0.25, 0.6, 2.0])
def test_min_score_pads_with_minus_one(device, min_score):  # noqa: F811
    queries, corpus = normal(40, 12, 6), normal(900, 12, 7)
    got = topk_on(device, queries, corpus, 50, min_score=min_score)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, 50, min_score=min_score))
    scores, indices = got
    assert ((indices == -1) == torch.isneginf(scores)).all()
    assert (scores[indices >= 0] >= min_score).all()


def test_k_larger_than_corpus_and_zero_k(device):  # noqa: F811
    queries, corpus = normal(4, 8, 8), normal(6, 8, 9)
    scores, indices = topk_on(device, queries, corpus, 10)
    assert scores.shape == (4, 6) and sorted(indices[0].tolist()) == list(range(6))
    scores, indices = topk_on(device, queries, corpus, 6, exclude_self=True)
    assert (indices[:, -1] == -1).all() and torch.isneginf(scores[:, -1]).all()
    assert topk_on(device, queries, corpus, 0)[0].shape == (4, 0)


def test_empty_inputs(device):  # noqa: F811
    assert topk_on(device, torch.randn(0, 8), torch.randn(5, 8), 3)[1].shape == (0, 3)
    scores, indices = topk_on(device, torch.randn(2, 8), torch.randn(0, 8), 3)
    assert scores.shape == (2, 0) and indices.shape == (2, 0)


def test_zero_vectors_score_zero(device):  # noqa: F811
    queries = torch.zeros(2, 8)
    queries[1, 0] = 1
    corpus = torch.zeros(5, 8)
    corpus[3, 0] = 2
    scores, indices = topk_on(device, queries, corpus, 5)
    assert not torch.isnan(scores).any()
    assert torch.equal(scores[0], torch.zeros(5)) and indices[0].tolist() == [0, 1, 2, 3, 4]
    assert indices[1, 0] == 3 and scores[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["queries", "corpus"])
@pytest.mark.parametrize("bf16_rescore", [False, True])
def test_non_finite_input_raises(device, bad, where, bf16_rescore):  # noqa: F811
    queries, corpus = normal(5, 8, 10), normal(600, 8, 11)
    (queries if where == "queries" else corpus)[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        topk_on(device, queries, corpus, 3, bf16_rescore=bf16_rescore)


@pytest.mark.parametrize("kwargs", [{}, {"metric": "dot"}, {"exclude_self": True}, {"min_score": 0.3}])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_bf16_rescore_returns_the_fp32_answer(device, kwargs, k):  # noqa: F811
    queries, corpus = normal(60, 64, 18), normal(5000, 64, 19)
    corpus[100:200] = corpus[100] + 0.01 * normal(100, 64, 20)  # a dense cluster: many near-ties
    queries[:5] = corpus[100:105]
    if kwargs.get("metric") == "dot":
        queries = torch.nn.functional.normalize(queries, dim=1)
        corpus = torch.nn.functional.normalize(corpus, dim=1)
    got = topk_on(device, queries, corpus, k, bf16_rescore=True, **kwargs)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, k, **kwargs))
    if k == 100:  # bf16 alone gets a long list wrong: the rescoring is what makes it exact
        approx = reference.cosine_topk(queries.bfloat16(), corpus.bfloat16(), k, **kwargs)
        assert not torch.equal(approx[1], got[1])


@pytest.mark.parametrize("bf16_rescore", [False, True])
def test_rows_far_from_unit_norm(device, bf16_rescore):  # noqa: F811
    # Norms beyond the rescoring bound's range (2^-30 .. 2^30) send CUDA's 16-bit scan to its exact path
    # after the scan; 70 queries take the 16-bit scan in the first place.
    queries, corpus = normal(70, 32, 30), normal(3000, 32, 31)
    corpus[:100] *= 1e12
    corpus[100:200] *= 1e-12
    queries[:5] *= 1e-12
    got = topk_on(device, queries, corpus, 10, bf16_rescore=bf16_rescore)
    assert_same_topk(got, reference.cosine_topk(queries, corpus, 10))


def test_non_contiguous_corpus(device):  # noqa: F811
    corpus = normal(24, 900, 12).t()  # [900, 24] with feature stride 900
    queries = normal(10, 48, 13)[:, ::2]
    assert_same_topk(topk_on(device, queries, corpus, 8), reference.cosine_topk(queries, corpus, 8))


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kw", [{}, dict(exclude_self=True, min_score=0.2, query_offset=3)], ids=str)
def test_bf16_rescore_ties_and_near_ties(device, metric, dtype, kw):  # noqa: F811
    """The bf16 path forced on: exact ties keep the lower index, and rows closer than bf16 can tell apart
    (1e-3, far above fp32's rounding) come back in the fp32 order, across several corpus tiles."""
    g = torch.Generator().manual_seed(40)
    base = torch.nn.functional.normalize(torch.randn(8, 48, generator=g), dim=1)
    corpus = torch.nn.functional.normalize(torch.randn(3000, 48, generator=g), dim=1)
    for c, b in enumerate(base):
        rows = torch.arange(c, 3000, 8)[:40]  # spread over the corpus: 20 exact copies, 20 near ones
        near = b + 1e-3 * torch.arange(20).unsqueeze(1) * torch.randn(20, 48, generator=g)
        corpus[rows] = torch.cat([b.expand(20, 48), near])
    queries = torch.cat([base, base + 0.05 * torch.randn(8, 48, generator=g)])
    queries, corpus = queries.to(dtype), corpus.to(dtype)
    expected = reference.cosine_topk(queries, corpus, 30, metric=metric, **kw)
    got = topk_on(device, queries, corpus, 30, metric=metric, bf16_rescore=True, **kw)
    torch.testing.assert_close(got[0], expected[0], atol=2e-6, rtol=0)
    near_ties = (expected[0][:, 1:] - expected[0][:, :-1]).abs() > 1e-5  # gaps fp32 orders for certain
    assert torch.equal(got[1][:, :1], expected[1][:, :1])
    assert torch.equal(got[1][:, 1:][near_ties], expected[1][:, 1:][near_ties])
    exact_ties = expected[0] == expected[0][:, :1]
    assert torch.equal(got[1][exact_ties], expected[1][exact_ties]), "tied rows must come lowest index first"


@FEATURE_SETS
def test_cpu_path_per_feature_set(monkeypatch, flags, env, chosen):
    from sentfuse import cpu_features

    seen = spy_on_path(monkeypatch, flags, cpu_features.TOPK_ENV, env, "cosine_topk")
    assert cpu_features.topk_bf16_default() is chosen
    x = normal(cpu_features.BF16_MIN_QUERIES, 8, 41)
    _ops.cosine_topk(x, x, 2)  # bf16_rescore=None: the CPU's default
    _ops.cosine_topk(x, x, 2, bf16_rescore=not chosen)  # the argument wins
    # Fewer queries than a half block keep the fp32 tiles unless the environment forces bf16.
    _ops.cosine_topk(x[:1], x, 2)
    assert seen == [chosen, not chosen, chosen and env == "bf16"]


def test_cpu_path_env_is_checked(monkeypatch):
    from sentfuse import cpu_features

    monkeypatch.setenv(cpu_features.TOPK_ENV, "int8")
    with pytest.raises(ValueError, match="SENTFUSE_CPU_TOPK"):
        cpu_features.topk_bf16_default()


def test_single_thread_matches():
    queries, corpus = normal(200, 32, 14), normal(4000, 32, 15)
    expected = reference.cosine_topk(queries, corpus, 20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert_same_topk(_ops.cosine_topk(queries, corpus, 20), expected)
    finally:
        torch.set_num_threads(threads)


# CUDA kernel paths: selection queues, tiles and slices, the bf16 rescoring proof. Both sides compute in fp32
# from the same stored values; only summation order differs.
TOL = 5e-5
KS = [1, 31, 256, 1025, 2500]  # around the selection queue sizes


def embeddings(rows: int, dim: int, dtype: torch.dtype, seed: int, duplicates: int = 0, zeros: int = 0,
               device: str = "cuda"):
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
    return x.to(dtype).to(device)


def integer_embeddings(rows: int, dim: int, dtype: torch.dtype, seed: int, distinct: int = 6, device: str = "cuda"):
    """Rows drawn from a few small-integer vectors (one of them zero): every score is computed exactly,
    so GPU and CPU agree bit for bit and ties are real."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-2, 3, (distinct, dim), generator=g).float()
    base[0] = 0
    return base[torch.randint(0, distinct, (rows,), generator=g)].to(dtype).to(device)


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


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("k", KS)
def test_matches_reference_cuda(dtype, metric, k):
    queries = embeddings(37, 48, dtype, seed=k, zeros=2)
    corpus = embeddings(5003, 48, dtype, seed=k + 1, duplicates=300, zeros=3)
    corpus[:5] = queries[:5]  # exact self-matches and cross duplicates
    out = _ops.cosine_topk(queries, corpus, k, metric=metric)
    check_topk(queries, corpus, k, out, metric=metric)


def assert_exact_ties(m: int, n: int, dtype: torch.dtype, k: int, seed: int, **kw):
    """Integer rows on CUDA: scores and indices equal the reference's bit for bit, ties included."""
    queries = integer_embeddings(m, 24, dtype, seed=seed)
    corpus = integer_embeddings(n, 24, dtype, seed=seed + 7)
    kw.update(query_offset=3, corpus_offset=1)
    scores, indices = _ops.cosine_topk(queries, corpus, k, **kw)
    ref_scores, ref_indices = run_reference(queries, corpus, k, **kw)
    assert torch.equal(scores.cpu(), ref_scores)
    assert torch.equal(indices.cpu(), ref_indices)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("k", [1, 64, 1100, 4096, 4500])
def test_exact_ties_cuda(dtype, metric, exclude_self, k):
    # Shared-memory selection up to k = 4096, a sorted tile beyond.
    assert_exact_ties(45, 5001, dtype, k, seed=k, metric=metric, exclude_self=exclude_self)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("m,k", [(1, 1), (1, 1100), (8, 64)], ids=str)
def test_exact_ties_few_queries_cuda(dtype, metric, m, k):
    # At most 8 queries take the fused scan under "cosine" (dot products and corpus norms from one read of the
    # corpus), cuBLAS under "dot".
    assert_exact_ties(m, 3001, dtype, k, seed=m + k, metric=metric, exclude_self=True)


@cuda_only
@pytest.mark.parametrize("dtype,m,k", [(torch.float32, 3, 1024), (torch.bfloat16, 19, 100), (torch.float32, 2100, 64),
                                       (torch.float16, 5, 1500)], ids=str)
def test_large_corpus_spans_tiles_cuda(dtype, m, k):
    # 2100 rows pass the 2048-row query tile; with few rows each tile row is split into slices and merged.
    queries = embeddings(m, 32, dtype, seed=m + k)
    corpus = embeddings(40_001, 32, dtype, seed=m + k + 1, duplicates=2000, zeros=5)
    out = _ops.cosine_topk(queries, corpus, k)
    check_topk(queries, corpus, k, out)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("k", [1, 1300])
@pytest.mark.parametrize("min_score", [None, 0.25, 2.0])
@pytest.mark.parametrize("offsets", [(0, 0), (1000, 1070)], ids=str)
def test_exclude_self_and_min_score_cuda(dtype, k, min_score, offsets):
    query_offset, corpus_offset = offsets
    corpus = embeddings(3000, 16, dtype, seed=k, duplicates=100, zeros=2)
    # Queries are corpus rows query_offset - corpus_offset onwards, so exclude_self removes real self-matches.
    start = max(query_offset - corpus_offset, 0)
    queries = corpus[start : start + 70].clone()
    kw = dict(exclude_self=True, min_score=min_score, query_offset=query_offset, corpus_offset=corpus_offset)
    out = _ops.cosine_topk(queries, corpus, k, **kw)
    check_topk(queries, corpus, k, out, **kw)


@cuda_only
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("k", [10, 1024])
@pytest.mark.parametrize("data", ["clustered", "random"])
@pytest.mark.parametrize("kw", [{}, dict(exclude_self=True, min_score=0.3, query_offset=5)], ids=str)
def test_bf16_rescore_is_exact_cuda(metric, k, data, kw):
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


@cuda_only
def test_bf16_rescore_on_16bit_inputs_cuda():
    queries = embeddings(20, 32, torch.float16, seed=1)
    corpus = embeddings(4000, 32, torch.float16, seed=2)
    out = _ops.cosine_topk(queries, corpus, 20, bf16_rescore=True)
    check_topk(queries, corpus, 20, out)


@pytest.mark.parametrize("m,n,k", [(0, 10, 3), (4, 0, 3), (4, 10, 0), (0, 0, 0), (1, 1, 1), (1, 1, 5), (3, 2, 4)])
def test_empty_and_tiny(device, m, n, k):  # noqa: F811
    queries = embeddings(m, 8, torch.float32, seed=5, device=device)
    corpus = embeddings(n, 8, torch.float32, seed=6, device=device)
    out = _ops.cosine_topk(queries, corpus, k, exclude_self=True)
    assert out[0].shape == out[1].shape == (m, min(k, n))
    check_topk(queries, corpus, k, out, exclude_self=True)


def test_all_candidates_filtered_pads(device):  # noqa: F811
    queries = embeddings(4, 8, torch.float32, seed=7, device=device)
    corpus = embeddings(30, 8, torch.float32, seed=8, device=device)
    scores, indices = _ops.cosine_topk(queries, corpus, 10, min_score=1.5)
    assert (scores.cpu() == float("-inf")).all() and (indices.cpu() == -1).all()


def test_noncontiguous_inputs(device):  # noqa: F811
    queries = embeddings(24, 40, torch.float16, seed=9, device=device).T.contiguous().T
    corpus = embeddings(2000, 80, torch.float16, seed=10, device=device)[:, ::2]
    assert not queries.is_contiguous() and not corpus.is_contiguous()
    out = _ops.cosine_topk(queries, corpus, 33)
    check_topk(queries, corpus, 33, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(device, dtype):  # noqa: F811
    queries = embeddings(5, 16, dtype, seed=11, device=device)
    corpus = embeddings(300, 16, dtype, seed=12, device=device)
    op = torch.ops.sentfuse.cosine_topk.default
    torch.library.opcheck(op, (queries, corpus, 7))
    torch.library.opcheck(op, (queries, corpus, 400), dict(exclude_self=True, min_score=0.1, corpus_offset=2))
    torch.library.opcheck(op, (queries, corpus, 1100), dict(metric="dot", bf16_rescore=True))
