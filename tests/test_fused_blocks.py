"""The bf16-mixed mode's fused BERT blocks (model.fused_blocks) and the packed product they share
(model.packed_linear): against the transformers modules they replace, on rounded operands."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn

from backbone_pair import hidden_states_of
from sentfuse.model import backbone, compute, packed_linear
from sentfuse.model.fused_blocks import FusedIntermediate, FusedSelfAttention, fuse_blocks

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="torch built without oneDNN")
BF16_TOLERANCE = 2 ** -6  # relative to the largest output: a few bf16 roundings of operands and output


def tiny_bert(attn: str = "sdpa", act: str = "gelu") -> nn.Module:
    config = tf.BertConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                           num_attention_heads=3, max_position_embeddings=32, hidden_act=act,
                           attn_implementation=attn)
    torch.manual_seed(0)
    model = tf.BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def close(got: torch.Tensor, want: torch.Tensor, tolerance: float = BF16_TOLERANCE) -> bool:
    return bool((got.float() - want.float()).abs().max() <= tolerance * want.abs().max())


def test_packed_product_matches_rounded_linear_with_gelu_epilogue():
    torch.manual_seed(1)
    linear = nn.Linear(37, 53)
    x = torch.randn(3, 7, 37)
    xr, wr = x.bfloat16().float(), linear.weight.bfloat16().float()
    with torch.inference_mode():
        packed = packed_linear.pack(linear.weight, torch.bfloat16)
        plain = packed_linear.run(x.bfloat16(), packed, linear.bias.float())
        gelu = packed_linear.run(x.bfloat16(), packed, linear.bias.float(), packed_linear.GELU_ERF)
        tanh = packed_linear.run(x.bfloat16(), packed, linear.bias.float(), packed_linear.GELU_TANH)
        want = F.linear(xr, wr, linear.bias)
    assert plain.dtype == torch.bfloat16 and plain.shape == (3, 7, 53)
    assert close(plain, want, 2 ** -8)
    assert close(gelu, F.gelu(want), 2 ** -8)
    assert close(tanh, F.gelu(want, approximate="tanh"), 2 ** -8)
    assert not close(gelu, want, 2 ** -8)  # the epilogue did run


def test_activation_epilogue_names_only_the_gelus_onednn_has():
    from transformers.activations import ACT2FN

    assert packed_linear.activation_epilogue(ACT2FN["gelu"]) == packed_linear.GELU_ERF
    assert packed_linear.activation_epilogue(ACT2FN["gelu_new"]) == packed_linear.GELU_TANH
    assert packed_linear.activation_epilogue(ACT2FN["relu"]) is None
    assert packed_linear.activation_epilogue(ACT2FN["silu"]) is None


def test_blocks_match_the_modules_they_replace():
    model = tiny_bert()
    layer = model.encoder.layer[0]
    attention, intermediate = layer.attention.self, layer.intermediate
    fused_attention, fused_intermediate = FusedSelfAttention(attention), FusedIntermediate(
        intermediate, packed_linear.GELU_ERF)
    torch.manual_seed(2)
    hidden = torch.randn(3, 11, 48)
    mask = torch.ones(3, 1, 11, 11, dtype=torch.bool)
    mask[1, ..., 6:] = False  # a padded row
    with torch.inference_mode():
        want, _ = attention(hidden, attention_mask=mask)
        got, weights = fused_attention(hidden, attention_mask=mask)
        assert got.dtype == torch.bfloat16 and weights is None and close(got, want)
        want, got = intermediate(hidden), fused_intermediate(hidden)
        assert got.dtype == torch.bfloat16 and close(got, want)
    # autograd records: the original modules run, exactly
    assert torch.equal(fused_attention(hidden, attention_mask=mask)[0], attention(hidden, attention_mask=mask)[0])
    assert torch.equal(fused_intermediate(hidden), intermediate(hidden))


def test_blocks_run_the_original_after_a_weight_change():
    model = tiny_bert()
    attention = model.encoder.layer[0].attention.self
    fused = FusedSelfAttention(attention)
    attention.key.weight = nn.Parameter(torch.zeros_like(attention.key.weight))
    hidden = torch.randn(2, 5, 48)
    with torch.inference_mode():
        assert torch.equal(fused(hidden)[0], attention(hidden)[0])


@pytest.mark.parametrize("attn, act, fused", [("sdpa", "gelu", 4), ("eager", "gelu", 2), ("sdpa", "relu", 2)])
def test_fuse_blocks_picks_what_it_can_run(attn, act, fused):
    """Attention needs SDPA (eager attention takes an additive mask), the intermediate a GELU oneDNN has."""
    assert fuse_blocks(tiny_bert(attn, act)) == fused


def mixed_bert() -> tuple[nn.Module, nn.Module]:
    reference = tiny_bert()
    model = tiny_bert()
    compute.mark(model, compute.BF16_MIXED)
    return reference, backbone.prepare_backbone(model)


@pytest.mark.skipif(not backbone.cpu_has_native(torch.bfloat16), reason="this CPU has no bf16 matrix instructions")
def test_mixed_backbone_against_float32_and_back():
    """bf16-mixed hidden states close to float32; its weights keep transformers' names; unpacked it is the float32
    model again, bit for bit."""
    reference, model = mixed_bert()
    assert sum(isinstance(m, (FusedSelfAttention, FusedIntermediate)) for m in model.modules()) == 4
    want, got, ids, mask = hidden_states_of(reference, model, vocab=(5, 64), shape=(3, 13), padded_row=2, valid=7)
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got[mask.bool()], want[mask.bool()], dim=-1).min() >= 0.999
    assert backbone.backbone_state_dict(model).keys() == reference.state_dict().keys()
    backbone.unpack_linears(model)
    assert not any(isinstance(m, packed_linear.StandIn) for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, want)


def test_float32_backbone_fuses_nothing():
    model = backbone.prepare_backbone(tiny_bert())
    assert not any(isinstance(m, (FusedSelfAttention, FusedIntermediate)) for m in model.modules())
    assert all(m._compute == torch.float32 for m in model.modules() if isinstance(m, backbone.PackedLinear))
