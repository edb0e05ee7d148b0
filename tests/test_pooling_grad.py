"""Gradients of masked_pool, masked_pool_varlen and l2_normalize.

The reference twins' autograd is checked by torch.autograd.gradcheck in float64; the kernels' backward ops
(registered with torch.library.register_autograd) must give the twins' gradients at each dtype's tolerance,
on every device, for every mode, both padding sides, skipped prompt tokens and the fused normalization.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference
from test_op_properties import DTYPES, PROPERTY, laid_out
from test_pooling import TOL, random_mask

MODES = reference.POOLING_MODES
FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def grads(fn, x, grad_out_seed=0):
    """(output, d(sum(output * G))/dx) for a fixed random G: the vector-Jacobian product autograd computes."""
    x = x.detach().requires_grad_(True)  # keeps x's layout (strides, storage offset)
    out = fn(x)
    if not out.requires_grad:  # the reference's output for a batch of no sequence depends on no element of x
        return out, torch.zeros_like(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed)).to(out.dtype)
    (grad,) = torch.autograd.grad(out, x, g.to(out.device))
    return out, grad


def assert_grad_close(got, expected, dtype):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got.cpu().float(), expected.cpu().float(), **TOL[dtype])


# ---- the reference twins are differentiable, with correct gradients ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_reference_masked_pool_gradcheck(mode, normalize, left_padded):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = random_mask(4, 6, left_padded=left_padded, generator=g)
    for skip in (0, 2):
        assert torch.autograd.gradcheck(lambda h: reference.masked_pool(h, mask, mode, normalize, skip), (hidden,))


@pytest.mark.parametrize("mode", MODES)
def test_reference_varlen_and_l2_normalize_gradcheck(mode):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cu_seqlens = torch.tensor([1, 4, 4, 9])  # tokens 0, 9 and 10 belong to no sequence
    assert torch.autograd.gradcheck(lambda h: reference.masked_pool_varlen(h, cu_seqlens, mode, True, 1), (hidden,))
    x = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    for dim in (None, 3):
        assert torch.autograd.gradcheck(lambda t: reference.l2_normalize(t, dim), (x,))


def test_reference_max_sends_ties_to_the_first_token():
    hidden = torch.tensor([[[1.0, 5.0], [3.0, 5.0], [3.0, 2.0]]], requires_grad=True)
    out = reference.masked_pool(hidden, torch.ones(1, 3), "max")
    out.sum().backward()
    assert hidden.grad.tolist() == [[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]]


# ---- the kernels' gradients equal the twins' ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_masked_pool_grad_matches_reference(device, dtype, mode, normalize, left_padded):  # noqa: F811
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 9, 40, generator=g).to(dtype)
    mask = random_mask(6, 9, left_padded=left_padded, generator=g)
    for skip in (0, 2):
        out, got = grads(lambda h: _ops.masked_pool(h, mask.to(device), mode, normalize, skip), hidden.to(device))
        _, expected = grads(lambda h: reference.masked_pool(h, mask, mode, normalize, skip), hidden)
        assert out.device.type == device and got.device.type == device
        assert_grad_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
def test_masked_pool_varlen_grad_matches_reference(device, dtype, mode, normalize):  # noqa: F811
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(14, 24, generator=g).to(dtype)
    cu_seqlens = torch.tensor([2, 7, 7, 8, 12])  # tokens 0, 1, 12 and 13 belong to no sequence
    for skip in (0, 1):
        _, got = grads(lambda h: _ops.masked_pool_varlen(h, cu_seqlens.to(device), mode, normalize, skip),
                       hidden.to(device))
        _, expected = grads(lambda h: reference.masked_pool_varlen(h, cu_seqlens, mode, normalize, skip), hidden)
        assert_grad_close(got, expected, dtype)
        assert not got[[0, 1, 12, 13]].any()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("dim", [None, 5])
def test_l2_normalize_grad_matches_reference(device, dtype, dim):  # noqa: F811
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(5)).to(dtype)
    _, got = grads(lambda t: _ops.l2_normalize(t, dim), x.to(device))
    _, expected = grads(lambda t: reference.l2_normalize(t, dim), x)
    assert_grad_close(got, expected, dtype)


def test_zero_rows_follow_f_normalize(device):  # noqa: F811
    # Below the norm's eps F.normalize divides by eps and passes no gradient through the norm: g / eps.
    x = torch.zeros(2, 3)
    x[1] = 1e-14
    _, got = grads(lambda t: _ops.l2_normalize(t), x.to(device))
    _, expected = grads(lambda t: reference.l2_normalize(t), x)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=0)
    # A row without valid tokens pools to zeros whatever its tokens hold: no gradient reaches them.
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    for mode in MODES:
        _, got = grads(lambda h: _ops.masked_pool(h, mask.to(device), mode, True), hidden.to(device))
        assert not got[1].any() and not got[0, 2].any()


def test_max_grad_goes_to_the_first_tied_token(device):  # noqa: F811
    hidden = torch.tensor([[[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [3.0, 5.0]]])
    mask = torch.tensor([[0, 1, 1, 1]])  # left padding: token 0 is not a candidate
    _, got = grads(lambda h: _ops.masked_pool(h, mask.to(device), "max"), hidden.to(device))
    _, expected = grads(lambda h: reference.masked_pool(h, mask, "max"), hidden)
    assert (got.cpu() != 0).tolist() == [[[False, False], [True, True], [False, False], [False, False]]]
    torch.testing.assert_close(got.cpu(), expected)


def test_backward_ops_check_grad_out(device):  # noqa: F811
    hidden = torch.randn(2, 3, 4, device=device)
    mask = torch.ones(2, 3, device=device)
    with pytest.raises(ValueError, match="grad_out must be \\[2, 4\\]"):
        torch.ops.sentfuse.masked_pool_backward(torch.ones(2, 5, device=device), hidden, mask, "mean", False, 0)
    with pytest.raises(TypeError, match="grad_out is"):
        torch.ops.sentfuse.l2_normalize_backward(torch.ones(2, 4, device=device, dtype=torch.float16),
                                                 hidden[:, 0], None)


# ---- opcheck: schema, fake kernels, autograd registration, AOT dispatch with gradients -------------------------


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_masked_pool_with_gradients(device, mode):  # noqa: F811
    hidden = torch.randn(3, 6, 16, device=device, requires_grad=True)
    mask = random_mask(3, 6).to(device)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool.default, (hidden, mask, mode, True, 1))


@pytest.mark.parametrize("mode", ["mean", "max"])  # the sum and the pick backward paths; all modes: above
def test_opcheck_varlen_and_backward_ops(device, mode):  # noqa: F811
    hidden = torch.randn(3, 6, 16, device=device)
    mask = random_mask(3, 6).to(device)
    packed = torch.randn(10, 16, device=device, requires_grad=True)
    cu_seqlens = torch.tensor([0, 4, 4, 9], device=device)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool_varlen.default, (packed, cu_seqlens, mode, False, 0))
    grad_out = torch.randn(3, 16, device=device)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool_backward.default,
                          (grad_out, hidden, mask, mode, True, 1))
    torch.library.opcheck(torch.ops.sentfuse.masked_pool_varlen_backward.default,
                          (grad_out, packed.detach(), cu_seqlens, mode, True, 1))


def test_opcheck_l2_normalize_with_gradients(device):  # noqa: F811
    x = torch.randn(5, 12, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (x, 6))
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize_backward.default,
                          (torch.randn(5, 6, device=device), x.detach(), 6))


# ---- hypothesis over shapes, masks, layouts and dtypes --------------------------------------------------------

# Half the forward property tests' examples: each one runs a forward and a backward on both sides.
PROPERTY = settings(PROPERTY, max_examples=max(1, PROPERTY.max_examples // 2))


@st.composite
def grad_case(draw):
    batch, seq_len, hidden = draw(st.integers(0, 4)), draw(st.integers(0, 8)), draw(st.integers(1, 33))
    dtype = draw(DTYPES)
    x = draw(laid_out((batch, seq_len, hidden), dtype))
    lengths = torch.tensor([draw(st.integers(0, seq_len)) for _ in range(batch)], dtype=torch.long).view(batch, 1)
    pos = torch.arange(seq_len).unsqueeze(0)
    mask = (pos >= seq_len - lengths) if draw(st.booleans()) else (pos < lengths)
    if draw(st.booleans()) and batch and seq_len:  # a hole inside a row
        mask[0, draw(st.integers(0, seq_len - 1))] = False
    return x, mask.long(), draw(st.sampled_from(MODES)), draw(st.booleans()), draw(st.integers(0, 3))


@PROPERTY
@given(case=grad_case(), seed=st.integers(0, 2**16))
def test_masked_pool_grad_property(device, case, seed):  # noqa: F811
    hidden, mask, mode, normalize, skip = case
    _, got = grads(lambda h: _ops.masked_pool(h, mask.to(device), mode, normalize, skip), hidden.to(device), seed)
    _, expected = grads(lambda h: reference.masked_pool(h, mask, mode, normalize, skip), hidden, seed)
    assert_grad_close(got, expected, hidden.dtype)


@PROPERTY
@given(lengths=st.lists(st.integers(0, 6), max_size=4), hidden=st.integers(1, 24), dtype=DTYPES,
       mode=st.sampled_from(MODES), normalize=st.booleans(), skip=st.integers(0, 3), data=st.data())
def test_masked_pool_varlen_grad_property(device, lengths, hidden, dtype, mode, normalize, skip, data):  # noqa: F811
    x = data.draw(laid_out((sum(lengths), hidden), dtype))
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)
    _, got = grads(lambda h: _ops.masked_pool_varlen(h, cu_seqlens.to(device), mode, normalize, skip), x.to(device))
    _, expected = grads(lambda h: reference.masked_pool_varlen(h, cu_seqlens, mode, normalize, skip), x)
    assert_grad_close(got, expected, dtype)
