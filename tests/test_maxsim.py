"""maxsim, maxsim_topk and maxsim_candidates (CPU, and CUDA where a GPU is visible) against reference.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCORES = reference.MAXSIM_SCORES
# Per-token products round to the input dtype on both sides, but GEMMs may sum D terms in another order: a
# 16-bit product can land one rounding step away, which the sum over query tokens carries.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-2),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-1)}


def collection(num_queries, query_tokens, lengths, dim, dtype, seed=0, masked=True):
    """Random queries [Q, L, D] with a mask (query 0 full, the last one without a valid token when Q > 1),
    and packed documents of the given token lengths."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_queries, query_tokens, dim, generator=g).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(num_queries, query_tokens, generator=g) > 0.3
        if num_queries:
            mask[0] = True
        if num_queries > 1:
            mask[-1] = False
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    docs = torch.randn(int(cu[-1]), dim, generator=g).to(dtype)
    return queries, mask, docs, cu


def to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def assert_same_topk(got, expected, dtype):
    scores, ids = got
    exp_scores, exp_ids = expected
    torch.testing.assert_close(scores.cpu(), exp_scores, **TOL[dtype])
    if dtype == torch.float32:  # indices may differ only where scores tie (within rounding)
        differ = ids.cpu() != exp_ids
        assert torch.allclose(scores.cpu()[differ], exp_scores[differ], **TOL[dtype])
    for row in ids.cpu():
        assert len(set(row.tolist())) == len(row)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("score", SCORES)
def test_matches_reference(device, dtype, score):
    q, mask, docs, cu = collection(5, 9, [1, 3, 40, 7, 1100, 2, 65, 1], 24, dtype)
    expected = reference.maxsim(q, mask, docs, cu, score=score)
    got = _ops.maxsim(*to(device, q, docs, cu), query_mask=None if mask is None else mask.to(device), score=score)
    assert got.dtype == torch.float32 and got.shape == (5, 8)
    torch.testing.assert_close(got.cpu(), expected, **TOL[dtype])
    assert (got[-1] == 0).all()  # a query without a valid token scores 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [0, 1, 3, 8, 20])
def test_topk_matches_reference(device, dtype, k):
    q, mask, docs, cu = collection(4, 6, [5, 9, 1, 30, 2, 2, 17, 4], 16, dtype, seed=1)
    got = _ops.maxsim_topk(*to(device, q, docs, cu), k, query_mask=mask.to(device))
    assert got[0].shape == (4, min(k, 8)) and got[1].dtype == torch.int64
    assert_same_topk(got, reference.maxsim_topk(q, mask, docs, cu, k), dtype)


def test_topk_ties_go_to_the_lower_index(device):
    q = torch.ones(2, 3, 4)
    docs = torch.ones(10, 4)  # every document scores the same
    cu = torch.arange(11)
    scores, ids = _ops.maxsim_topk(*to(device, q, docs, cu), 4)
    assert ids.cpu().tolist() == [[0, 1, 2, 3]] * 2
    assert (scores == 12).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_candidates_match_reference(device, dtype):
    q, mask, docs, cu = collection(4, 5, [3, 1, 22, 8, 4, 1500], 20, dtype, seed=2)
    candidates = torch.tensor([[0, 5, 2], [1, 1, 3], [5, 4, 0], [2, 3, 1]])
    for score in SCORES:
        got = _ops.maxsim_candidates(*to(device, q, docs, cu, candidates), query_mask=mask.to(device), score=score)
        expected = reference.maxsim_candidates(q, mask, docs, cu, candidates, score=score)
        torch.testing.assert_close(got.cpu(), expected, **TOL[dtype])


def test_many_tiles_and_blocks(device):
    """More query tokens than one block and documents than one tile on CPU; a document longer than a tile."""
    lengths = [int(x) for x in torch.randint(1, 200, (300,), generator=torch.Generator().manual_seed(3))] + [3000]
    q, mask, docs, cu = collection(20, 33, lengths, 8, torch.float32, seed=3)
    torch.testing.assert_close(_ops.maxsim(*to(device, q, docs, cu), query_mask=mask.to(device)).cpu(),
                               reference.maxsim(q, mask, docs, cu), **TOL[torch.float32])


def test_non_contiguous_inputs(device):
    q, mask, docs, cu = collection(3, 4, [2, 5, 1], 10, torch.float32, seed=4)
    q_strided = torch.cat([q, q], dim=2)[..., ::2]
    docs_strided = torch.cat([docs, docs], dim=0)[::2]
    got = _ops.maxsim(*to(device, q_strided, docs_strided, cu.int()), query_mask=mask.int().to(device))
    torch.testing.assert_close(got.cpu(), reference.maxsim(q_strided, mask, docs_strided, cu), **TOL[torch.float32])


def test_empty_shapes(device):
    q, _, docs, cu = collection(0, 4, [3, 2], 8, torch.float32, masked=False)
    assert _ops.maxsim(*to(device, q, docs, cu)).shape == (0, 2)
    q, _, docs, cu = collection(2, 4, [], 8, torch.float32, masked=False)
    assert _ops.maxsim(*to(device, q, docs, cu)).shape == (2, 0)
    assert _ops.maxsim_topk(*to(device, q, docs, cu), 5)[0].shape == (2, 0)
    q, _, docs, cu = collection(2, 0, [3], 8, torch.float32, masked=False)
    assert (_ops.maxsim(*to(device, q, docs, cu)) == 0).all()


@pytest.mark.parametrize("op", ["maxsim", "maxsim_topk", "maxsim_candidates"])
def test_bad_arguments_are_named(device, op):
    q, mask, docs, cu = collection(2, 3, [2, 4], 8, torch.float32)
    q, mask, docs, cu = to(device, q, mask, docs, cu)

    def call(q=q, docs=docs, cu=cu, mask=mask, score="maxsim", k=1, candidates=None):
        if op == "maxsim":
            return _ops.maxsim(q, docs, cu, query_mask=mask, score=score)
        if op == "maxsim_topk":
            return _ops.maxsim_topk(q, docs, cu, k, query_mask=mask, score=score)
        candidates = torch.zeros(2, 1, dtype=torch.long, device=device) if candidates is None else candidates
        return _ops.maxsim_candidates(q, docs, cu, candidates, query_mask=mask, score=score)

    with pytest.raises(ValueError, match="queries must be"):
        call(q=q[0])
    with pytest.raises(ValueError, match="docs must be"):
        call(docs=docs[None])
    with pytest.raises(ValueError, match="same embedding dimension"):
        call(docs=docs[:, :4])
    with pytest.raises(TypeError, match="docs are"):
        call(docs=docs.half())
    with pytest.raises(ValueError, match="query_mask must be"):
        call(mask=mask[:, :2])
    with pytest.raises(ValueError, match="score must be"):
        call(score="cosine")
    with pytest.raises(ValueError, match="document 1 is empty"):
        call(cu=torch.tensor([0, 6, 6], device=device))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        call(cu=torch.tensor([0, 2, 5], device=device))
    with pytest.raises(TypeError, match="cu_seqlens must be int32 or int64"):
        call(cu=cu.float())
    for bad in (float("nan"), float("inf")):
        bad_docs = docs.clone()
        bad_docs[3, 1] = bad
        with pytest.raises(ValueError, match="docs contain NaN or inf"):
            call(docs=bad_docs)
        bad_q = q.clone()
        bad_q[0, 0, 0] = bad
        with pytest.raises(ValueError, match="queries contain NaN or inf"):
            call(q=bad_q)
    if op == "maxsim_topk":
        with pytest.raises(ValueError, match="k must be >= 0"):
            call(k=-1)
    if op == "maxsim_candidates":
        with pytest.raises(IndexError, match="candidates must lie in"):
            call(candidates=torch.full((2, 1), 2, dtype=torch.long, device=device))
        with pytest.raises(ValueError, match="candidates must be"):
            call(candidates=torch.zeros(3, 1, dtype=torch.long, device=device))


def test_masked_query_tokens_are_never_read(device):
    q, mask, docs, cu = collection(3, 5, [4, 2], 8, torch.float32, seed=5)
    q[~mask] = float("nan")
    got = _ops.maxsim(*to(device, q, docs, cu), query_mask=mask.to(device))
    torch.testing.assert_close(got.cpu(), reference.maxsim(q, mask, docs, cu), **TOL[torch.float32])


def test_overflow_is_an_error(device):
    q = torch.full((1, 2, 4), 1e30)
    docs = torch.full((3, 4), 1e30)
    with pytest.raises(ValueError, match="non-finite"):
        _ops.maxsim(*to(device, q, docs, torch.tensor([0, 3])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    q, mask, docs, cu = collection(3, 4, [2, 5, 1, 3], 8, dtype, seed=6)
    candidates = torch.tensor([[0, 1], [3, 3], [2, 0]])
    torch.library.opcheck(torch.ops.sentfuse.maxsim.default, (q, mask, docs, cu), {"score": "meanmaxsim"})
    torch.library.opcheck(torch.ops.sentfuse.maxsim_topk.default, (q, None, docs, cu, 2))
    torch.library.opcheck(torch.ops.sentfuse.maxsim_candidates.default, (q, mask, docs, cu, candidates))


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def maxsim_case(draw):
    lengths = draw(st.lists(st.integers(1, 70), min_size=0, max_size=12))
    return (draw(st.integers(0, 4)), draw(st.integers(0, 6)), lengths, draw(st.integers(1, 33)),
            draw(st.sampled_from(DTYPES)), draw(st.integers(0, 2**16)), draw(st.booleans()),
            draw(st.sampled_from(SCORES)), draw(st.integers(0, 14)))


@PROPERTY
@given(case=maxsim_case())
def test_property_matches_reference(device, case):
    num_queries, query_tokens, lengths, dim, dtype, seed, masked, score, k = case
    q, mask, docs, cu = collection(num_queries, query_tokens, lengths, dim, dtype, seed=seed, masked=masked)
    dev_mask = None if mask is None else mask.to(device)
    got = _ops.maxsim(*to(device, q, docs, cu), query_mask=dev_mask, score=score)
    torch.testing.assert_close(got.cpu(), reference.maxsim(q, mask, docs, cu, score=score), **TOL[dtype])
    top = _ops.maxsim_topk(*to(device, q, docs, cu), k, query_mask=dev_mask, score=score)
    assert_same_topk(top, reference.maxsim_topk(q, mask, docs, cu, k, score=score), dtype)
    if lengths:
        candidates = torch.randint(0, len(lengths), (num_queries, 3), generator=torch.Generator().manual_seed(seed))
        got = _ops.maxsim_candidates(*to(device, q, docs, cu, candidates), query_mask=dev_mask, score=score)
        torch.testing.assert_close(got.cpu(), reference.maxsim_candidates(q, mask, docs, cu, candidates, score=score),
                                   **TOL[dtype])
