"""masked_pool, masked_pool_varlen and l2_normalize on CPU against sentfuse.reference."""

import pytest
import torch

from sentfuse import _ops, reference

MODES = reference.POOLING_MODES
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Both sides compute in fp32; reduced dtypes differ only by the final rounding (and summation order).
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def random_mask(batch, seq_len, *, left_padded=False, generator=None):
    """[batch, seq_len] int64 with random lengths 0..seq_len (row 0 full, row 1 empty when batch > 1)."""
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=generator)
    if batch > 0:
        lengths[0] = seq_len
    if batch > 1:
        lengths[1] = 0
    positions = torch.arange(seq_len).unsqueeze(0)
    if left_padded:
        return (positions >= seq_len - lengths.unsqueeze(1)).long()
    return (positions < lengths.unsqueeze(1)).long()


def assert_close(actual, expected, dtype):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("left_padded", [False, True])
def test_masked_pool_matches_reference(mode, dtype, normalize, left_padded):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 13, 37, generator=g).to(dtype)
    mask = random_mask(7, 13, left_padded=left_padded, generator=g)
    got = _ops.masked_pool(hidden, mask, mode, normalize)
    assert_close(got, reference.masked_pool(hidden, mask, mode, normalize), dtype)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip_tokens", [1, 3, 20])
@pytest.mark.parametrize("left_padded", [False, True])
def test_skip_prompt_tokens(mode, skip_tokens, left_padded):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 11, 16, generator=g)
    mask = random_mask(6, 11, left_padded=left_padded, generator=g)
    got = _ops.masked_pool(hidden, mask, mode, True, skip_tokens)
    assert_close(got, reference.masked_pool(hidden, mask, mode, True, skip_tokens), torch.float32)


def test_skip_tokens_excludes_the_prompt():
    hidden = torch.randn(1, 6, 8)
    mask = torch.ones(1, 6, dtype=torch.long)
    got = _ops.masked_pool(hidden, mask, "mean", False, 2)
    torch.testing.assert_close(got, hidden[:, 2:].mean(dim=1))


@pytest.mark.parametrize("mode", MODES)
def test_padding_content_is_ignored(mode):
    hidden = torch.randn(4, 9, 24)
    mask = random_mask(4, 9, left_padded=mode == "lasttoken")
    polluted = hidden.masked_fill(mask.unsqueeze(-1) == 0, 1e6)
    torch.testing.assert_close(_ops.masked_pool(polluted, mask, mode), _ops.masked_pool(hidden, mask, mode))


@pytest.mark.parametrize("mode", MODES)
def test_row_without_valid_token_is_zero(mode):
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    out = _ops.masked_pool(hidden, mask, mode, True)
    assert torch.equal(out[0], torch.zeros(8))
    # Skipping past every token empties a row too.
    assert torch.equal(_ops.masked_pool(hidden, mask, mode, True, 2)[1], torch.zeros(8))


@pytest.mark.parametrize("mode", MODES)
def test_length_one_rows(mode):
    hidden = torch.randn(3, 1, 10)
    mask = torch.ones(3, 1, dtype=torch.long)
    torch.testing.assert_close(_ops.masked_pool(hidden, mask, mode), hidden[:, 0])


def test_empty_shapes():
    assert _ops.masked_pool(torch.randn(0, 5, 8), torch.ones(0, 5), "mean").shape == (0, 8)
    assert _ops.masked_pool(torch.randn(3, 5, 0), torch.ones(3, 5), "mean").shape == (3, 0)
    assert torch.equal(_ops.masked_pool(torch.randn(3, 0, 8), torch.ones(3, 0), "max"), torch.zeros(3, 8))
    assert _ops.masked_pool_varlen(torch.randn(0, 8), torch.tensor([0]), "mean").shape == (0, 8)
    assert _ops.l2_normalize(torch.randn(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.int64, torch.float32, torch.uint8])
def test_mask_dtypes(mask_dtype):
    hidden = torch.randn(5, 7, 12)
    mask = random_mask(5, 7)
    expected = reference.masked_pool(hidden, mask, "mean")
    torch.testing.assert_close(_ops.masked_pool(hidden, mask.to(mask_dtype), "mean"), expected)


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(mode):
    base = torch.randn(12, 8, 40)
    hidden = base.transpose(0, 1)[:, ::2]  # [8, 6, 40] with odd batch/token strides
    mask = random_mask(12, 8).t()[:, ::2]
    assert not hidden.is_contiguous() and not mask.is_contiguous()
    expected = reference.masked_pool(hidden.contiguous(), mask.contiguous(), mode, True)
    torch.testing.assert_close(_ops.masked_pool(hidden, mask, mode, True), expected)
    features_strided = torch.randn(4, 6, 20).transpose(1, 2)  # feature stride != 1
    mask2 = torch.ones(4, 20, dtype=torch.long)
    torch.testing.assert_close(
        _ops.masked_pool(features_strided, mask2, mode), reference.masked_pool(features_strided, mask2, mode)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip_tokens", [0, 2])
def test_varlen_matches_padded(mode, dtype, skip_tokens):
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 0, 1, 17, 3])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    hidden = torch.randn(int(lengths.sum()), 33, generator=g).to(dtype)
    got = _ops.masked_pool_varlen(hidden, cu_seqlens.int(), mode, True, skip_tokens)
    expected = reference.masked_pool_varlen(hidden, cu_seqlens, mode, True, skip_tokens)
    assert_close(got, expected, dtype)


def test_varlen_rejects_bad_offsets():
    hidden = torch.randn(10, 4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        _ops.masked_pool_varlen(hidden, torch.tensor([0, 6, 4]), "mean")
    with pytest.raises(ValueError, match="cu_seqlens"):
        _ops.masked_pool_varlen(hidden, torch.tensor([0, 11]), "mean")
    with pytest.raises(TypeError, match="cu_seqlens must be int32 or int64"):
        _ops.masked_pool_varlen(hidden, torch.tensor([0.0, 10.0]), "mean")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [None, 1, 7, 64])
def test_l2_normalize(dtype, dim):
    x = torch.randn(9, 64).to(dtype)
    x[3] = 0
    got = _ops.l2_normalize(x, dim)
    assert_close(got, reference.l2_normalize(x, dim), dtype)
    assert torch.equal(got[3], torch.zeros_like(got[3]))
    assert got.shape == (9, dim or 64)


def test_l2_normalize_rejects_bad_dim():
    with pytest.raises(ValueError, match=r"dim must be in \[1, 8\]"):
        _ops.l2_normalize(torch.randn(2, 8), 9)
    with pytest.raises(ValueError, match="x must be"):
        _ops.l2_normalize(torch.randn(8))


def test_errors_name_the_argument_and_shapes():
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, seq\] = \[2, 5\].*got \[2, 4\]"):
        _ops.masked_pool(torch.randn(2, 5, 8), torch.ones(2, 4), "mean")
    with pytest.raises(ValueError, match=r"hidden must be \[batch, seq, hidden\], got shape \[2, 5\]"):
        _ops.masked_pool(torch.randn(2, 5), torch.ones(2, 5), "mean")
    with pytest.raises(TypeError, match="hidden must be float32, float16 or bfloat16"):
        _ops.masked_pool(torch.randn(2, 5, 8).double(), torch.ones(2, 5), "mean")
    with pytest.raises(ValueError, match="mode must be one of .* got 'median'"):
        _ops.masked_pool(torch.randn(2, 5, 8), torch.ones(2, 5), "median")
    with pytest.raises(ValueError, match="skip_tokens must be >= 0"):
        _ops.masked_pool(torch.randn(2, 5, 8), torch.ones(2, 5), "mean", False, -1)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_masked_pool(mode):
    hidden = torch.randn(3, 6, 16)
    mask = random_mask(3, 6)
    torch.library.opcheck(torch.ops.sentfuse.masked_pool.default, (hidden, mask, mode, True, 1))
    cu_seqlens = torch.tensor([0, 4, 4, 9])
    torch.library.opcheck(torch.ops.sentfuse.masked_pool_varlen.default, (torch.randn(9, 16), cu_seqlens, mode))


def test_opcheck_l2_normalize():
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (torch.randn(5, 12), 6))
    torch.library.opcheck(torch.ops.sentfuse.l2_normalize.default, (torch.randn(5, 12).bfloat16(), None))


def test_torch_compile_traces_the_ops():
    @torch.compile(backend="eager", fullgraph=True)
    def pool(hidden, mask):
        return _ops.l2_normalize(_ops.masked_pool(hidden, mask, "mean"), 8)

    hidden = torch.randn(4, 6, 16)
    mask = random_mask(4, 6)
    expected = reference.l2_normalize(reference.masked_pool(hidden, mask, "mean"), 8)
    torch.testing.assert_close(pool(hidden, mask), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_rows_split_across_threads(dtype):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(64, 130, 384, generator=g).to(dtype)
    mask = random_mask(64, 130, generator=g)
    for mode in MODES:
        assert_close(_ops.masked_pool(hidden, mask, mode, True), reference.masked_pool(hidden, mask, mode, True), dtype)
