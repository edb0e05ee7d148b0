"""masked_pool, masked_pool_varlen and l2_normalize on every device against sentfuse.reference (CPU, fp32).

Argument errors are covered for every op and device in test_op_errors.py.
"""

import pytest
import torch

from op_devices import cuda_only, device  # noqa: F401  (fixture)
from sentfuse import _ops, reference

MODES = reference.POOLING_MODES
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32; reduced dtypes differ only by the final rounding (and summation order).
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def random_mask(batch, seq_len, *, left_padded=False, generator=None):
    """[batch, seq_len] int64 with random lengths 0..seq_len (row 0 full, row 1 empty, row 2 length 1)."""
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=generator)
    for i, n in enumerate([seq_len, 0, 1][:batch]):
        lengths[i] = n
    positions = torch.arange(seq_len).unsqueeze(0)
    if left_padded:
        return (positions >= seq_len - lengths.unsqueeze(1)).long()
    return (positions < lengths.unsqueeze(1)).long()


def assert_close(actual, expected, dtype, device):  # noqa: F811
    assert actual.device.type == device
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu().float(), expected.float(), **TOL[dtype])


def pool_on(device, hidden, mask, *args):  # noqa: F811
    return _ops.masked_pool(hidden.to(device), mask.to(device), *args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_masked_pool_matches_reference(device, mode, dtype, normalize, left_padded):  # noqa: F811
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 11, 72, generator=g).to(dtype)
    mask = random_mask(6, 11, left_padded=left_padded, generator=g)
    expected = reference.masked_pool(hidden, mask, mode, normalize)
    assert_close(pool_on(device, hidden, mask, mode, normalize), expected, dtype, device)


@pytest.mark.parametrize("hidden_size", [1, 383, 4096, 65536])
def test_hidden_sizes_without_vector_width_or_beyond_shared_memory(device, hidden_size):  # noqa: F811
    # 1 and 383: no vector width divides them; 65536 fp32 does not fit beside the fold buffer (unfused norm).
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 9, hidden_size, generator=g)
    mask = random_mask(3, 9, generator=g)
    for mode in ("mean", "max", "weightedmean"):
        expected = reference.masked_pool(hidden, mask, mode, True)
        assert_close(pool_on(device, hidden, mask, mode, True), expected, torch.float32, device)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip_tokens", [1, 3, 20, 2**40])
def test_skip_prompt_tokens(device, mode, skip_tokens):  # noqa: F811
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, 12, 16, generator=g)
    mask = random_mask(5, 12, left_padded=skip_tokens == 3, generator=g)
    expected = reference.masked_pool(hidden, mask, mode, True, skip_tokens)
    assert_close(pool_on(device, hidden, mask, mode, True, skip_tokens), expected, torch.float32, device)


@pytest.mark.parametrize("mode", MODES)
def test_padding_content_and_mask_holes(device, mode):  # noqa: F811
    hidden = torch.randn(4, 9, 24)
    mask = random_mask(4, 9, left_padded=mode == "lasttoken")
    polluted = hidden.masked_fill(mask.unsqueeze(-1) == 0, 1e6)
    torch.testing.assert_close(pool_on(device, polluted, mask, mode), pool_on(device, hidden, mask, mode))
    holes = (torch.rand(4, 9, generator=torch.Generator().manual_seed(3)) > 0.4).long()
    assert_close(pool_on(device, hidden, holes, mode), reference.masked_pool(hidden, holes, mode), torch.float32,
                 device)


@pytest.mark.parametrize("mode", MODES)
def test_row_without_valid_token_is_zero(device, mode):  # noqa: F811
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert torch.equal(pool_on(device, hidden, mask, mode, True)[0].cpu(), torch.zeros(8))
    # Skipping past every token empties a row too.
    assert torch.equal(pool_on(device, hidden, mask, mode, True, 2)[1].cpu(), torch.zeros(8))


@pytest.mark.parametrize("mode", MODES)
def test_length_one_rows(device, mode):  # noqa: F811
    hidden = torch.randn(3, 1, 10)
    mask = torch.ones(3, 1, dtype=torch.long)
    torch.testing.assert_close(pool_on(device, hidden, mask, mode).cpu(), hidden[:, 0])


def test_empty_shapes(device):  # noqa: F811
    ones = lambda *s: torch.ones(*s, device=device)  # noqa: E731
    randn = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    for mode in ("mean", "max"):
        assert _ops.masked_pool(randn(0, 5, 8), ones(0, 5), mode).shape == (0, 8)
        assert _ops.masked_pool(randn(3, 5, 0), ones(3, 5), mode).shape == (3, 0)
        assert torch.equal(_ops.masked_pool(randn(3, 0, 8), ones(3, 0), mode).cpu(), torch.zeros(3, 8))
    assert _ops.masked_pool_varlen(randn(0, 8), torch.tensor([0], device=device), "mean").shape == (0, 8)
    assert _ops.l2_normalize(randn(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int16, torch.int32, torch.int64, torch.float32, torch.uint8])
def test_mask_dtypes(device, mask_dtype):  # noqa: F811
    hidden = torch.randn(5, 7, 12)
    mask = random_mask(5, 7)
    expected = reference.masked_pool(hidden, mask, "mean")
    assert_close(pool_on(device, hidden, mask.to(mask_dtype), "mean"), expected, torch.float32, device)
    if not mask_dtype.is_floating_point and mask_dtype not in (torch.bool, torch.uint8):
        # Any nonzero value is a valid token, also one whose low byte is zero (CUDA reads the mask as stored).
        wide = mask.to(mask_dtype) * 256
        assert_close(pool_on(device, hidden, wide, "mean"), expected, torch.float32, device)
    if mask_dtype.is_floating_point:
        signed_zero = torch.where(mask.bool(), 1.0, -0.0).to(mask_dtype)  # -0.0 is masked out
        assert_close(pool_on(device, hidden, signed_zero, "mean"), expected, torch.float32, device)


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(device, mode):  # noqa: F811
    base = torch.randn(12, 8, 40, device=device)
    hidden = base.transpose(0, 1)[:, ::2]  # [8, 6, 40] with odd batch/token strides
    mask = random_mask(12, 8).to(device).t()[:, ::2]
    assert not hidden.is_contiguous() and not mask.is_contiguous()
    expected = reference.masked_pool(hidden.cpu().contiguous(), mask.cpu().contiguous(), mode, True)
    assert_close(_ops.masked_pool(hidden, mask, mode, True), expected, torch.float32, device)
    features_strided = torch.randn(4, 6, 20, device=device).transpose(1, 2)  # feature stride != 1
    mask2 = torch.ones(4, 20, dtype=torch.long, device=device)
    expected = reference.masked_pool(features_strided.cpu(), mask2.cpu(), mode)
    assert_close(_ops.masked_pool(features_strided, mask2, mode), expected, torch.float32, device)
    offset = torch.randn(1, 3 * 6 * 40 + 1, device=device)[0, 1:].view(3, 6, 40)  # 4-byte aligned only
    expected = reference.masked_pool(offset.cpu(), torch.ones(3, 6), mode)
    assert_close(_ops.masked_pool(offset, torch.ones(3, 6, device=device), mode), expected, torch.float32, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 3000, 384), (3, 700, 768), (64, 130, 384)])
def test_long_rows_small_batch(device, dtype, shape):  # noqa: F811
    # Few long rows: CUDA cuts each row into token ranges (one block each) and folds their partials.
    g = torch.Generator().manual_seed(4)
    batch, seq_len, hidden_size = shape
    hidden = torch.randn(*shape, generator=g).to(dtype)
    mask = random_mask(batch, seq_len, left_padded=batch == 3, generator=g)
    mask[0, seq_len // 3] = 0  # a hole inside the first split
    for mode in MODES:
        for normalize, skip in ((True, 5), (False, 0)):
            expected = reference.masked_pool(hidden, mask, mode, normalize, skip)
            assert_close(pool_on(device, hidden, mask, mode, normalize, skip), expected, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_varlen_matches_reference(device, mode, dtype):  # noqa: F811
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([5, 0, 1, 17, 3])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    hidden = torch.randn(int(lengths.sum()), 40, generator=g).to(dtype)
    for offsets_dtype, skip_tokens in ((torch.int32, 0), (torch.int64, 2)):
        got = _ops.masked_pool_varlen(hidden.to(device), cu_seqlens.to(device, offsets_dtype), mode, True, skip_tokens)
        assert_close(got, reference.masked_pool_varlen(hidden, cu_seqlens, mode, True, skip_tokens), dtype, device)


def test_varlen_rejects_bad_offsets():
    # The CPU kernel validates offsets; the CUDA one clamps them (validating would sync with the device).
    hidden = torch.randn(10, 4)
    for bad in ([0, 11], [0, 5, 3], [-1, 4]):
        with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing offsets"):
            _ops.masked_pool_varlen(hidden, torch.tensor(bad), "mean")


@cuda_only
def test_varlen_bad_offsets_stay_in_bounds_on_cuda():
    hidden = torch.randn(10, 32, device="cuda")
    out = _ops.masked_pool_varlen(hidden, torch.tensor([0, 50, 3, -7, 10], device="cuda"), "mean")
    torch.cuda.synchronize()
    assert out.shape == (4, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [None, 1, 7, 64])
def test_l2_normalize(device, dtype, dim):  # noqa: F811
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(6)).to(dtype)
    x[3] = 0  # a zero row stays zero
    assert_close(_ops.l2_normalize(x.to(device), dim), reference.l2_normalize(x, dim), dtype, device)
    strided = x.to(device)[::2, ::2]
    assert_close(_ops.l2_normalize(strided, None), reference.l2_normalize(x[::2, ::2], None), dtype, device)


@cuda_only
def test_result_on_the_current_stream_cuda():
    hidden = torch.randn(4, 9, 64, device="cuda")
    mask = torch.ones(4, 9, dtype=torch.long, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        hidden_s, mask_s = hidden.clone(), mask.clone()
        out = _ops.masked_pool(hidden_s, mask_s, "mean", True)
    stream.synchronize()
    torch.testing.assert_close(out, _ops.masked_pool(hidden, mask, "mean", True))


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_masked_pool(device, mode):  # noqa: F811
    hidden = torch.randn(3, 6, 16, device=device, dtype=torch.float16)
    mask = random_mask(3, 6).to(device)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool.default, (hidden, mask, mode, True, 1))
    cu_seqlens = torch.tensor([0, 4, 4, 9], device=device)
    hidden = torch.randn(9, 16, device=device)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool_varlen.default, (hidden, cu_seqlens, mode))


def test_opcheck_l2_normalize(device):  # noqa: F811
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (torch.randn(5, 12, device=device), 6))
    x = torch.randn(5, 12, device=device).bfloat16()
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (x, None))


def test_torch_compile_traces_the_ops():
    @torch.compile(backend="eager", fullgraph=True)
    def pool(hidden, mask):
        return _ops.l2_normalize(_ops.masked_pool(hidden, mask, "mean"), 8)

    hidden = torch.randn(4, 6, 16)
    mask = random_mask(4, 6)
    expected = reference.l2_normalize(reference.masked_pool(hidden, mask, "mean"), 8)
    torch.testing.assert_close(pool(hidden, mask), expected)
