"""Batching, chunked tokenization and backbone preparation leave every embedding unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from transformers import AutoModel

from backbone_pair import hidden_states_of
from sentfuse import Encoder
from sentfuse.encode import tokenize
from sentfuse.model.backbone import PackedLinear, prepare_backbone
from sentfuse.model.packed_linear import StandIn

LONG = "a very long text that runs on " * 400  # far past every tiny model's max_seq_length


def mixed_texts(n: int = 37) -> list[str]:
    """Short, empty, duplicate and one very long text; n is not a multiple of any batch size below."""
    base = ["", "cats", "A man is playing a guitar.", "cats", "What is the capital of France?", "ok ok ok"]
    texts = [base[i % len(base)] + (" word" * (i % 9)) for i in range(n)]
    texts[n // 2] = LONG
    return texts


def rows_alone(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Each text in its own batch: no padding, no sorting."""
    return np.stack([encoder.encode([t])[0] for t in texts])


def assert_same_rows(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-12)
    assert cos.min() >= 0.99999, f"row {int(cos.argmin())} has cosine {cos.min()}"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# --- encode end to end ---------------------------------------------------------------------------


def test_encode_matches_one_text_at_a_time(tiny_model):
    encoder = Encoder(tiny_model, device="cpu")
    texts = mixed_texts()
    want = rows_alone(encoder, texts)
    for batch_size, max_batch_tokens in [(None, None), (1, None), (3, None), (None, 7), (5, 40), (64, 100000)]:
        got = encoder.encode(texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        assert_same_rows(got, want)


def test_encode_across_tokenization_windows(tiny_model_root, monkeypatch):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    texts = mixed_texts(53)
    want = encoder.encode(texts)
    monkeypatch.setattr(tokenize, "CHUNK_TEXTS", 8)
    assert_same_rows(encoder.encode(texts, max_batch_tokens=30), want)


def test_token_embeddings_match_one_text_at_a_time(tiny_model_root):
    encoder = Encoder(tiny_model_root / "distilbert-lasttoken-sqrt-lower", device="cpu")
    texts = mixed_texts(19)
    together = encoder.encode(texts, output_value="token_embeddings", max_batch_tokens=20)
    for text, got in zip(texts, together):
        alone = encoder.encode([text], output_value="token_embeddings")[0]
        assert got.shape == alone.shape
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)


def test_left_padding_token_embeddings(tiny_model_root):
    """Left-padded batches give back each text's own tokens (an absolute-position model's values shift with
    the padding, so compare lengths, and values for texts that needed no padding)."""
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    texts = mixed_texts(11)
    right = encoder.encode(texts, output_value="token_embeddings")
    encoder.tokenizer.padding_side = "left"
    try:
        left = encoder.encode(texts, output_value="token_embeddings")
        alone = [encoder.encode([t], output_value="token_embeddings")[0] for t in texts]
    finally:
        encoder.tokenizer.padding_side = "right"
    assert [a.shape for a in left] == [b.shape for b in right]
    longest = max(a.shape[0] for a in left)
    for got, want in zip(left, alone):
        if got.shape[0] == longest:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_tokenizer_error_reaches_the_caller(tiny_model_root, monkeypatch):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")

    def broken(texts, start):
        raise ValueError("cannot tokenize")

    monkeypatch.setattr(encoder._encode_pipeline(), "chunk_tokenizer", broken)
    with pytest.raises(ValueError, match="cannot tokenize"):
        encoder.encode(["a", "b"])


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_max_batch_tokens(tiny_model_root, value):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    with pytest.raises(ValueError, match=re.escape(f"max_batch_tokens must be a positive integer, got {value!r}")):
        encoder.encode(["a"], max_batch_tokens=value)


def test_progress_bar_counts_sentences(tiny_model_root, capsys):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    encoder.encode(mixed_texts(23), show_progress_bar=True, max_batch_tokens=16)
    err = capsys.readouterr().err
    assert "23/23" in err and "sentence/s" in err


# --- dtype ---------------------------------------------------------------------------------------


def test_output_dtype(tiny_model_root):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu", dtype="bfloat16")
    texts = mixed_texts(9)
    assert encoder.encode(texts, convert_to_tensor=True).dtype == torch.float32
    assert encoder.encode(texts, convert_to_tensor=True, output_dtype=None).dtype == torch.bfloat16
    assert encoder.encode(texts, convert_to_tensor=True, output_dtype="float16").dtype == torch.float16
    assert encoder.encode(texts).dtype == np.float32
    with pytest.raises(ValueError, match="output_dtype must be one of"):
        encoder.encode(texts, output_dtype="int8")


def test_bfloat16_close_to_float32():
    """The bundled all-MiniLM-L6-v2 on real questions: bf16 embeddings within cos 0.999 of float32."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data/squad/questions.txt"
    texts = data.read_text().splitlines()[:24]
    fp32 = Encoder(device="cpu").encode(texts)
    bf16 = Encoder(device="cpu", dtype="bfloat16").encode(texts)
    cos = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cos.min() >= 0.999, cos.min()


# --- backbone preparation ------------------------------------------------------------------------


def test_packed_linear_matches_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 24)
    packed = PackedLinear(linear)
    x = torch.randn(3, 5, 40)
    y = packed(x.clone().requires_grad_())  # autograd takes the plain weight, so gradients flow
    y.sum().backward()
    assert linear.weight.grad is not None
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)
    linear.double()  # another dtype after packing: the plain path takes over
    with torch.inference_mode():
        torch.testing.assert_close(packed(x.double()), linear(x.double()))


def test_packed_linear_sees_a_replaced_weight():
    linear = torch.nn.Linear(8, 4)
    packed = PackedLinear(linear)
    linear.weight = torch.nn.Parameter(torch.zeros(4, 8))
    with torch.inference_mode():
        torch.testing.assert_close(packed(torch.ones(2, 8)), linear.bias.expand(2, 4))


def test_prepare_backbone_keeps_token_embeddings(tiny_model_root):
    folder = tiny_model_root / "hf-bert"
    plain = AutoModel.from_pretrained(folder).eval()
    prepared = prepare_backbone(AutoModel.from_pretrained(folder).eval())
    assert prepared.pooler is None
    assert any(isinstance(m, StandIn) for m in prepared.modules())  # packed layers or fused blocks
    want, got, _, _ = hidden_states_of(plain, prepared, vocab=(5, 100), shape=(4, 9), padded_row=1, valid=5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_linear_half_precision_in_float32_arithmetic(dtype):
    """Half-precision values widened exactly, multiplied and summed in float32, rounded back once."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 32).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(4, 7, 64).to(dtype)
    with torch.inference_mode():
        got = packed(x)
        want = torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float()).to(dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=0, rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10)


@pytest.mark.parametrize("native", [True, False])
def test_prepare_backbone_packs_bfloat16_only_without_native_support(tiny_model_root, monkeypatch, native):
    import sentfuse.model.backbone as backbone

    monkeypatch.setattr(backbone, "cpu_has_native", lambda dtype: native)
    model = prepare_backbone(AutoModel.from_pretrained(tiny_model_root / "hf-bert", dtype=torch.bfloat16).eval())
    assert any(isinstance(m, PackedLinear) for m in model.modules()) == (not native)
