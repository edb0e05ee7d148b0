"""splade_pool and splade_pool_varlen (CPU, and CUDA where a GPU is visible) against reference.splade_pool."""

from __future__ import annotations

import pytest
import torch

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACTIVATIONS = reference.SPLADE_ACTIVATIONS
POOLINGS = reference.SPLADE_POOLINGS


def random_mask(batch, seq_len, *, left_padded, generator):
    """[batch, seq_len] int64 with random lengths (row 0 full, row 1 empty)."""
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=generator)
    lengths[0], lengths[1] = seq_len, 0
    positions = torch.arange(seq_len).unsqueeze(0)
    if left_padded:
        return (positions >= seq_len - lengths.unsqueeze(1)).long()
    return (positions < lengths.unsqueeze(1)).long()


def projection(vocab, dim, dtype, generator, bias=True):
    weight = (torch.randn(vocab, dim, generator=generator) / dim**0.5).to(dtype)
    return weight, (torch.randn(vocab, generator=generator) if bias else None)


def plain_at_dtype(hidden, mask, weight, bias, activation, pooling):
    """What plain PyTorch (sentence-transformers' SpladePooling) computes when the model runs in hidden's dtype."""
    hidden = hidden.masked_fill(mask.unsqueeze(-1) == 0, 0)
    logits = hidden @ weight.T + (0 if bias is None else bias.to(hidden.dtype))
    x = torch.log1p(torch.relu(logits))
    if activation == "log1p_relu":
        x = torch.log1p(x)
    x = x * mask.unsqueeze(-1).to(x.dtype)
    return (x.amax(1) if pooling == "max" else x.sum(1)).float()


def assert_matches(got, hidden, mask, weight, bias, activation, pooling):
    """fp32: within 1e-5 of the reference. 16-bit: error at most twice that of plain PyTorch at the same dtype
    (both against the fp32 reference), as flash-attention's tests judge reduced precision."""
    expected = reference.splade_pool(hidden.cpu(), mask.cpu(), weight.cpu(), None if bias is None else bias.cpu(),
                                     activation, pooling)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    if hidden.dtype == torch.float32:
        torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)
        return
    plain = plain_at_dtype(hidden.cpu(), mask.cpu(), weight.cpu(),
                           None if bias is None else bias.cpu(), activation, pooling)
    plain_error = (plain - expected).abs().max().item()
    assert (got.cpu() - expected).abs().max().item() <= 2 * plain_error + 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("left_padded", [False, True])
def test_matches_reference(device, dtype, activation, pooling, left_padded):
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(6, 11, 24, generator=g).to(dtype)
    mask = random_mask(6, 11, left_padded=left_padded, generator=g)
    hidden[mask == 0] = float("nan")  # padding is never read
    weight, bias = projection(1037, 24, dtype, g)
    got = _ops.splade_pool(hidden.to(device), mask.to(device), weight.to(device), bias.to(device), activation, pooling)
    assert got.device.type == device
    assert (got[1] == 0).all(), "a row without valid tokens gives zeros"
    assert_matches(got, hidden, mask, weight, bias, activation, pooling)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_many_vocabulary_tiles(device, pooling):
    """Enough tokens that the vocabulary is split into several tiles, the last one partial (V = 1001 is a
    multiple of no tile width)."""
    g = torch.Generator().manual_seed(3)
    tokens = 20_000 if device == "cpu" else 300_000
    lengths = torch.randint(0, 400, (tokens // 200,), generator=g)
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    hidden = torch.randn(int(cu_seqlens[-1]), 8, generator=g)
    weight, bias = projection(1001, 8, torch.float32, g)
    args = [t.to(device) for t in (hidden, cu_seqlens, weight, bias)]
    got = _ops.splade_pool_varlen(*args, "log1p_relu", pooling)
    expected = reference.splade_pool_varlen(*args, "log1p_relu", pooling)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_matches_padded(device, dtype):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(5, 7, 16, generator=g).to(dtype)
    mask = random_mask(5, 7, left_padded=False, generator=g)
    weight, bias = projection(333, 16, dtype, g)
    lengths = mask.sum(1)
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).int()])
    packed = hidden[mask.bool()]
    padded = _ops.splade_pool(*(t.to(device) for t in (hidden, mask, weight, bias)), "relu", "sum")
    varlen = _ops.splade_pool_varlen(*(t.to(device) for t in (packed, cu_seqlens, weight, bias)), "relu", "sum")
    torch.testing.assert_close(varlen, padded, atol=1e-5, rtol=1e-5)


def test_edge_shapes(device):
    g = torch.Generator().manual_seed(1)
    weight, bias = projection(50, 4, torch.float32, g)
    w, b = weight.to(device), bias.to(device)
    assert _ops.splade_pool(torch.zeros(0, 3, 4, device=device), torch.zeros(0, 3, device=device), w, b).shape == (0, 50)
    empty_seq = _ops.splade_pool(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, device=device), w, b)
    assert empty_seq.shape == (2, 50) and (empty_seq == 0).all()
    one = torch.randn(1, 1, 4, generator=g)
    got = _ops.splade_pool(one.to(device), torch.ones(1, 1, device=device), w[:1], b[:1], "relu", "sum")
    assert_matches(got, one, torch.ones(1, 1), weight[:1], bias[:1], "relu", "sum")
    cu = torch.tensor([2, 2, 5], device=device)  # offsets need not start at 0
    hidden = torch.randn(6, 4, generator=g)
    got = _ops.splade_pool_varlen(hidden.to(device), cu, w, None)
    expected = reference.splade_pool_varlen(hidden[2:], torch.tensor([0, 0, 3]), weight, None)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(4, 9, 32, generator=g)
    hidden = wide[:, ::2, ::2]  # strided along tokens and features
    mask = random_mask(4, 5, left_padded=True, generator=g)
    weight_t = torch.randn(16, 90, generator=g)
    weight = weight_t.T  # [90, 16], column-major
    got = _ops.splade_pool(hidden.to(device), mask.to(device), weight.to(device), None, "relu", "max")
    assert_matches(got, hidden, mask, weight, None, "relu", "max")


def test_non_finite_input_raises(device):
    hidden, mask = torch.randn(2, 3, 8, device=device), torch.ones(2, 3, device=device)
    weight, bias = torch.randn(20, 8, device=device), torch.randn(20, device=device)
    mask[1, 2] = 0
    hidden[1, 2, 0] = float("nan")  # in padding: ignored
    _ops.splade_pool(hidden, mask, weight, bias)
    hidden[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="hidden holds NaN or inf"):
        _ops.splade_pool(hidden, mask, weight, bias)
    hidden[0, 1, 3] = 0
    with pytest.raises(ValueError, match="weight holds NaN or inf"):
        _ops.splade_pool(hidden, mask, weight.index_fill(0, torch.tensor([3], device=device), float("inf")), bias)
    with pytest.raises(ValueError, match="bias holds NaN or inf"):
        _ops.splade_pool(hidden, mask, weight, bias.index_fill(0, torch.tensor([3], device=device), float("nan")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 6, 16, generator=g).to(dtype)
    mask = random_mask(3, 6, left_padded=False, generator=g)
    weight, bias = projection(70, 16, dtype, g)
    torch.library.opcheck(torch.ops.sentfuse.splade_pool.default, (hidden, mask, weight, bias, "log1p_relu", "sum"))
    cu_seqlens = torch.tensor([0, 4, 4, 9])
    torch.library.opcheck(torch.ops.sentfuse.splade_pool_varlen.default,
                          (torch.randn(9, 16).to(dtype), cu_seqlens, weight, None, "relu", "max"))
