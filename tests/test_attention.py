"""packed_attention (self-attention heads of a packed QKV product) against reference.py, and FusedSelfAttention
running it against the transformers module it replaces."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference
from sentfuse.model import backbone, fused_blocks, packed_linear
from sentfuse.model.fused_blocks import AdditiveMask, FusedSelfAttention

# max |error| relative to max |v|: fp32 another summation order; 16-bit: the output's rounding and SDPA's 16-bit P
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2 ** -8, torch.bfloat16: 2 ** -6}
AMX = fused_blocks._amx_attention(32)
# (rows, width, heads, head size): widths off the 16-row tiles, head sizes of one and two tile depths, one the AMX
# kernel does not take (48: the composite)
SHAPES = [(3, 37, 2, 32), (2, 16, 3, 64), (4, 5, 1, 32), (1, 1, 2, 32), (2, 33, 2, 48), (2, 70, 12, 32)]


def make(rows: int, width: int, heads: int, head_size: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(rows, width, 3 * heads * head_size, generator=gen) * 2).to(dtype).to(device)
    # every kind of row: full, none valid, one token, past the width (clamped), random
    lengths = torch.randint(0, width + 1, (rows,), generator=gen)
    for r, n in enumerate([width, 0, 1, width + 5][:rows]):
        lengths[r] = n
    return qkv, lengths.to(device)


def check(got: torch.Tensor, want: torch.Tensor, qkv: torch.Tensor, lengths: torch.Tensor, tolerance: float) -> None:
    valid = torch.arange(qkv.shape[1], device=qkv.device)[None] < lengths[:, None]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.all(got[~valid] == 0), "padded queries must be zeros"
    error = (got.float() - want.float()).abs().max().item()
    assert error <= tolerance * qkv.float().abs().max().item(), error


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(device, shape, dtype):
    rows, width, heads, head_size = shape
    qkv, lengths = make(*shape, dtype, device)
    scale = head_size ** -0.5
    got = _ops.packed_attention(qkv, lengths, heads, scale)
    check(got, reference.packed_attention(qkv, lengths, heads, scale), qkv, lengths, TOLERANCE[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_output_of_bf16_heads(device, shape):
    """bf16 qkv, fp32 context: on AMX (head sizes of whole tile depths) the probabilities enter P V as two bf16
    terms, so the error is far below one bf16 rounding."""
    rows, width, heads, head_size = shape
    qkv, lengths = make(*shape, torch.bfloat16, device, seed=1)
    got = _ops.packed_attention(qkv, lengths, heads, 0.3, out_dtype=torch.float32)
    amx = device == "cpu" and AMX and head_size % 32 == 0
    check(got, reference.packed_attention(qkv, lengths, heads, 0.3, out_dtype=torch.float32), qkv, lengths,
          1e-4 if amx else TOLERANCE[torch.bfloat16])


def test_strided_qkv_and_int32_lengths(device):
    qkv, lengths = make(3, 20, 2, 32, torch.bfloat16, device)
    wide = torch.cat([qkv, qkv], dim=-1)[..., : qkv.shape[-1]]  # rows strided, features contiguous
    got = _ops.packed_attention(wide, lengths.int(), 2, 0.2)
    assert torch.equal(got, _ops.packed_attention(qkv, lengths, 2, 0.2))


def test_empty_inputs(device):
    qkv = torch.zeros(0, 7, 3 * 64, dtype=torch.bfloat16, device=device)
    assert _ops.packed_attention(qkv, torch.zeros(0, dtype=torch.int64, device=device), 2, 1.0).shape == (0, 7, 64)
    qkv = torch.zeros(2, 0, 3 * 64, device=device)
    assert _ops.packed_attention(qkv, torch.zeros(2, dtype=torch.int64, device=device), 2, 1.0).shape == (2, 0, 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    qkv, lengths = make(3, 19, 2, 32, dtype, device)
    torch.library.opcheck(torch.ops.sentfuse.packed_attention.default, (qkv, lengths, 2, 0.25),
                          {"out_dtype": torch.float32})


def test_argument_errors(device):
    qkv, lengths = make(2, 5, 2, 32, torch.bfloat16, device)
    with pytest.raises(ValueError, match="qkv must be"):
        _ops.packed_attention(qkv[0], lengths, 2, 1.0)
    with pytest.raises(ValueError, match="3 x 5 heads"):
        _ops.packed_attention(qkv, lengths, 5, 1.0)
    with pytest.raises(ValueError, match="heads must be >= 1"):
        _ops.packed_attention(qkv, lengths, 0, 1.0)
    with pytest.raises(ValueError, match=r"lengths must be \[2\]"):
        _ops.packed_attention(qkv, lengths[:1], 2, 1.0)
    with pytest.raises(TypeError, match="lengths must be int32 or int64"):
        _ops.packed_attention(qkv, lengths.float(), 2, 1.0)
    with pytest.raises(TypeError, match="out_dtype must be float32"):
        _ops.packed_attention(qkv, lengths, 2, 1.0, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="scale must be finite"):
        _ops.packed_attention(qkv, lengths, 2, float("nan"))
    with pytest.raises(TypeError, match="qkv must be float32"):
        _ops.packed_attention(qkv.int(), lengths, 2, 1.0)


def test_lengths_of_padding_masks():
    masks = AdditiveMask()
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2] = False
    right = valid[:, None, None, :].expand(3, 1, 6, 6)
    assert torch.equal(masks.lengths(right, 3, 6, True), torch.tensor([6, 4, 0]))
    assert torch.equal(masks.lengths(None, 2, 5, True), torch.tensor([5, 5]))
    left = valid.flip(-1)[:, None, None, :].expand(3, 1, 6, 6)
    assert masks.lengths(left, 3, 6, True) is None  # left padding: not a prefix
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(3, 1, 6, 6)
    assert masks.lengths(causal, 3, 6, True) is None  # not the same for every query


def bert_32() -> nn.Module:
    """A tiny BERT with MiniLM's head size (32): the heads the AMX kernel takes."""
    config = tf.BertConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=48, attn_implementation="sdpa")
    torch.manual_seed(0)
    return tf.BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.skipif(not (AMX and packed_linear.available()), reason="no AMX (bf16 matrix units) on this CPU")
def test_fused_attention_runs_the_op_and_matches_the_module(monkeypatch):
    attention = bert_32().encoder.layer[0].attention.self
    fused = FusedSelfAttention(attention)
    calls = []
    real = _ops.packed_attention
    monkeypatch.setattr(_ops, "packed_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(3)
    hidden = torch.randn(3, 21, 64)
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[1, 9:] = False
    mask = valid[:, None, None, :].expand(3, 1, 21, 21)
    with torch.inference_mode():
        want, _ = attention(hidden, attention_mask=mask)
        got, _ = fused(hidden, attention_mask=mask)
        assert calls, "the AMX op did not run"
        assert got.dtype == torch.bfloat16
        scale = want[valid].abs().max()
        assert (got[valid].float() - want[valid]).abs().max() <= 2 ** -6 * scale
        assert torch.all(got[~valid] == 0)
        calls.clear()
        left = valid.flip(-1)[:, None, None, :].expand(3, 1, 21, 21)  # left padding: SDPA runs
        got, _ = fused(hidden, attention_mask=left)
        assert not calls
        want, _ = attention(hidden, attention_mask=left)
        assert (got.float() - want).abs().max() <= 2 ** -6 * want.abs().max()


def test_attention_env_keeps_sdpa(monkeypatch):
    monkeypatch.setenv(fused_blocks.ATTENTION_ENV, "sdpa")
    assert not fused_blocks._amx_attention(32)
    monkeypatch.setenv(fused_blocks.ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match="SENTFUSE_CPU_ATTENTION"):
        fused_blocks._amx_attention(32)
    monkeypatch.setenv(fused_blocks.ATTENTION_ENV, "amx")
    assert fused_blocks._amx_attention(32) == AMX
    assert not fused_blocks._amx_attention(48)  # not whole tile depths: SDPA


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx2", "avx512f", "avx512_bf16"}])
def test_cpus_without_amx_keep_sdpa(monkeypatch, flags):
    """AVX2-only and AVX-512 (bf16 vector) CPUs: the model keeps SDPA, the path it had before packed_attention."""
    monkeypatch.setattr(fused_blocks.cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert not fused_blocks._amx_attention(32)
    if backbone.cpu_has_native(torch.bfloat16):  # a bf16 block packs only there (AVX2 runs bf16-mixed in float32)
        fused = FusedSelfAttention(bert_32().encoder.layer[0].attention.self)
        assert not fused._amx
