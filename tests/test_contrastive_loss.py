"""contrastive_loss: loss and gradients equal to the plain-PyTorch formula (sentfuse.reference) and to
sentence-transformers' MultipleNegatives(Symmetric)RankingLoss, on every device, dtype and tile size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference
from test_op_properties import DTYPES, PROPERTY, laid_out
from test_pooling import TOL

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# The loss is fp32 from fp32 arithmetic on both sides whatever the input dtype: only summation order differs.
LOSS_TOL = dict(atol=1e-5, rtol=1e-5)


def loss_and_grads(fn, anchors, candidates, grad_scale=1.0):
    a = anchors.detach().requires_grad_(True)
    c = candidates.detach().requires_grad_(True)
    loss = fn(a, c)
    grad_a, grad_c = torch.autograd.grad(loss * grad_scale, (a, c))
    return loss, grad_a, grad_c


def random_batch(batch, negatives, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(batch, dim, generator=g)
    # Positives near their anchors, so that the loss is neither saturated nor uniform.
    positives = anchors + 0.8 * torch.randn(batch, dim, generator=g)
    candidates = torch.cat([positives, torch.randn(batch * negatives, dim, generator=g)])
    return anchors.to(dtype), candidates.to(dtype)


def assert_matches_reference(device, anchors, candidates, scale, symmetric, grad_scale=1.0):  # noqa: F811
    def kernel(a, c):
        return _ops.contrastive_loss(a, c, scale, symmetric)

    def plain(a, c):
        return reference.contrastive_loss(a, c, scale, symmetric)

    loss, grad_a, grad_c = loss_and_grads(kernel, anchors.to(device), candidates.to(device), grad_scale)
    expected = loss_and_grads(plain, anchors, candidates, grad_scale)
    assert loss.dtype == torch.float32 and loss.shape == () and loss.device.type == device
    torch.testing.assert_close(loss.cpu(), expected[0], **LOSS_TOL)
    for got, want in ((grad_a, expected[1]), (grad_c, expected[2])):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got.cpu().float(), want.float(), **TOL[anchors.dtype])


def test_reference_gradcheck():
    for symmetric, negatives in ((False, 0), (True, 2)):
        anchors, candidates = random_batch(3, negatives, 5, torch.float64, seed=negatives)
        anchors.requires_grad_(True)
        candidates.requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda a, c: reference.contrastive_loss(a, c, 4.0, symmetric), (anchors, candidates)
        )


@pytest.mark.parametrize("symmetric", [False, True])
def test_reference_is_sentence_transformers_loss(symmetric):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    kwargs = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if symmetric else {}
    st_loss = MultipleNegativesRankingLoss(None, scale=20.0, **kwargs)
    anchors, candidates = random_batch(5, 2, 16)
    blocks = list(candidates.split(5))
    expected = st_loss.compute_loss_from_embeddings([anchors, *blocks], None)
    torch.testing.assert_close(reference.contrastive_loss(anchors, candidates, 20.0, symmetric), expected)
    torch.testing.assert_close(_ops.contrastive_loss(anchors, candidates, 20.0, symmetric), expected, **LOSS_TOL)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [0, 1, 3])
def test_matches_reference(device, dtype, symmetric, negatives):  # noqa: F811
    anchors, candidates = random_batch(9, negatives, 48, dtype, seed=negatives)
    assert_matches_reference(device, anchors, candidates, 20.0, symmetric, grad_scale=0.7)


@pytest.mark.parametrize("tile_elems", ["1", "50", "1000"])
def test_tiles_give_the_same_answer(device, monkeypatch, tile_elems):  # noqa: F811
    # 1: one anchor row per tile; 50: two rows of 27 candidates with a ragged last tile; 1000: one tile.
    monkeypatch.setenv("SENTFUSE_CONTRASTIVE_TILE_ELEMS", tile_elems)
    anchors, candidates = random_batch(9, 2, 12, seed=5)
    for symmetric in (False, True):
        assert_matches_reference(device, anchors, candidates, 20.0, symmetric)


def test_zero_rows_and_saturated_scores(device):  # noqa: F811
    anchors, candidates = random_batch(4, 1, 8, seed=6)
    anchors[1] = 0  # F.normalize leaves it zero: cosine 0 with everything
    candidates[6] = 0
    assert_matches_reference(device, anchors, candidates, 20.0, True)
    assert_matches_reference(device, anchors, candidates, 1000.0, True)  # logits far beyond exp's range


def test_bad_arguments(device):  # noqa: F811
    anchors, candidates = random_batch(4, 1, 8)
    anchors, candidates = anchors.to(device), candidates.to(device)
    with pytest.raises(ValueError, match="whole blocks of 4 hard negatives, got 7 rows"):
        _ops.contrastive_loss(anchors, candidates[:7])
    with pytest.raises(ValueError, match="at least one row"):
        _ops.contrastive_loss(anchors[:0], candidates[:0])
    with pytest.raises(ValueError, match="same embedding dimension"):
        _ops.contrastive_loss(anchors, candidates[:, :5])
    with pytest.raises(TypeError, match="but candidates are"):
        _ops.contrastive_loss(anchors, candidates.bfloat16())
    with pytest.raises(ValueError, match="scale must be finite"):
        _ops.contrastive_loss(anchors, candidates, float("inf"))


def test_opcheck_with_gradients(device):  # noqa: F811
    anchors, candidates = random_batch(4, 1, 8)
    anchors = anchors.to(device).requires_grad_(True)
    candidates = candidates.to(device).requires_grad_(True)
    for symmetric in (False, True):
        torch.library.opcheck(torch.ops.sentfuse.contrastive_loss.default, (anchors, candidates, 20.0, symmetric))
        _, row_lse, col_lse = torch.ops.sentfuse.contrastive_loss(anchors, candidates, 20.0, symmetric)
        torch.library.opcheck(torch.ops.sentfuse.contrastive_loss_backward.default,
                              (torch.tensor(1.0, device=device), anchors.detach(), candidates.detach(),
                               row_lse, col_lse, 20.0, symmetric))


@settings(PROPERTY, max_examples=max(1, PROPERTY.max_examples // 4))
@given(batch=st.integers(1, 6), negatives=st.integers(0, 3), dim=st.integers(1, 20), dtype=DTYPES,
       symmetric=st.booleans(), scale=st.sampled_from([1.0, 20.0, 50.0]), data=st.data())
def test_contrastive_loss_property(device, batch, negatives, dim, dtype, symmetric, scale, data):  # noqa: F811
    anchors = data.draw(laid_out((batch, dim), dtype))
    candidates = data.draw(laid_out((batch * (1 + negatives), dim), dtype))
    assert_matches_reference(device, anchors, candidates, scale, symmetric)
