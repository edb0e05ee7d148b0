"""cosine_topk's fused CUDA scan (SENTFUSE_CUDA_TOPK=fused, csrc/cuda/topk_fused.cu) against the reference.

Opt-in until a GPU run has timed it against the tiled scan. The corpora are just large enough for the
scan to apply (4 seed slices of 16,384 rows); data that defeats the seed (every row alike) takes the
tiled scan and must give the same answer. The algorithm's exactness is mirrored on the CPU in
test_rescore_bound.py (test_seeded_filter_never_drops_a_top_k_row).
"""

from __future__ import annotations

import pytest
import torch

from op_devices import cuda_only
from sentfuse import _ops, reference
from test_topk import assert_same_topk, normal

pytestmark = cuda_only
N = 4 * 16384 + 123  # the smallest corpus the fused scan takes at k <= 256, plus a ragged block


@pytest.fixture(autouse=True)
def fused(monkeypatch):
    monkeypatch.setenv("SENTFUSE_CUDA_TOPK", "fused")


def run(queries, corpus, k, **kwargs):
    out = _ops.cosine_topk(queries.cuda(), corpus.cuda(), k, **kwargs)
    return tuple(t.cpu() for t in out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("dim", [64, 100])
def test_matches_reference(dtype, metric, dim):
    queries, corpus = normal(96, dim, 1, dtype), normal(N, dim, 2, dtype)
    got = run(queries, corpus, 10, metric=metric)
    expected = reference.cosine_topk(queries.float(), corpus.float(), 10, metric=metric)
    assert_same_topk(got, expected, atol=1e-4 if metric == "dot" else 1e-5)


@pytest.mark.parametrize("k", [1, 7, 100, 256])
def test_every_k(k):
    queries, corpus = normal(70, 32, 3), normal(N, 32, 4)
    assert_same_topk(run(queries, corpus, k), reference.cosine_topk(queries, corpus, k))


def test_exclude_self_with_offsets_and_min_score():
    data = normal(N, 24, 5)
    queries = data[1000:1100]
    got = run(queries, data, 5, exclude_self=True, query_offset=1000, corpus_offset=0, min_score=0.3)
    expected = reference.cosine_topk(queries, data, 5, exclude_self=True, query_offset=1000, corpus_offset=0,
                                     min_score=0.3)
    assert_same_topk(got, expected)


def test_duplicates_and_near_ties_keep_the_lower_index():
    corpus = normal(N, 32, 6)
    corpus[40000:40010] = corpus[5]  # exact duplicates of a seed row, later in the corpus
    corpus[50000] = corpus[7] * (1 + 2**-20)  # a near-tie
    queries = corpus[[5, 7]].repeat(40, 1) + 1e-4 * normal(80, 32, 7)
    assert_same_topk(run(queries, corpus, 12), reference.cosine_topk(queries, corpus, 12))


def test_corpus_of_equal_rows_falls_back():
    corpus = torch.ones(N, 16)  # every score ties: the seed filters nothing, the tiled scan answers
    scores, indices = run(torch.ones(64, 16), corpus, 4)
    assert (indices == torch.arange(4)).all() and torch.allclose(scores, torch.ones_like(scores))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_corpus_raises(bad):
    corpus = normal(N, 16, 8)
    corpus[60000, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        run(normal(64, 16, 9), corpus, 3)
