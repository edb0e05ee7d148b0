"""The fused BERT blocks (model.fused_blocks) of the bf16-mixed mode and of float32 models, and the packed product
they share (model.packed_linear): against the transformers modules they replace (bf16: on rounded operands)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn

from backbone_pair import hidden_states_of
from sentfuse.model import backbone, compute, packed_linear
from sentfuse.model.fused_blocks import (AdditiveMask, FusedIntermediate, FusedOutput, FusedSelfAttention,
                                         fuse_blocks, residual_epilogue_available)

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="torch built without oneDNN")
BF16_TOLERANCE = 2 ** -6  # relative to the largest output: a few bf16 roundings of operands and output
FP32_TOLERANCE = 1e-5  # float32 blocks: the same operations, at most in another summation order
# oneDNN packs bf16 weights only on CPUs with AVX512-BW/VL/DQ or AVX-NE-CONVERT; elsewhere (AVX2) bf16-mixed models
# run float32 and no bf16 block is ever built.
needs_bf16 = pytest.mark.skipif(not backbone.cpu_has_native(torch.bfloat16),
                                reason="oneDNN cannot pack bf16 weights on this CPU")


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


@needs_bf16
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


@needs_bf16
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


@needs_bf16
def test_blocks_run_the_original_after_a_weight_change():
    model = tiny_bert()
    attention = model.encoder.layer[0].attention.self
    fused = FusedSelfAttention(attention)
    attention.key.weight = nn.Parameter(torch.zeros_like(attention.key.weight))
    hidden = torch.randn(2, 5, 48)
    with torch.inference_mode():
        assert torch.equal(fused(hidden)[0], attention(hidden)[0])


@pytest.mark.parametrize("attn, act, fused", [("sdpa", "gelu", 4), ("eager", "gelu", 2), ("sdpa", "relu", 2)])
@pytest.mark.parametrize("compute", [pytest.param(torch.bfloat16, marks=needs_bf16), torch.float32])
def test_fuse_blocks_picks_what_it_can_run(attn, act, fused, compute):
    """Attention needs SDPA (eager attention takes an additive mask), the intermediate a GELU oneDNN has; float32
    also fuses the two output blocks of each layer."""
    outputs = 4 if compute == torch.float32 else 0
    assert fuse_blocks(tiny_bert(attn, act), compute) == fused + outputs


def mixed_bert() -> tuple[nn.Module, nn.Module]:
    reference = tiny_bert()
    model = tiny_bert()
    compute.mark(model, compute.BF16_MIXED)
    return reference, backbone.prepare_backbone(model)


@needs_bf16
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


def padded_mask(rows: int = 3, width: int = 11) -> torch.Tensor:
    """transformers' boolean [rows, 1, width, width] padding mask: row 1 padded after 6 tokens, row 2 all padding."""
    valid = torch.ones(rows, width, dtype=torch.bool)
    valid[1, 6:] = False
    valid[2] = False
    return valid[:, None, None, :].expand(rows, 1, width, width).contiguous()


def test_float32_blocks_match_the_modules_they_replace():
    model = tiny_bert()
    layer = model.encoder.layer[0]
    torch.manual_seed(3)
    hidden, residual = torch.randn(3, 11, 48), torch.randn(3, 11, 48)
    general = torch.rand(3, 1, 11, 11) > 0.3  # rows differ: not a padding mask
    general[..., 0] = True
    attention = FusedSelfAttention(layer.attention.self, torch.float32)
    intermediate = FusedIntermediate(layer.intermediate, packed_linear.GELU_ERF, torch.float32)
    with torch.inference_mode():
        for mask in (padded_mask(), general, None):
            want, _ = layer.attention.self(hidden, attention_mask=mask)
            got, weights = attention(hidden, attention_mask=mask)
            assert got.dtype == torch.float32 and weights is None
            assert torch.equal(got.isnan(), want.isnan())  # an all-padding row: whatever SDPA gives for it
            assert close(got.nan_to_num(), want.nan_to_num(), FP32_TOLERANCE)
        assert close(intermediate(hidden), layer.intermediate(hidden), FP32_TOLERANCE)
        wide = intermediate(hidden)
        for output, x in ((layer.attention.output, hidden), (layer.output, wide)):
            fused = FusedOutput(output)
            got = fused(x, residual)
            assert got.dtype == torch.float32 and close(got, output(x, residual), FP32_TOLERANCE)
            assert not close(got, output.LayerNorm(output.dense(x)), FP32_TOLERANCE)  # the residual is in


def test_output_block_runs_the_original_when_training_or_shapes_differ():
    output = tiny_bert().encoder.layer[0].output
    fused = FusedOutput(output)
    x, residual = torch.randn(2, 5, 80), torch.randn(2, 5, 48)
    with torch.inference_mode():
        assert torch.equal(fused(x, residual[:, :1]), output(x, residual[:, :1]))  # broadcast residual
    fused.train(), output.train()
    torch.manual_seed(4)
    got = fused(x, residual)
    torch.manual_seed(4)
    assert torch.equal(got, output(x, residual))  # the same dropout draw: the original ran


def test_additive_mask_converts_once_per_forward():
    masks = AdditiveMask()
    assert masks.join() and not masks.join()  # the first layer converts in every forward, the others reuse
    mask = padded_mask()
    first = masks(mask, torch.float32, True)
    assert first.shape == (3, 1, 1, 11) and masks(mask, torch.float32, False) is first
    assert torch.equal(first[1, 0, 0], torch.tensor([0.0] * 6 + [float("-inf")] * 5))
    assert masks(mask, torch.bfloat16, False).dtype == torch.bfloat16
    assert masks(mask.clone(), torch.float32, False) is not first  # another mask
    mask[0, 0, 2, 3] = False  # changed in place: the next forward's first layer converts again, now a general mask
    again = masks(mask, torch.float32, True)
    assert again.shape == (3, 1, 11, 11) and torch.equal(again == 0, mask)
    assert masks(None, torch.float32, True) is None


def test_float32_blocks_are_probed():
    assert residual_epilogue_available()


def test_float32_backbone_fuses_its_blocks_and_matches():
    """A float32 model's blocks fuse in float32: its hidden states match the plain model's within float32 rounding;
    unpacked it is the plain model again."""
    reference, model = tiny_bert(), backbone.prepare_backbone(tiny_bert())
    blocks = [m for m in model.modules() if isinstance(m, (FusedSelfAttention, FusedIntermediate, FusedOutput))]
    assert len(blocks) == 8 and all(getattr(b, "_compute", torch.float32) == torch.float32 for b in blocks)
    assert all(m._compute == torch.float32 for m in model.modules() if isinstance(m, backbone.PackedLinear))
    want, got, ids, mask = hidden_states_of(reference, model, vocab=(5, 64), shape=(3, 13), padded_row=2, valid=7)
    assert close(got, want, FP32_TOLERANCE)
    assert backbone.backbone_state_dict(model).keys() == reference.state_dict().keys()
    backbone.unpack_linears(model)
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, want)


def test_fuse_blocks_rejects_other_compute_types():
    with pytest.raises(ValueError, match="compute"):
        fuse_blocks(tiny_bert(), torch.float16)


@pytest.mark.skipif(not backbone.mode_available(compute.INT8_DYNAMIC), reason="no int8 path on this CPU / torch")
def test_int8_attention_block_matches_the_module():
    """int8-dynamic's attention: query, key and value as one smoothed int8 product, heads through SDPA in float32."""
    import dataclasses

    from sentfuse.model import int8_plan

    model = tiny_bert()
    plan = int8_plan.plan(model)
    attention = model.encoder.layer[0].attention.self
    project = backbone._int8_qkv(plan, attention)
    assert project is not None and project.inverse_smooth is not None  # fed by a LayerNorm: smoothed
    block = FusedSelfAttention(attention, torch.float32, project=project)
    torch.manual_seed(3)
    hidden = torch.randn(3, 11, 48)
    with torch.inference_mode():
        for mask in (padded_mask(), None):
            want, _ = attention(hidden, attention_mask=mask)
            got, _ = block(hidden, attention_mask=mask)
            assert got.dtype == torch.float32 and close(got, want, 0.03)
    with pytest.raises(ValueError, match="float32"):
        FusedSelfAttention(attention, torch.bfloat16, project=project)
    plain = int8_plan.LayerPlan(int8_plan.Int8Role.PLAIN)
    apart = dataclasses.replace(plan, layers={**plan.layers, attention.key: plain})
    assert backbone._int8_qkv(apart, attention) is None  # the plan treats them apart: three products
