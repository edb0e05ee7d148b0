"""sentfuse's smooth_quantize op (the int8 compute mode's input quantization) against the reference: per tensor and
per row, 8- and 7-bit codes, edges, errors, opcheck, on every device."""

from __future__ import annotations

import pytest
import torch

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

QUANTIZE_SHAPES = [(3, 7, 37), (1, 1), (0, 5), (5, 16), (4, 33), (130, 384)]


@pytest.mark.parametrize("shape", QUANTIZE_SHAPES)
@pytest.mark.parametrize("smoothed", [False, True])
@pytest.mark.parametrize("per_row, max_code", [(False, 255), (True, 255), (True, 127), (False, 127)])
def test_smooth_quantize_matches_reference(device, shape, smoothed, per_row, max_code):  # noqa: F811
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(*shape, generator=gen) * 3).to(device)
    if x.dim() > 1 and x.shape[0] > 1:
        x[1:2] *= 40  # rows of different ranges
    inverse = (torch.rand(shape[-1], generator=gen) + 0.5).to(device) if smoothed else None
    got = _ops.smooth_quantize(x, inverse, per_row=per_row, max_code=max_code)
    expected = reference.smooth_quantize(x.cpu(), None if inverse is None else inverse.cpu(), per_row=per_row,
                                         max_code=max_code)
    assert x.numel() == 0 or got[0].max().item() <= max_code
    assert [t.dtype for t in got] == [torch.uint8, torch.float32, torch.int32]
    assert got[1].shape == (x.shape[:-1] if per_row else ())
    for g, e in zip(got, expected):
        assert torch.equal(g.cpu(), e)
    if x.numel():  # the codes represent x: within half a step (of its row's, per row)
        v = x.cpu() if inverse is None else x.cpu() * inverse.cpu()
        step, zero = got[1].cpu()[..., None], got[2].cpu()[..., None]
        assert ((((got[0].cpu().float() - zero) * step - v).abs() <= 0.5001 * step)).all()


def test_smooth_quantize_edges(device):  # noqa: F811
    x = torch.zeros(3, 8, device=device)
    codes, scale, zero_point = _ops.smooth_quantize(x)
    assert codes.eq(0).all() and scale.item() == 1.0 and zero_point.item() == 0  # all zeros: exact
    positive = torch.tensor([[0.0, 1.0, 2.0, 255.0]], device=device)
    codes, scale, zero_point = _ops.smooth_quantize(positive)
    assert zero_point.item() == 0 and scale.item() == 1.0 and codes.tolist() == [[0, 1, 2, 255]]
    strided = torch.randn(8, 12, device=device)[:, ::2]
    assert all(torch.equal(a, b) for a, b in zip(_ops.smooth_quantize(strided), _ops.smooth_quantize(strided.contiguous())))
    for bad in (float("nan"), float("inf")):
        y = torch.randn(4, 8, device=device)
        y[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            _ops.smooth_quantize(y)
    with pytest.raises(TypeError, match="x must be float32"):
        _ops.smooth_quantize(x.double())
    with pytest.raises(ValueError, match=r"inverse_smooth must be \[8\]"):
        _ops.smooth_quantize(x, torch.ones(7, device=device))
    with pytest.raises(ValueError, match="K >= 1"):
        _ops.smooth_quantize(torch.zeros(3, 0, device=device))
    for bad in (0, 256):
        with pytest.raises(ValueError, match=r"max_code must be in \[1, 255\]"):
            _ops.smooth_quantize(x, max_code=bad)


def test_smooth_quantize_per_row_edges(device):  # noqa: F811
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 255.0], [-2.0, -1.0, 0.0]], device=device)
    codes, scale, zero_point = _ops.smooth_quantize(x, per_row=True)
    assert scale[:2].tolist() == [1.0, 1.0] and zero_point.tolist() == [0, 0, 255]  # a zero row: exact
    assert scale[2].item() == pytest.approx(2 / 255, rel=1e-6)
    assert codes.tolist()[:2] == [[0, 0, 0], [0, 1, 255]]
    y = torch.randn(4, 8, device=device)
    y[3, 5] = float("inf")  # the last row: every row is checked
    with pytest.raises(ValueError, match="NaN or inf"):
        _ops.smooth_quantize(y, per_row=True)
    strided = torch.randn(8, 12, device=device)[:, ::2]
    assert all(torch.equal(a, b) for a, b in zip(_ops.smooth_quantize(strided, per_row=True),
                                                 _ops.smooth_quantize(strided.contiguous(), per_row=True)))


def test_smooth_quantize_opcheck(device):  # noqa: F811
    x = torch.randn(5, 24, device=device)
    for inverse in (None, torch.rand(24, device=device) + 0.5):
        for per_row in (False, True):
            torch.library.opcheck(torch.ops.sentfuse.smooth_quantize.default, (x, inverse),
                                  {"per_row": per_row, "max_code": 255 if per_row else 127})
