"""config_sentence_transformers.json both ways: every field sentence-transformers 6.3 writes, read by
sentfuse from its folders, and written by sentfuse so that sentence-transformers reads it back (dense
and sparse)."""

from __future__ import annotations

import json

import pytest
import torch

import sentfuse
from sentfuse.model.modules import ModelFolderError

DENSE = "bert-mean-noprompt-dense"  # Dense to 20 features: truncate_dim 7 shows in every result
SETTINGS = dict(prompts={"query": "q: ", "passage": "p: "}, default_prompt_name="passage",
                similarity_fn_name="manhattan", truncate_dim=7)


def _settings(model) -> dict:
    return {"prompts": {k: v for k, v in model.prompts.items() if v}, "default_prompt_name": model.default_prompt_name,
            "similarity_fn_name": model.similarity_fn_name, "truncate_dim": model.truncate_dim}


def test_sentence_transformers_folder_loads_with_every_setting(tiny_model_root, tmp_path, sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_model_root / DENSE), device="cpu", **SETTINGS)
    st.save(str(tmp_path / "st"))
    assert json.loads((tmp_path / "st" / "config_sentence_transformers.json").read_text())["truncate_dim"] == 7

    ours = sentfuse.SentenceTransformer(tmp_path / "st", device="cpu")
    assert _settings(ours) == SETTINGS
    assert ours.get_embedding_dimension() == st.get_embedding_dimension() == 7
    torch.testing.assert_close(torch.from_numpy(ours.encode(sentences)), torch.from_numpy(st.encode(sentences)),
                               atol=2e-5, rtol=0)
    # The caller's truncate_dim wins over the folder's, in both libraries.
    assert sentfuse.SentenceTransformer(tmp_path / "st", device="cpu", truncate_dim=3).encode("x").shape == (3,)


def test_sentfuse_folder_loads_in_sentence_transformers_with_every_setting(tiny_model_root, tmp_path, sentences):
    from sentence_transformers import SentenceTransformer

    ours = sentfuse.SentenceTransformer(tiny_model_root / DENSE, device="cpu", **SETTINGS)
    ours.save(tmp_path / "ours")
    st = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    assert _settings(st) == SETTINGS
    torch.testing.assert_close(torch.from_numpy(st.encode(sentences)), torch.from_numpy(ours.encode(sentences)),
                               atol=2e-5, rtol=0)
    again = sentfuse.SentenceTransformer(tmp_path / "ours", device="cpu")
    assert _settings(again) == SETTINGS


def test_unset_truncate_dim_is_not_written(tiny_model_root, tmp_path):
    sentfuse.SentenceTransformer(tiny_model_root / DENSE, device="cpu").save(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config_sentence_transformers.json").read_text())
    assert "truncate_dim" not in config and config["model_type"] == "SentenceTransformer"


def test_bad_values_name_the_file_and_field(tmp_path):
    from sentfuse.model.modules import read_st_config

    for field, value in (("truncate_dim", 0), ("truncate_dim", "64"), ("max_active_dims", True),
                         ("default_prompt_name", 3)):
        (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({field: value}))
        with pytest.raises(ModelFolderError, match=f"config_sentence_transformers.json: {field} must be"):
            read_st_config(tmp_path, ("cosine",))


def test_sparse_folder_settings_from_sentence_transformers(tmp_path):
    """Every field sentence-transformers' SparseEncoder writes reaches sentfuse's SparseEncoder."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "a", "b", "c"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    static = SparseStaticEmbedding(tokenizer=tokenizer, weight=torch.arange(5.0), frozen=True)
    settings = dict(prompts={"query": "a "}, default_prompt_name="query", similarity_fn_name="cosine",
                    max_active_dims=2)
    STSparseEncoder(modules=[static], device="cpu", **settings).save(str(tmp_path / "sparse"))
    ours = sentfuse.SparseEncoder(tmp_path / "sparse", device="cpu")
    got = {"prompts": {k: v for k, v in ours.prompts.items() if v}, "default_prompt_name": ours.default_prompt_name,
           "similarity_fn_name": ours.similarity_fn_name, "max_active_dims": ours.max_active_dims}
    assert got == settings
    with pytest.raises(ModelFolderError, match="SparseEncoder .*sentfuse.SparseEncoder"):
        sentfuse.SentenceTransformer(tmp_path / "sparse", device="cpu")
