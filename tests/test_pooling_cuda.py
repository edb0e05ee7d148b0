"""masked_pool, masked_pool_varlen and l2_normalize on CUDA against sentfuse.reference (run on CPU in fp32)."""

import pytest
import torch

from sentfuse import _ops, reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
    pytest.mark.skipif(not _ops.WITH_CUDA, reason="sentfuse was built without CUDA kernels (SENTFUSE_CUDA=OFF)"),
]

MODES = reference.POOLING_MODES
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32; reduced dtypes differ only by the final rounding (and summation order).
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
# 1 and 383: no vector width divides them (scalar path); 768: 16-byte vectors in every dtype.
HIDDEN_SIZES = [1, 383, 768]


def lengths_with_edges(batch, seq_len, generator):
    """Random lengths 0..seq_len, with a full row, an empty row and a length-1 row when batch allows."""
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=generator)
    for i, n in enumerate([seq_len, 0, 1][:batch]):
        lengths[i] = n
    return lengths


def make_mask(lengths, seq_len, *, left_padded):
    positions = torch.arange(seq_len).unsqueeze(0)
    if left_padded:
        return (positions >= seq_len - lengths.unsqueeze(1)).long()
    return (positions < lengths.unsqueeze(1)).long()


def expected_pool(hidden, mask, mode, normalize, skip_tokens=0):
    return reference.masked_pool(hidden.cpu(), mask.cpu(), mode, normalize, skip_tokens)


def assert_close(actual, expected, dtype):
    assert actual.is_cuda
    assert actual.dtype == expected.dtype == dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.cpu().float(), expected.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden_size", HIDDEN_SIZES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_masked_pool_matches_reference(dtype, mode, hidden_size, normalize, left_padded):
    g = torch.Generator().manual_seed(hidden_size)
    hidden = torch.randn(9, 37, hidden_size, generator=g).to(dtype)
    mask = make_mask(lengths_with_edges(9, 37, g), 37, left_padded=left_padded)
    got = _ops.masked_pool(hidden.cuda(), mask.cuda(), mode, normalize)
    assert_close(got, expected_pool(hidden, mask, mode, normalize), dtype)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip_tokens", [1, 3, 40, 2**40])
@pytest.mark.parametrize("left_padded", [False, True])
def test_skip_tokens(mode, skip_tokens, left_padded):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(8, 33, 64, generator=g)
    mask = make_mask(lengths_with_edges(8, 33, g), 33, left_padded=left_padded)
    for normalize in (False, True):
        got = _ops.masked_pool(hidden.cuda(), mask.cuda(), mode, normalize, skip_tokens)
        assert_close(got, expected_pool(hidden, mask, mode, normalize, skip_tokens), torch.float32)


@pytest.mark.parametrize("mode", MODES)
def test_mask_with_holes_and_any_dtype(mode):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 50, 96, generator=g)
    mask = (torch.rand(6, 50, generator=g) < 0.6).long()
    mask[0] = 0
    mask[1, :] = 0
    mask[1, 17] = 1
    expected = expected_pool(hidden, mask, mode, True, 2)
    for m in (mask, mask.bool(), mask.float() * 3, mask.int()):
        assert_close(_ops.masked_pool(hidden.cuda(), m.cuda(), mode, True, 2), expected, torch.float32)


@pytest.mark.parametrize("mode", MODES)
def test_padding_content_is_ignored(mode):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 21, 128, generator=g).cuda()
    mask = make_mask(lengths_with_edges(5, 21, g), 21, left_padded=mode == "lasttoken").cuda()
    polluted = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("nan"))
    torch.testing.assert_close(_ops.masked_pool(polluted, mask, mode), _ops.masked_pool(hidden, mask, mode))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_hidden(dtype, mode):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(7, 30, 2 * 256 + 1, generator=g).to(dtype).cuda()
    mask = make_mask(lengths_with_edges(7, 15, g), 15, left_padded=False).cuda()
    views = {
        "every other token": base[:, ::2, :256],  # token stride 2 * 513: no vector width fits
        "misaligned start": base[:, :15, 1:257],  # offset by one element
        "batch-major transposed": base[:, :15, :256].transpose(0, 1).contiguous().transpose(0, 1),
        "feature stride 2": base[:, :15, ::2],  # not unit stride: copied first
    }
    for name, hidden in views.items():
        got = _ops.masked_pool(hidden, mask, mode, True, 1)
        assert_close(got, expected_pool(hidden, mask, mode, True, 1), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
def test_row_without_valid_token_is_zero(mode, normalize):
    hidden = torch.randn(3, 5, 8, device="cuda")
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]], device="cuda")
    out = _ops.masked_pool(hidden, mask, mode, normalize)
    assert torch.equal(out[0], torch.zeros(8, device="cuda"))
    # Skipping past every token empties a row too.
    assert torch.equal(_ops.masked_pool(hidden, mask, mode, normalize, 2)[1], torch.zeros(8, device="cuda"))
    assert torch.equal(_ops.masked_pool(hidden, mask, mode, normalize, 1)[2], torch.zeros(8, device="cuda"))


@pytest.mark.parametrize("mode", MODES)
def test_length_one_rows(mode):
    hidden = torch.randn(4, 6, 40, device="cuda")
    mask = torch.zeros(4, 6, dtype=torch.long, device="cuda")
    for row, pos in enumerate([0, 5, 2, 3]):
        mask[row, pos] = 1
    expected = hidden[torch.arange(4), torch.tensor([0, 5, 2, 3])]
    torch.testing.assert_close(_ops.masked_pool(hidden, mask, mode), expected)


@pytest.mark.parametrize("shape", [(0, 7, 16), (3, 0, 16), (3, 7, 0), (0, 0, 0)])
@pytest.mark.parametrize("mode", MODES)
def test_empty_shapes(shape, mode):
    hidden = torch.randn(*shape, device="cuda", dtype=torch.float16)
    mask = torch.ones(shape[:2], dtype=torch.long, device="cuda")
    out = _ops.masked_pool(hidden, mask, mode, True)
    assert out.shape == (shape[0], shape[2]) and out.dtype == torch.float16 and out.is_cuda
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [4096, 16384, 65536])
def test_large_hidden_with_normalize(dtype, hidden_size):
    # 16384 fp32 needs opt-in shared memory; 65536 no longer fits and normalizes in a second kernel.
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 9, hidden_size, generator=g).to(dtype)
    mask = make_mask(torch.tensor([9, 0, 4]), 9, left_padded=False)
    for mode in ("mean", "max", "weightedmean"):
        got = _ops.masked_pool(hidden.cuda(), mask.cuda(), mode, True)
        assert_close(got, expected_pool(hidden, mask, mode, True), dtype)


def test_long_rows_and_small_batch():
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(2, 3000, 384, generator=g).half()
    mask = make_mask(torch.tensor([3000, 1777]), 3000, left_padded=True)
    for mode in MODES:
        got = _ops.masked_pool(hidden.cuda(), mask.cuda(), mode, True, 5)
        assert_close(got, expected_pool(hidden, mask, mode, True, 5), torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden_size", HIDDEN_SIZES)
@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64])
def test_varlen_matches_reference(dtype, mode, hidden_size, offsets_dtype):
    g = torch.Generator().manual_seed(7)
    lengths = lengths_with_edges(10, 29, g)
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(offsets_dtype)
    hidden = torch.randn(int(lengths.sum()), hidden_size, generator=g).to(dtype)
    for normalize, skip_tokens in ((False, 0), (True, 0), (True, 2)):
        got = _ops.masked_pool_varlen(hidden.cuda(), cu_seqlens.cuda(), mode, normalize, skip_tokens)
        expected = reference.masked_pool_varlen(hidden, cu_seqlens, mode, normalize, skip_tokens)
        assert_close(got, expected, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_varlen_agrees_with_padded(mode):
    g = torch.Generator().manual_seed(8)
    lengths = lengths_with_edges(6, 20, g)
    hidden = torch.randn(6, 20, 256, generator=g).cuda()
    mask = make_mask(lengths, 20, left_padded=False).cuda()
    packed = hidden[mask.bool()]
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).cuda()
    for skip_tokens in (0, 3):
        torch.testing.assert_close(_ops.masked_pool_varlen(packed, cu_seqlens, mode, True, skip_tokens),
                                   _ops.masked_pool(hidden, mask, mode, True, skip_tokens))


def test_varlen_non_contiguous_and_empty():
    g = torch.Generator().manual_seed(9)
    wide = torch.randn(40, 2 * 200, generator=g).cuda()
    hidden = wide[:, 100:300]  # row stride 400, start offset 100 elements
    cu_seqlens = torch.tensor([0, 0, 1, 17, 40], device="cuda")
    expected = reference.masked_pool_varlen(hidden.cpu(), cu_seqlens.cpu(), "mean", True)
    assert_close(_ops.masked_pool_varlen(hidden, cu_seqlens, "mean", True), expected, torch.float32)
    assert _ops.masked_pool_varlen(hidden, cu_seqlens[:1], "mean").shape == (0, 200)
    out = _ops.masked_pool_varlen(hidden[:0], torch.tensor([0, 0, 0], device="cuda"), "max", True)
    assert out.shape == (2, 200) and torch.equal(out, torch.zeros_like(out))


def test_varlen_bad_offsets_stay_in_bounds():
    hidden = torch.randn(10, 64, device="cuda")
    # sequence 1 has a negative length; 2 runs past the end; 3 starts before 0.
    cu_seqlens = torch.tensor([0, 5, 3, 100, -7], device="cuda")
    out = _ops.masked_pool_varlen(hidden, cu_seqlens, "mean")
    torch.cuda.synchronize()
    torch.testing.assert_close(out[0], hidden[0:5].mean(0))
    assert torch.equal(out[1], torch.zeros(64, device="cuda"))
    torch.testing.assert_close(out[2], hidden[3:10].mean(0))
    assert torch.equal(out[3], torch.zeros(64, device="cuda"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", [1, 383, 768, 4096])
@pytest.mark.parametrize("dim", [None, 1, 64, 257])
def test_l2_normalize_matches_reference(dtype, features, dim):
    if dim is not None and dim > features:
        pytest.skip("dim beyond the feature count")
    g = torch.Generator().manual_seed(features)
    x = torch.randn(37, features, generator=g).to(dtype)
    x[3] = 0  # zero rows stay zero
    got = _ops.l2_normalize(x.cuda(), dim)
    assert_close(got, reference.l2_normalize(x, dim), dtype)


def test_l2_normalize_layouts():
    g = torch.Generator().manual_seed(10)
    wide = torch.randn(50, 1030, generator=g).cuda()
    for x in (wide[:, 3:771], wide[::3, :768], wide[:, :768].t().contiguous().t(), wide[:8, :64].t()):
        assert_close(_ops.l2_normalize(x), reference.l2_normalize(x.cpu()), torch.float32)
        dim = min(32, x.shape[1])
        assert_close(_ops.l2_normalize(x, dim), reference.l2_normalize(x.cpu(), dim), torch.float32)
    assert _ops.l2_normalize(wide[:0]).shape == (0, 1030)
    assert _ops.l2_normalize(torch.empty(4, 0, device="cuda")).shape == (4, 0)


def test_rejects_bad_arguments():
    hidden = torch.randn(2, 3, 8, device="cuda")
    mask = torch.ones(2, 3, device="cuda")
    with pytest.raises(ValueError, match="mode"):
        _ops.masked_pool(hidden, mask, "median")
    with pytest.raises(ValueError, match="attention_mask is on"):
        _ops.masked_pool(hidden, mask.cpu(), "mean")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        _ops.masked_pool(hidden.double(), mask, "mean")
    with pytest.raises(ValueError, match="cu_seqlens is on"):
        _ops.masked_pool_varlen(hidden[0], torch.tensor([0, 3]), "mean")
    with pytest.raises(ValueError, match="dim must be in"):
        _ops.l2_normalize(hidden[0], 9)


def test_result_on_the_inputs_device_and_stream():
    hidden = torch.randn(4, 9, 64, device="cuda")
    mask = torch.ones(4, 9, dtype=torch.long, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        hidden_s, mask_s = hidden.clone(), mask.clone()
        out = _ops.masked_pool(hidden_s, mask_s, "mean", True)
    stream.synchronize()
    torch.testing.assert_close(out, _ops.masked_pool(hidden, mask, "mean", True))
    assert out.device == hidden.device


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_masked_pool(mode):
    hidden = torch.randn(3, 7, 40, device="cuda", dtype=torch.float16)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]], device="cuda")
    torch.library.opcheck(torch.ops.sentfuse.masked_pool.default, (hidden, mask, mode, True, 1))


def test_opcheck_masked_pool_varlen():
    hidden = torch.randn(12, 40, device="cuda", dtype=torch.bfloat16)
    for offsets_dtype in (torch.int32, torch.int64):
        cu_seqlens = torch.tensor([0, 5, 5, 12], device="cuda", dtype=offsets_dtype)
        torch.library.opcheck(torch.ops.sentfuse.masked_pool_varlen.default, (hidden, cu_seqlens, "weightedmean", True, 1))


def test_opcheck_l2_normalize():
    x = torch.randn(6, 48, device="cuda")
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (x, None))
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (x, 16))
