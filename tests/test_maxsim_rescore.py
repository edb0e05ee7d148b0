"""maxsim_topk's bf16 scan + exact fp32 rescoring (bf16_rescore) on CPU: the answer must be the fp32 one.

On a CPU with AMX these run the bf16 scan; elsewhere bf16_rescore falls back to the fp32 tiles and the same
assertions hold. Near-ties below bf16's resolution are where a too small error bound would show: the scan
cannot order those documents, only the rescoring can.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpu_paths import FEATURE_SETS, spy_on_path
from sentfuse import _ops, cpu_features, reference
from test_maxsim import SCORES, assert_same_topk, collection


def offsets(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    return cu


def assert_exact_topk(q, mask, docs, cu, k, score="maxsim"):
    got = _ops.maxsim_topk(q, docs, cu, k, query_mask=mask, score=score, bf16_rescore=True)
    assert_same_topk(got, reference.maxsim_topk(q, mask, docs, cu, k, score=score), torch.float32)
    return got


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("k", [1, 5, 40])
def test_random_collection_matches_reference(score, k):
    """Several document tiles, a document longer than a tile, query tokens across 32-token blocks, a depth that is
    not a multiple of the tiles' 32 features, masked tokens and a query without a valid token."""
    lengths = [int(x) for x in torch.randint(1, 160, (90,), generator=torch.Generator().manual_seed(7))] + [2100, 3]
    q, mask, docs, cu = collection(6, 37, lengths, 40, torch.float32, seed=7)
    scores, ids = assert_exact_topk(q, mask, docs, cu, k, score)
    assert (scores[-1] == 0).all() and ids[-1].tolist() == list(range(k))  # no valid token: all 0, lowest ids


def test_exact_ties_go_to_the_lower_index():
    g = torch.Generator().manual_seed(8)
    doc = torch.randn(5, 24, generator=g)
    other = torch.randn(40, 24, generator=g) * 0.1
    docs = torch.cat([other[:20], doc, doc, other[20:], doc])  # documents 2, 3 and 6 are the same
    cu = offsets([10, 10, 5, 5, 10, 10, 5])
    q = doc[:3].unsqueeze(0)
    scores, ids = _ops.maxsim_topk(q, docs, cu, 3, bf16_rescore=True)
    if cpu_features.bf16_block_unit() is not None:  # the exact rescoring ran: copies score alike, lower index first
        assert ids.tolist() == [[2, 3, 6]] and scores[0, 0] == scores[0, 1] == scores[0, 2]
    else:  # fp32 tiles (no bf16 blocks): a copy in another tile position may round differently (Zen 3: 70.1066132 vs 055)
        assert sorted(ids[0].tolist()) == [2, 3, 6]
        torch.testing.assert_close(scores[0], scores[0, :1].expand(3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("score", SCORES)
def test_near_ties_below_bf16_resolution(score):
    """80 copies of one document, each value moved by about one bf16 step: their exact scores differ by ~1e-3
    while the scan's errors are as large, so the scan's order is scrambled. Only a sound bound keeps every
    document of the exact top-k for the rescoring (with no bound at all this fails)."""
    g = torch.Generator().manual_seed(9)
    base = torch.nn.functional.normalize(torch.randn(12, 64, generator=g), dim=-1)
    copies = base.unsqueeze(0) * (1 + 2.0**-8 * torch.randn(80, 12, 64, generator=g))
    noise = torch.randn(300, 64, generator=g) * 0.05
    docs = torch.cat([noise[:150], copies.reshape(-1, 64), noise[150:]])
    cu = offsets([15] * 10 + [12] * 80 + [15] * 10)
    q = (base[:7] + 0.01 * torch.randn(7, 64, generator=g)).unsqueeze(0).repeat(2, 1, 1)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 3:] = False
    k = 10
    scores, ids = _ops.maxsim_topk(q, docs, cu, k, query_mask=mask, score=score, bf16_rescore=True)
    all_scores = reference.maxsim(q, mask, docs, cu, score=score)
    expected = reference.maxsim_topk(q, mask, docs, cu, k, score=score)
    torch.testing.assert_close(scores, expected[0], rtol=0, atol=1e-5)
    for row, got in enumerate(ids.tolist()):  # the same documents, up to those within fp32 rounding of the k-th
        kth = expected[0][row, -1]
        sure = {d for d in expected[1][row].tolist() if all_scores[row, d] > kth + 1e-5}
        assert sure <= set(got) and all(all_scores[row, d] >= kth - 1e-5 for d in got)
        assert set(got) <= set(range(10, 90))


def test_survivors_pass_their_prunes():
    """6,000 near-copies of one document, all within the bound of the best when seen: the survivor list passes its
    first prune (4,096) while it holds the answer, and must keep every document that can still win."""
    g = torch.Generator().manual_seed(10)
    base = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=-1)
    copies = base.unsqueeze(0) * (1 + 2.0**-9 * torch.randn(6000, 4, 32, generator=g))
    docs = copies.reshape(-1, 32)
    cu = offsets([4] * 6000)
    q = (base[:3] + 0.01 * torch.randn(3, 32, generator=g)).unsqueeze(0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores, ids = _ops.maxsim_topk(q, docs, cu, 5, query_mask=mask, bf16_rescore=True)
    all_scores = reference.maxsim(q, mask, docs, cu)
    expected = reference.maxsim_topk(q, mask, docs, cu, 5)
    torch.testing.assert_close(scores, expected[0], rtol=0, atol=1e-5)
    kth = expected[0][0, -1]
    sure = {d for d in expected[1][0].tolist() if all_scores[0, d] > kth + 1e-5}
    assert sure <= set(ids[0].tolist()) and all(all_scores[0, d] >= kth - 1e-5 for d in ids[0].tolist())


def test_top_scores_are_maxsim_candidates_scores():
    """The rescored top-k carries fp32 scores (those maxsim_candidates gives, up to fp32 summation order), not
    the scan's: bf16 inputs would be ~0.4% off at these magnitudes, 5000x the tolerance."""
    q, mask, docs, cu = collection(4, 9, [30, 7, 120, 64, 3, 90, 41, 15, 200, 8], 32, torch.float32, seed=10)
    scores, ids = _ops.maxsim_topk(q, docs, cu, 4, query_mask=mask, bf16_rescore=True)
    exact = _ops.maxsim_candidates(q, docs, cu, ids, query_mask=mask)
    torch.testing.assert_close(scores, exact, rtol=1e-6, atol=1e-5)
    approx = _ops.maxsim_candidates(q.bfloat16().float(), docs.bfloat16().float(), cu, ids, query_mask=mask)
    assert not torch.allclose(approx, exact, rtol=1e-6, atol=1e-5)  # the tolerance does tell them apart


def test_empty_inputs_and_bad_documents():
    q, _, docs, cu = collection(3, 0, [4, 2], 16, torch.float32, masked=False)
    scores, ids = _ops.maxsim_topk(q, docs, cu, 2, bf16_rescore=True)  # queries without tokens score 0
    assert (scores == 0).all() and ids.tolist() == [[0, 1]] * 3
    q, _, docs, cu = collection(2, 4, [], 16, torch.float32, masked=False)
    assert _ops.maxsim_topk(q, docs, cu, 3, bf16_rescore=True)[0].shape == (2, 0)
    q, _, docs, cu = collection(2, 4, [3, 2], 16, torch.float32, masked=False)
    with pytest.raises(ValueError, match="document 1 is empty"):
        _ops.maxsim_topk(q, docs, torch.tensor([0, 5, 5]), 1, bf16_rescore=True)
    bad = docs.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="docs contain NaN or inf"):
        _ops.maxsim_topk(q, bad, cu, 1, bf16_rescore=True)


def test_overflow_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        _ops.maxsim_topk(torch.full((1, 2, 4), 1e30), torch.full((3, 4), 1e30), torch.tensor([0, 3]), 1,
                         bf16_rescore=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_keep_their_path(dtype):
    q, mask, docs, cu = collection(3, 5, [6, 2, 9, 4], 16, dtype, seed=11)
    got = _ops.maxsim_topk(q, docs, cu, 3, query_mask=mask, bf16_rescore=True)
    assert_same_topk(got, _ops.maxsim_topk(q, docs, cu, 3, query_mask=mask, bf16_rescore=False), dtype)


def test_opcheck():
    q, mask, docs, cu = collection(3, 4, [2, 5, 1, 3], 8, torch.float32, seed=12)
    torch.library.opcheck(torch.ops.sentfuse.maxsim_topk.default, (q, mask, docs, cu, 2),
                          {"score": "meanmaxsim", "bf16_rescore": True})


@settings(max_examples=30, deadline=None, derandomize=True)
@given(num_queries=st.integers(0, 4), query_tokens=st.integers(0, 40),
       lengths=st.lists(st.integers(1, 90), min_size=0, max_size=14), dim=st.integers(1, 70),
       seed=st.integers(0, 2**16), masked=st.booleans(), score=st.sampled_from(SCORES), k=st.integers(0, 16))
def test_property_matches_reference(num_queries, query_tokens, lengths, dim, seed, masked, score, k):
    q, mask, docs, cu = collection(num_queries, query_tokens, lengths, dim, torch.float32, seed=seed, masked=masked)
    assert_exact_topk(q, mask, docs, cu, k, score)


@FEATURE_SETS
def test_cpu_path_per_feature_set(monkeypatch, flags, env, chosen):
    seen = spy_on_path(monkeypatch, flags, cpu_features.MAXSIM_ENV, env, "maxsim_topk")
    assert cpu_features.maxsim_bf16_default() is chosen
    q, mask, docs, cu = collection(2, 3, [4, 2, 5], 8, torch.float32, seed=13)
    expected = reference.maxsim_topk(q, mask, docs, cu, 2)
    assert_same_topk(_ops.maxsim_topk(q, docs, cu, 2, query_mask=mask), expected, torch.float32)  # the default
    assert_same_topk(_ops.maxsim_topk(q, docs, cu, 2, query_mask=mask, bf16_rescore=not chosen), expected,
                     torch.float32)  # the argument wins
    assert seen == [chosen, not chosen]


def test_cpu_path_env_is_checked(monkeypatch):
    monkeypatch.setenv(cpu_features.MAXSIM_ENV, "int8")
    with pytest.raises(ValueError, match="SENTFUSE_CPU_MAXSIM"):
        cpu_features.maxsim_bf16_default()
