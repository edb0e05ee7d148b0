"""sentfuse's dropout op: the kernels against reference.dropout (the same mask bit for bit), its gradient, its
distribution, opcheck, and the training wrapper's seeding."""

from __future__ import annotations

import pytest
import torch

from sentfuse import _ops, reference
from op_devices import device  # noqa: F401  (fixture)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_dtype", [None, torch.float32, "same"])
@pytest.mark.parametrize("shape", [(0, 5), (1,), (3, 257), (40, 7, 11)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_dropout_equals_the_reference_bit_for_bit(device, dtype, residual_dtype, shape, p):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device).to(dtype)
    residual = None
    if residual_dtype is not None:
        residual = torch.randn(shape, device=device).to(dtype if residual_dtype == "same" else residual_dtype)
    for seed in (0, 12345, -7, 2**63 - 1):
        got = _ops.dropout(x, p, seed, residual)
        want = reference.dropout(x, p, seed, residual)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_dropout_reads_any_layout_by_logical_index(device):
    x = torch.randn(64, 48, device=device)
    torch.testing.assert_close(_ops.dropout(x.t(), 0.3, 5), _ops.dropout(x.t().contiguous(), 0.3, 5), atol=0, rtol=0)


def test_dropout_output_dtype_can_be_chosen(device):
    x = torch.randn(9, 13, device=device)
    got = _ops.dropout(x, 0.2, 1, None, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, reference.dropout(x, 0.2, 1, None, torch.bfloat16), atol=0, rtol=0)


def test_dropout_mask_has_the_keep_rate_and_no_pattern():
    n = 1 << 20
    ones = torch.ones(n)
    for p in (0.1, 0.5, 0.9):
        kept = _ops.dropout(ones, p, 42) != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    kept = (_ops.dropout(ones, 0.5, 42) != 0).float()
    # neighbours, rows of 384 and other seeds are uncorrelated
    for a, b in ((kept[1:], kept[:-1]), (kept[384:], kept[:-384]), (kept, (_ops.dropout(ones, 0.5, 43) != 0).float())):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_gradient_equals_the_references(device, dtype):
    torch.manual_seed(1)
    x = torch.randn(33, 70, device=device).to(dtype).requires_grad_()
    residual = torch.randn(33, 70, device=device).requires_grad_()
    upstream = torch.randn(33, 70, device=device)
    grads = []
    for fn in (_ops.dropout, reference.dropout):
        x.grad = residual.grad = None
        (fn(x, 0.25, 99, residual) * upstream).sum().backward()
        grads.append((x.grad, residual.grad))
    assert grads[0][0].dtype == dtype and grads[0][1].dtype == torch.float32
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=0, rtol=0)


def test_dropout_opcheck(device):
    x = torch.randn(6, 10, device=device, requires_grad=True)
    residual = torch.randn(6, 10, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.sentfuse.dropout.default, (x, 0.3, 11, residual, None))
    torch.library.opcheck(torch.ops.sentfuse.dropout.default, (x.bfloat16(), 0.3, 11, None, torch.float32))


def test_dropout_rejects_bad_arguments(device):
    x = torch.randn(4, 4, device=device)
    other = "meta" if device == "cpu" else "cpu"
    with pytest.raises(ValueError, match="residual is on"):
        _ops.dropout(x, 0.1, 0, torch.randn(4, 4, device=other))
    with pytest.raises(ValueError, match="p must be in"):
        _ops.dropout(x, 1.5, 0)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        _ops.dropout(x, 0.1, 0, torch.randn(4, 5, device=device))
    with pytest.raises(TypeError, match="x must be float32"):
        _ops.dropout(x.long(), 0.1, 0)
    with pytest.raises(TypeError, match="dtype must be"):
        _ops.dropout(x, 0.1, 0, None, torch.float64)


def test_training_dropout_repeats_under_a_seed_and_adds_the_residual():
    from sentfuse.train.dropout import dropout

    x, residual = torch.randn(50, 20), torch.randn(50, 20)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(dropout(x, 0.4, True, residual))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    kept = runs[0] != residual
    torch.testing.assert_close(runs[0][kept], (x / 0.6 + residual)[kept])
    torch.testing.assert_close(dropout(x, 0.4, False, residual), x + residual)
