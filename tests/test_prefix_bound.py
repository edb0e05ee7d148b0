"""prefix_bound.self_pairs (prefix bound + rescoring) against threshold_pairs' reference, and paraphrase mining's
cutoff path against its top-k path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_mining import assert_same_pairs as assert_same_mined
from test_mining import planted, squad  # noqa: F401  (squad is a fixture)
from test_pairs import assert_same_pairs

from sentfuse import reference
from sentfuse.search import paraphrase, prefix_bound


def unit(x):
    return torch.nn.functional.normalize(x.float(), dim=1)


def structured(rows, dim=64, rank=6, seed=0):
    """Unit rows near a rank-`rank` subspace, with near-duplicates: the case the prefix bound is for."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, rank, generator=g) @ torch.randn(rank, dim, generator=g)
    x += 0.3 * torch.randn(rows, dim, generator=g)
    x[rows // 2 :: 7] = x[: len(x[rows // 2 :: 7])] + 0.01 * torch.randn(len(x[rows // 2 :: 7]), dim, generator=g)
    return unit(x)


@pytest.mark.parametrize("prefix", [0, 1, 4, 16, 63])
@pytest.mark.parametrize("threshold", [0.95, 0.8, 0.5, -0.2])
def test_structured_rows_every_prefix(prefix, threshold):
    x = structured(700)
    assert_same_pairs(prefix_bound.self_pairs(x, threshold, prefix=prefix), x, None, threshold, metric="dot")


@pytest.mark.parametrize("prefix", [8, 48, 200])
@pytest.mark.parametrize("threshold", [0.9, 0.75, 0.6])
def test_real_embeddings(squad, prefix, threshold):  # noqa: F811
    x = unit(squad)
    got = prefix_bound.self_pairs(x, threshold, prefix=prefix)
    assert len(got[0]) > 10
    assert_same_pairs(got, x, None, threshold, metric="dot")


def test_random_rows_and_dtypes():
    """Rows without dominant directions: the bound lets most pairs through, and the answer is still exact."""
    x = unit(torch.randn(500, 32, generator=torch.Generator().manual_seed(1)))
    assert_same_pairs(prefix_bound.self_pairs(x, 0.3, prefix=8), x, None, 0.3, metric="dot")
    for dtype in (torch.float16, torch.bfloat16):
        xd = structured(400, seed=2).to(dtype)
        assert_same_pairs(prefix_bound.self_pairs(xd, 0.7, prefix=12), xd, None, 0.7, metric="dot")


def test_dot_products_of_unnormalized_rows():
    x = structured(600, seed=3) * torch.rand(600, 1, generator=torch.Generator().manual_seed(4)) * 5
    assert_same_pairs(prefix_bound.self_pairs(x, 4.0, prefix=10), x, None, 4.0, metric="dot")


def test_blocks_zero_rows_and_tiny_inputs(monkeypatch):
    x = structured(3000, seed=5)
    x[17] = 0  # scores 0 with everything
    expected = prefix_bound.self_pairs(x, 0.8, prefix=0)
    monkeypatch.setattr(prefix_bound, "_BLOCK_CANDIDATES", 1000)  # many row blocks, each against the rows after it
    got = prefix_bound.self_pairs(x, 0.8, prefix=12)
    assert_same_pairs(got, x, None, 0.8, metric="dot")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for rows in (0, 1, 2):
        small = x[:rows]
        got_rows, got_cols, got_scores = prefix_bound.self_pairs(small, -1.0, prefix=3)
        ref_rows, ref_cols, ref_scores = reference.threshold_pairs(small, None, -1.0, metric="dot")
        assert got_rows.tolist() == ref_rows.tolist() and got_cols.tolist() == ref_cols.tolist()
        # the kernel's fp32 dot may round differently from the reference's (AVX-512 vs AVX2 lanes)
        torch.testing.assert_close(got_scores, ref_scores, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"prefix must be None, 0, or in \(0, 64\)"):
        prefix_bound.self_pairs(x, 0.5, prefix=64)


def test_cost_model_choice(squad, monkeypatch):  # noqa: F811
    """Real embeddings at a high threshold get a prefix; random rows keep the plain kernel."""
    monkeypatch.setattr(prefix_bound, "_MIN_ROWS", 0)
    monkeypatch.setattr(prefix_bound, "_FIXED_SECONDS", 0.0)  # 1,500 rows are too few to repay the plan otherwise
    plan = prefix_bound._plan(unit(squad), 0.85, seed=0)
    assert plan is not None and plan[1] < squad.shape[1] // 2
    rotation = plan[0]
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(len(rotation)), atol=1e-5, rtol=0)
    assert prefix_bound._plan(unit(torch.randn(3000, 384)), 0.3, seed=0) is None
    got = prefix_bound.self_pairs(unit(squad), 0.85)
    assert_same_pairs(got, unit(squad), None, 0.85, metric="dot")


def test_plan_eigendecomposition_on_one_thread(squad, monkeypatch):  # noqa: F811
    """The plan's eigh runs on one thread (threaded, it stalls for seconds on a shared CPU) and the thread count
    comes back, also when eigh raises."""
    seen = []

    def eigh(moment):
        seen.append(torch.get_num_threads())
        return real_eigh(moment)

    real_eigh, threads = torch.linalg.eigh, torch.get_num_threads()
    monkeypatch.setattr(prefix_bound, "_MIN_ROWS", 0)
    monkeypatch.setattr(prefix_bound, "_FIXED_SECONDS", 0.0)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    torch.set_num_threads(2)  # a count above one, so that a threaded call would show
    try:
        assert prefix_bound._plan(unit(squad), 0.85, seed=0) is not None
        assert seen == [1] and torch.get_num_threads() == 2
        monkeypatch.setattr(torch.linalg, "eigh", lambda moment: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            prefix_bound._plan(unit(squad), 0.85, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_pair_score_quantile():
    x = structured(2000, seed=6)
    cutoff = prefix_bound.pair_score_quantile(x, 0.01)
    share = (reference.threshold_pairs(x, None, cutoff, metric="dot")[0].numel()) / (2000 * 1999 / 2)
    assert 0.005 < share < 0.02


# paraphrase mining: pairs above a sampled cutoff, ranked within the list


def brute_within_top_k(rows, cols, x, top_k):
    scores = x.double() @ x.double().T
    scores.fill_diagonal_(-float("inf"))
    # rank of j in i's list: higher scores first, then lower index (as cosine_topk breaks ties)
    order = np.lexsort((np.arange(len(x))[None, :].repeat(len(x), 0), -scores.numpy()), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(len(x))[None, :].repeat(len(x), 0), axis=1)
    return (rank[rows, cols] < top_k) | (rank[cols, rows] < top_k)


@pytest.mark.parametrize("top_k", [1, 3, 40])
def test_within_top_k_matches_brute_force(top_k):
    x = planted(n_clusters=5, per_cluster=12, noise_rows=40, seed=2).double()
    x[3] = x[9]  # exact duplicates tie
    rows, cols, scores = reference.threshold_pairs(x, None, 0.3)
    # scores as the reference computes them, in float64, so that ties stay ties
    s = (unit(x).double() @ unit(x).double().T)[rows, cols].numpy()
    got = paraphrase._within_top_k(rows.numpy(), cols.numpy(), s, len(x), top_k)
    ux = unit(x).double()
    assert (got == brute_within_top_k(rows.numpy(), cols.numpy(), ux, top_k)).all()
    assert 0 < got.sum() < len(got)


@pytest.mark.parametrize(
    "kwargs", [dict(top_k=5, max_pairs=1000), dict(top_k=2, max_pairs=300), dict(top_k=30, max_pairs=5000)]
)
def test_cutoff_path_matches_top_k_path(squad, monkeypatch, kwargs):  # noqa: F811
    above = paraphrase.paraphrase_mining_embeddings(squad, **kwargs)
    monkeypatch.setattr(paraphrase, "_MAX_ABOVE_SHARE", 0.0)  # the top-k path
    assert_same_mined(above, paraphrase.paraphrase_mining_embeddings(squad, **kwargs), squad, kwargs["top_k"])


def test_cutoff_path_lowers_a_cutoff_that_leaves_too_few(squad, monkeypatch):  # noqa: F811
    calls = []
    real = prefix_bound.pair_score_quantile

    def too_high_first(x, fraction, seed=0):
        calls.append(fraction)
        return 0.99 if len(calls) == 1 else real(x, fraction, seed)

    monkeypatch.setattr(prefix_bound, "pair_score_quantile", too_high_first)
    got = paraphrase.paraphrase_mining_embeddings(squad, top_k=5, max_pairs=1000)
    assert len(calls) == 2 and calls[1] == 4 * calls[0]
    monkeypatch.setattr(paraphrase, "_MAX_ABOVE_SHARE", 0.0)
    assert_same_mined(got, paraphrase.paraphrase_mining_embeddings(squad, top_k=5, max_pairs=1000), squad, 5)


def test_cutoff_path_dot_score_and_crowded_rows(monkeypatch):
    """A cluster much larger than top_k (crowded rows) and unnormalized rows scored by dot product."""
    from sentfuse.search.similarity import dot_score

    x = planted(n_clusters=4, per_cluster=60, noise_rows=100, seed=3)
    for kwargs in (dict(top_k=5, max_pairs=400), dict(top_k=3, max_pairs=200, score_function=dot_score)):
        monkeypatch.setattr(paraphrase, "_MAX_ABOVE_SHARE", 0.25)
        above = paraphrase.paraphrase_mining_embeddings(x, **kwargs)
        monkeypatch.setattr(paraphrase, "_MAX_ABOVE_SHARE", 0.0)
        expected = paraphrase.paraphrase_mining_embeddings(x, **kwargs)
        assert_same_mined(above, expected, x, kwargs["top_k"], dot="score_function" in kwargs)


@pytest.mark.parametrize("min_score", [0.95, 0.8, 0.6])
@pytest.mark.parametrize("top_k", [2, 100])
def test_min_score_equals_filtering_the_full_answer(squad, min_score, top_k):  # noqa: F811
    """min_score keeps exactly the pairs of the unlimited answer that score >= min_score."""
    got = paraphrase.paraphrase_mining_embeddings(squad, top_k=top_k, max_pairs=2**62, min_score=min_score)
    full = paraphrase.paraphrase_mining_embeddings(squad, top_k=top_k, max_pairs=2**62)
    expected = [p for p in full if p[0] >= min_score]
    assert len(got) > 5
    assert_same_mined(got, expected, squad, top_k)
    capped = paraphrase.paraphrase_mining_embeddings(squad, top_k=top_k, max_pairs=3, min_score=min_score)
    assert [p[1:] for p in capped] == [p[1:] for p in got[:3]]


def test_min_score_range_follows_the_score_function():
    """A cosine min_score lies in [-1, 1]; a dot-product one may be any finite number, above 1 included."""
    from sentfuse.search.similarity import dot_score

    x = structured(50)
    with pytest.raises(ValueError, match=r"min_score must be a number in \[-1, 1\]"):
        paraphrase.paraphrase_mining_embeddings(x, min_score=1.5)
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        paraphrase.paraphrase_mining_embeddings(x, min_score=float("nan"), score_function=dot_score)
    # 50 rows, top_k 100: every pair is a candidate, so the answer is every pair whose dot product is >= 2.
    scaled = x * 3
    got = paraphrase.paraphrase_mining_embeddings(scaled, min_score=2.0, score_function=dot_score)
    dots = (scaled.double() @ scaled.double().T).numpy()
    i, j = np.triu_indices(50, k=1)
    assert not (np.abs(dots[i, j] - 2.0) < 1e-4).any()  # no pair so close to the cutoff that rounding decides
    above = dots[i, j] >= 2.0
    expected = sorted(zip(-dots[i, j][above], i[above], j[above]))
    assert 10 < len(got) < len(i) // 2
    assert [p[1:] for p in got] == [[a, b] for _, a, b in expected]
    np.testing.assert_allclose([p[0] for p in got], [-s for s, _, _ in expected], rtol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2, 3, 6])
@pytest.mark.parametrize("cutoff", [-1000.0, 4.0])
def test_within_top_k_exact_ties_on_both_sides(top_k, cutoff):
    """Small integer rows, so dot products and their ties are exact: a row whose tied neighbours sit on both
    sides of it must keep the lower indices first."""
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-3, 4, (40, 8), generator=g).double()
    x[[2, 5, 8, 9]] = x[1].clone()  # five identical rows: row 5 ties with 1, 2 (below) and 8, 9 (above)
    x[[20, 30]] = x[25].clone()
    rows, cols, scores = reference.threshold_pairs(x, None, cutoff, metric="dot")
    got = paraphrase._within_top_k(rows.numpy(), cols.numpy(), scores.numpy(), len(x), top_k)
    assert (got == brute_within_top_k(rows.numpy(), cols.numpy(), x, top_k)).all()


def test_top_pairs_orders_ties_by_pair():
    """The best max_pairs by score, ties by (i, j), each pair once (its first occurrence) when not distinct."""
    g = torch.Generator().manual_seed(4)
    rows = torch.randint(0, 30, (400,), generator=g).numpy()
    cols = rows + 1 + torch.randint(0, 30, (400,), generator=g).numpy()
    scores = (torch.randint(-4, 5, (400,), generator=g) / 4).numpy().astype(np.float32)  # many exact ties
    first = {}
    for r, c, s in zip(rows.tolist(), cols.tolist(), scores.tolist()):
        first.setdefault((r, c), s)
    expected = sorted(first.items(), key=lambda p: (-p[1], p[0]))[:50]
    got = paraphrase._top_pairs(rows, cols, scores, 61, 50)
    assert [(int(r), int(c), float(s)) for r, c, s in zip(*got)] == [(r, c, s) for (r, c), s in expected]
    order = np.lexsort((cols, rows))
    distinct = np.r_[True, (np.diff(rows[order]) != 0) | (np.diff(cols[order]) != 0)]
    keep = order[distinct]  # in (i, j) order, one per pair (not the first occurrence: scores differ from above)
    got = paraphrase._top_pairs(rows[keep], cols[keep], scores[keep], 61, 10**6, distinct=True)
    expected = [(float(-s), int(r), int(c)) for s, r, c in sorted(zip(-scores[keep], rows[keep], cols[keep]))]
    assert expected == [(float(s), int(r), int(c)) for r, c, s in zip(*got)]
