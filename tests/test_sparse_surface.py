"""SparseEncoder's sentence-transformers surface besides encode's vectors: loading keywords, similarity_pairwise,
intersection, save (loaded back by both libraries), worker pools, the encode keyword spellings."""

from __future__ import annotations

import logging

import pytest
import torch
from test_sparse_encoder import TEXTS, assert_same_vectors, sparse_root  # noqa: F401  (sparse_root: fixture)

import sentfuse

FOLDER = "bert-relu-max"


@pytest.fixture(scope="module")
def both(sparse_root):  # noqa: F811
    from sentence_transformers import SparseEncoder as STSparseEncoder

    folder = sparse_root / FOLDER
    return sentfuse.SparseEncoder(folder, device="cpu"), STSparseEncoder(str(folder), device="cpu")


def test_loading_keywords(sparse_root, caplog):  # noqa: F811
    card = object()
    model = sentfuse.SparseEncoder(
        sparse_root / FOLDER, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16, "attn_implementation": "eager"},
        processor_kwargs={"padding_side": "left"}, config_kwargs={"hidden_dropout_prob": 0.25}, model_card_data=card,
    )
    assert model.transformers_model.dtype == torch.bfloat16
    assert model.transformers_model.config._attn_implementation == "eager"
    assert model.transformers_model.config.hidden_dropout_prob == 0.25
    assert model.tokenizer.padding_side == "left" and model.model_card_data is card
    with caplog.at_level(logging.WARNING):
        sentfuse.SparseEncoder(sparse_root / FOLDER, device="cpu", tokenizer_kwargs={"padding_side": "left"})
    assert "tokenizer_kwargs is deprecated" in caplog.text
    with pytest.raises(ValueError, match="backend='openvino' is not supported"):
        sentfuse.SparseEncoder(sparse_root / FOLDER, device="cpu", backend="openvino")


def test_pairwise_and_intersection(both):
    ours, theirs = both
    a, b = ours.encode(TEXTS[:5]), ours.encode(TEXTS[5:10])
    torch.testing.assert_close(ours.similarity_pairwise(a, b), theirs.similarity_pairwise(a, b), rtol=1e-5, atol=1e-5)
    got = ours.intersection(a[0], b)
    want = theirs.intersection(a[0], b)
    torch.testing.assert_close(got.to_dense(), want.to_dense())
    assert got.is_sparse
    # (sentence-transformers answers the backbone's hidden size until its SpladePooling has run once)
    assert ours.get_sentence_embedding_dimension() == ours.get_embedding_dimension() == a.shape[1]
    assert (ours.model_type, ours.default_huggingface_organization) == (theirs.model_type,
                                                                        theirs.default_huggingface_organization)


def test_encode_keyword_spellings(both):
    ours, _ = both
    expected = ours.encode(TEXTS).to_dense()
    torch.testing.assert_close(ours.encode(inputs=TEXTS).to_dense(), expected)
    torch.testing.assert_close(ours.encode(sentences=TEXTS).to_dense(), expected)


def test_saved_folder_loads_in_both(both, tmp_path):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    ours, _ = both
    model = sentfuse.SparseEncoder(ours.model_path, device="cpu", max_active_dims=7, max_seq_length=20,
                                   prompts={"query": "find: "}, similarity_fn_name="cosine")
    model.save(tmp_path / "saved")
    again = sentfuse.SparseEncoder(tmp_path / "saved", device="cpu")
    theirs = STSparseEncoder(str(tmp_path / "saved"), device="cpu")
    assert (again.max_active_dims, again.max_seq_length, again.similarity_fn_name) == (7, 20, "cosine")
    assert (theirs.max_active_dims, theirs.max_seq_length, theirs.similarity_fn_name) == (7, 20, "cosine")
    assert again.prompts["query"] == theirs.prompts["query"] == "find: "
    expected = model.encode_query(TEXTS)
    assert_same_vectors(theirs.encode_query(TEXTS), again.encode_query(TEXTS))
    torch.testing.assert_close(again.encode_query(TEXTS).to_dense(), expected.to_dense())


def test_pool_gives_the_same_vectors(both):
    ours, _ = both
    expected = ours.encode(TEXTS, max_active_dims=5).to_dense()
    with ours.start_multi_process_pool(["cpu", "cpu"]) as pool:
        got = ours.encode(TEXTS, pool=pool, chunk_size=3, max_active_dims=5)
        single = ours.encode(TEXTS[0], pool=pool)
    assert got.is_sparse and got.shape == expected.shape
    torch.testing.assert_close(got.to_dense(), expected)
    torch.testing.assert_close(single.to_dense(), ours.encode(TEXTS[0]).to_dense())
