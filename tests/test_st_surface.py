"""Encoder's sentence-transformers surface besides encode's embeddings, each checked against
sentence-transformers 6.3 on the same tiny folder: model[i], len, truncate_embeddings, to(dtype),
output_value=None, evaluate, forward, the encode keyword spellings, token embeddings from a pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES

import sentfuse

MODEL = "bert-mean-noprompt-dense"  # Pooling (prompt left out), two Dense: every module kind but Normalize


@pytest.fixture(scope="module")
def both(tiny_model_root):
    from sentence_transformers import SentenceTransformer

    folder = tiny_model_root / MODEL
    return sentfuse.Encoder(folder, device="cpu"), SentenceTransformer(str(folder), device="cpu")


def test_top_level_names():
    from sentence_transformers import quantize_embeddings as st_quantize

    assert sentfuse.SimilarityFunction.to_similarity_fn("cosine") is sentfuse.cos_sim
    assert sentfuse.SimilarityFunction.DOT is sentfuse.SimilarityFunction.DOT_PRODUCT
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    np.testing.assert_array_equal(sentfuse.quantize_embeddings(x, "binary"), st_quantize(x, "binary"))


def test_modules_and_lengths(both):
    ours, theirs = both
    assert len(ours) == len(theirs) == 4
    assert ours[0].auto_model is ours.transformers_model
    assert ours[0].max_seq_length == theirs[0].max_seq_length == ours.get_max_seq_length()
    assert ours[1].modes == ("mean",) and ours[1].include_prompt is False
    assert [type(m).__name__ for m in ours][2:] == ["DenseModule", "DenseModule"]
    torch.testing.assert_close(ours[2].linear.weight, theirs[2].linear.weight)
    ours[0].max_seq_length = 9
    assert ours.max_seq_length == 9
    ours.max_seq_length = theirs.max_seq_length


def test_truncate_embeddings_context(both):
    ours, theirs = both
    with ours.truncate_embeddings(5), theirs.truncate_embeddings(5):
        np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=2e-5)
    with ours.truncate_sentence_embeddings(7):
        assert ours.encode(SENTENCES).shape == (len(SENTENCES), 7)
    assert ours.encode(SENTENCES).shape == (len(SENTENCES), 20) and ours.truncate_dim is None


def test_encode_keyword_spellings(both):
    ours, _ = both
    expected = ours.encode(SENTENCES)
    np.testing.assert_array_equal(ours.encode(inputs=SENTENCES), expected)
    np.testing.assert_array_equal(ours.encode(sentences=SENTENCES), expected)
    np.testing.assert_array_equal(ours.encode_query(sentences=SENTENCES, prompt=""), ours.encode(SENTENCES, prompt=""))


def test_all_outputs(both):
    ours, theirs = both
    got = ours.encode(SENTENCES[:4], output_value=None, prompt_name="query")
    want = theirs.encode(SENTENCES[:4], output_value=None, prompt_name="query")
    assert isinstance(got, list) and len(got) == 4
    for g, w in zip(got, want):
        assert {"input_ids", "attention_mask", "token_embeddings", "sentence_embedding"} <= set(g)
        assert g["modality"] == w["modality"] == "text"
        mask = w["attention_mask"].bool()
        torch.testing.assert_close(g["input_ids"], w["input_ids"][mask])
        torch.testing.assert_close(g["token_embeddings"], w["token_embeddings"][mask], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(g["sentence_embedding"], w["sentence_embedding"], atol=2e-5, rtol=1e-4)
    single = ours.encode("one text", output_value=None)
    assert isinstance(single, dict) and single["sentence_embedding"].shape == (20,)
    with pytest.raises(ValueError, match="precision must be 'float32'"):
        ours.encode(SENTENCES, output_value=None, precision="int8")


def test_forward_matches(both):
    ours, theirs = both
    features = ours.tokenize(SENTENCES)
    got = ours.forward(features)
    with torch.no_grad():
        want = theirs.forward(theirs.tokenize(SENTENCES))
    torch.testing.assert_close(got["sentence_embedding"], want["sentence_embedding"], atol=2e-5, rtol=1e-4)


def test_to_dtype_and_device(tiny_model_root):
    model = sentfuse.Encoder(tiny_model_root / MODEL, device="cpu")
    expected = model.encode(SENTENCES)
    assert model.to(torch.float64) is model and model.dtype == torch.float64
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-5)
    assert model.encode(SENTENCES, output_dtype=None).dtype == np.float64
    model.to(device="cpu", dtype=torch.float32)  # float64 -> float32 is exact: the same embeddings again
    assert model.dtype == torch.float32 and model.cpu().device.type == "cpu"
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-6)
    model.to("cpu", torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model[2].linear.weight.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="floating dtypes only"):
        model.to(torch.int64)
    with pytest.raises(TypeError, match="a device and / or a floating dtype"):
        model.to("cpu", "gpu", 3)


def test_evaluate_gives_sentence_transformers_scores(both):
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    ours, theirs = both
    evaluator = EmbeddingSimilarityEvaluator(SENTENCES[:6], SENTENCES[5:11], [0.1, 0.9, 0.3, 0.5, 0.7, 0.2], name="sts")
    got, want = ours.evaluate(evaluator), theirs.evaluate(evaluator)
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key], abs=1e-6)
    assert ours.model_card_data.eval_results[-1]["metrics"] == got


def test_small_accessors(both):
    ours, theirs = both
    for name in ("get_backend", "modalities", "get_model_kwargs", "model_type", "default_huggingface_organization"):
        value, expected = getattr(ours, name), getattr(theirs, name)
        assert (value() if callable(value) else value) == (expected() if callable(expected) else expected), name
    assert ours.supports("text") and not ours.supports("image")
    assert ours.is_singular_input("a") and not ours.is_singular_input(["a"])
    assert ours.get_device_name() in ("cpu", "cuda")
    assert set(ours.preprocess(["a b"], prompt="q: ")) >= {"input_ids", "attention_mask"}


def test_token_embeddings_from_a_pool(both):
    ours, _ = both
    expected = ours.encode(SENTENCES, output_value="token_embeddings")
    got = ours.encode(SENTENCES, output_value="token_embeddings", device=["cpu"])
    assert isinstance(got, list) and len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e.cpu(), atol=1e-5, rtol=1e-4)


def test_similarity_function_members_name_the_function(tiny_model_root):
    from sentence_transformers import SimilarityFunction as STSimilarityFunction

    for member in (sentfuse.SimilarityFunction.DOT_PRODUCT, STSimilarityFunction.DOT_PRODUCT):
        model = sentfuse.Encoder(tiny_model_root / MODEL, device="cpu", similarity_fn_name=member)
        assert model.similarity_fn_name == "dot"
        model.similarity_fn_name = sentfuse.SimilarityFunction.MANHATTAN
        assert model.similarity_fn_name == "manhattan"
    with pytest.raises(ValueError, match="similarity_function must be one of"):
        sentfuse.SimilarityFunction.to_similarity_fn("jaccard")
