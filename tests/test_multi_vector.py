"""sentfuse.MultiVectorEncoder and util's MaxSim family against sentence-transformers' own, on tiny random
MultiVectorEncoder folders that sentence-transformers saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SENTENCES, _save_hf_model, copies
from sentfuse import MultiVectorEncoder, util

REL = 1e-5
QUERIES = ["What is the capital of France?", "guitar", "", "who plays, and where?"]
FOLDERS = {
    "mask-normalize": dict(document_length=24, dense=[(32, 16, False, "identity")], skiplist=[".", ","],
                           normalize=True, similarity="meanmaxsim"),
    "expansion-fixed": dict(expansion={"strategy": "fixed", "length": 12}, dense=[(32, 16, False, "identity")],
                            normalize=True),
    "expansion-min-attend": dict(query_length=20, expansion={"strategy": "min", "length": 8, "attend": True},
                                 dense=[(32, 24, True, "tanh"), (24, 16, False, "identity")], normalize=False),
}


def _build(hf, out, spec):
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    torch.manual_seed(7)
    modules = [Transformer(str(hf), document_length=spec.get("document_length"), query_length=spec.get("query_length"),
                           query_expansion=spec.get("expansion"))]
    acts = {"tanh": torch.nn.Tanh(), "identity": torch.nn.Identity()}
    for i, o, bias, act in spec["dense"]:
        modules.append(Dense(i, o, bias=bias, activation_function=acts[act], module_input_name="token_embeddings"))
    modules.append(MultiVectorMask(skiplist_words=spec.get("skiplist")))
    if spec["normalize"]:
        modules.append(Normalize(module_input_name="token_embeddings"))
    model = STMultiVectorEncoder(modules=modules, device="cpu", prompts={"query": "query: ", "document": "passage: "},
                                 similarity_fn_name=spec.get("similarity"))
    model.save(str(out))


@pytest.fixture(scope="module")
def mv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi-vector")
    _save_hf_model("bert", root / "hf", 0)
    for name, spec in FOLDERS.items():
        _build(root / "hf", root / name, spec)
    return root


@pytest.fixture(scope="module", params=list(FOLDERS))
def pair(request, mv_root):
    """(sentence-transformers' model, sentfuse's model) on one folder."""
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    path = mv_root / request.param
    return STMultiVectorEncoder(str(path), device="cpu"), MultiVectorEncoder(path, device="cpu")


def max_rel_diff(a, b):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item() if b.numel() else 0.0


def assert_same_tokens(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert tuple(g.shape) == tuple(e.shape)
        assert max_rel_diff(g, e) <= REL


@pytest.mark.parametrize("method", ["encode_query", "encode_document", "encode"])
def test_embeddings_match_sentence_transformers(pair, method):
    st_model, sf_model = pair
    texts = QUERIES + SENTENCES
    assert_same_tokens(getattr(sf_model, method)(texts), getattr(st_model, method)(texts))


def test_scores_and_rankings_match(pair):
    st_model, sf_model = pair
    queries, docs = st_model.encode_query(QUERIES), st_model.encode_document(SENTENCES)
    expected = st_model.similarity(queries, docs)
    got = sf_model.similarity(sf_model.encode_query(QUERIES), sf_model.encode_document(SENTENCES))
    assert max_rel_diff(got, expected) <= REL
    assert torch.equal(got.argsort(dim=1, descending=True, stable=True),
                       expected.argsort(dim=1, descending=True, stable=True))
    pairs = st_model.similarity_pairwise(queries, docs[: len(queries)])
    assert max_rel_diff(sf_model.similarity_pairwise(queries, docs[: len(queries)]), pairs) <= REL


def test_result_types(pair):
    _, model = pair
    one = model.encode_query("just one")
    assert isinstance(one, torch.Tensor) and one.dim() == 2 and one.shape[1] == model.get_embedding_dimension()
    arrays = model.encode_document(SENTENCES[:3], convert_to_numpy=True)
    assert all(isinstance(a, np.ndarray) for a in arrays)
    tokens, offsets = model.encode_document(SENTENCES, packed=True)
    listed = model.encode_document(SENTENCES)
    assert offsets.tolist() == [0] + np.cumsum([len(t) for t in listed]).tolist()
    assert torch.equal(tokens, torch.cat(listed))
    truncated = model.encode_document(SENTENCES[:2], truncate_dim=8)
    assert truncated[0].shape[1] == 8 and torch.allclose(truncated[0].norm(dim=1), torch.ones(len(truncated[0])))


def test_many_ragged_batches_come_back_in_input_order(pair):
    """Batches of 3 texts of mixed lengths leave the planner out of input order (by width) and lose skiplisted
    tokens: both output forms still give each text its own rows, as sentence-transformers does."""
    st_model, sf_model = pair
    texts = [", ".join(["word"] * n) + "." for n in (7, 1, 30, 0, 12, 3, 30, 5)] + SENTENCES
    expected = st_model.encode_document(texts, batch_size=3)
    assert_same_tokens(sf_model.encode_document(texts, batch_size=3), expected)
    tokens, offsets = sf_model.encode_document(texts, batch_size=3, packed=True)
    assert offsets.tolist() == [0, *np.cumsum([len(t) for t in expected]).tolist()]
    assert max_rel_diff(tokens, torch.cat(expected)) <= REL


def test_empty_input(pair):
    _, model = pair
    for encode in (model.encode_query, model.encode_document):
        assert encode([]) == []
        tokens, offsets = encode([], packed=True)
        assert tuple(tokens.shape) == (0, model.get_embedding_dimension()) and offsets.tolist() == [0]


def test_save_round_trip(pair, tmp_path):
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    st_model, sf_model = pair
    sf_model.save(tmp_path / "saved")
    reloaded_st = STMultiVectorEncoder(str(tmp_path / "saved"), device="cpu")
    reloaded_sf = MultiVectorEncoder(tmp_path / "saved", device="cpu")
    assert reloaded_st.similarity_fn_name == st_model.similarity_fn_name
    expected = st_model.encode_document(SENTENCES)
    assert_same_tokens(reloaded_st.encode_document(SENTENCES), expected)
    assert_same_tokens(reloaded_sf.encode_document(SENTENCES), expected)


def test_bad_arguments(pair):
    _, model = pair
    with pytest.raises(ValueError, match="convert_to_tensor"):
        model.encode(["a"], convert_to_tensor=True)
    with pytest.raises(ValueError, match="token_pooling"):
        model.encode(["a"], token_pooling=object())
    with pytest.raises(ValueError, match="similarity_fn_name"):
        model.similarity_fn_name = "cosine"


def ragged(lengths, dim=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1).to(dtype) for n in lengths]


def padded(items):
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True)


@pytest.mark.parametrize("name", ["maxsim", "mean_maxsim"])
def test_util_maxsim_matches_sentence_transformers(name):
    from sentence_transformers import util as st_util

    ours, theirs = getattr(util, name), getattr(st_util, name)
    a, b = ragged([3, 5, 1]), ragged([4, 1, 7, 2], seed=1)
    a_mask = [torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1, 0, 1]), torch.tensor([1])]
    b_mask = padded([torch.ones(4), torch.zeros(1), torch.ones(7), torch.tensor([0.0, 1.0])])  # doc 1 empty
    cases = [
        ((a, b), {}),
        ((padded(a), padded(b)), {}),
        ((a, b), {"a_mask": a_mask, "b_mask": b_mask}),
        ((padded(a), padded(b)), {"b_mask": b_mask}),
        ((a[0], b), {}),
        ((a, b[2].numpy()), {}),
        ((a, b), {"length_normalize": name == "maxsim"}),
        (([x.bfloat16() for x in a], [x.bfloat16() for x in b]), {}),
        ((a, []), {}),
    ]
    for args, kwargs in cases:
        expected, got = theirs(*args, **kwargs), ours(*args, **kwargs)
        assert got.shape == expected.shape and got.dtype == torch.float32
        tol = 1e-2 if args[0][0].dtype == torch.bfloat16 else REL
        assert max_rel_diff(got, expected) <= tol, (args, kwargs)


@pytest.mark.parametrize("name", ["maxsim_pairwise", "mean_maxsim_pairwise"])
def test_util_pairwise_matches_sentence_transformers(name):
    from sentence_transformers import util as st_util

    ours, theirs = getattr(util, name), getattr(st_util, name)
    a, b = ragged([3, 5, 2]), ragged([4, 1, 6], seed=2)
    b_mask = padded([torch.ones(4), torch.zeros(1), torch.ones(6)])
    for kwargs in ({}, {"b_mask": b_mask}, {"length_normalize": False}):
        assert max_rel_diff(ours(a, b, **kwargs), theirs(a, b, **kwargs)) <= REL
    with pytest.raises(ValueError, match="same number of items"):
        ours(a, b[:2])


def test_copies_and_pickles_encode_the_same(pair):
    _, ours = pair
    want = ours.encode(SENTENCES)
    for other in copies(ours):
        assert_same_tokens(other.encode(SENTENCES), want)


def _pylate_folder(out, config: dict) -> None:
    """A PyLate save: a BERT whose vocabulary holds [unused0] / [unused1], its projection as a pylate Dense, and
    PyLate's settings at the top of config_sentence_transformers.json."""
    import json

    import transformers as tf
    from conftest import _wordpieces
    from safetensors.torch import save_file

    torch.manual_seed(3)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
                                        + _wordpieces())}
    tokenizer = tf.BertTokenizer(vocab=vocab, do_lower_case=True)
    tf.BertModel(tf.BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=256), add_pooling_layer=False
                 ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (out / "1_Dense").mkdir()
    (out / "1_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 16, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    save_file({"linear.weight": torch.randn(16, 32)}, str(out / "1_Dense" / "model.safetensors"))
    (out / "config_sentence_transformers.json").write_text(json.dumps(config))


PYLATE = {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 24, "document_length": 40,
          "do_query_expansion": True, "attend_to_expansion_tokens": False}


@pytest.mark.parametrize("config", [
    {**PYLATE, "model_type": "ColBERT"},  # PyLate 3: masking and normalizing were inline
    {**PYLATE, "model_type": "ColBERT", "skiplist_words": ["the"], "attend_to_expansion_tokens": True},
    {**PYLATE, "similarity_fn_name": "MaxSim", "do_query_expansion": False},
], ids=["pylate3", "pylate3-skiplist-attend", "maxsim-no-expansion"])
def test_pylate_checkpoints_as_sentence_transformers_reads_them(tmp_path, config):
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    _pylate_folder(tmp_path / "pylate", config)
    st = STMultiVectorEncoder(str(tmp_path / "pylate"), device="cpu")
    ours = MultiVectorEncoder(tmp_path / "pylate", device="cpu")
    assert ours.prompts == st.prompts and ours.prompts["query"].startswith("[unused0]")
    assert ours.tokenizer.tokenize("[unused0] who") == ["[unused0]", "who"]  # the prefix stays one token
    queries, documents = ["who wrote hamlet?", "the capital of france"], SENTENCES[:4]
    assert_same_tokens(ours.encode_query(queries), st.encode_query(queries))
    assert_same_tokens(ours.encode_document(documents), st.encode_document(documents))


@pytest.mark.parametrize("metadata", [{"query_maxlen": 20, "doc_maxlen": 40, "mask_punctuation": True},
                                      {"query_maxlen": 16, "attend_to_mask_tokens": True, "mask_punctuation": False},
                                      None], ids=["metadata", "attend-no-mask", "no-metadata"])
def test_stanford_colbert_checkpoints_as_sentence_transformers_builds_them(tmp_path, metadata):
    """colbertv2.0's layout: HF_ColBERT in config.json, the projection as linear.weight beside the encoder's
    weights, settings in artifact.metadata."""
    import json

    from safetensors.torch import load_file, save_file
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    folder = tmp_path / "colbert"
    _pylate_folder(folder, {})
    for extra in ("modules.json", "config_sentence_transformers.json"):
        (folder / extra).unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["HF_ColBERT"]}))
    weights = load_file(str(folder / "model.safetensors"))
    weights["linear.weight"] = torch.randn(16, 32)
    save_file(weights, str(folder / "model.safetensors"))
    if metadata is not None:
        (folder / "artifact.metadata").write_text(json.dumps(metadata))
    st = STMultiVectorEncoder(str(folder), device="cpu")
    ours = MultiVectorEncoder(folder, device="cpu")
    assert ours.prompts == st.prompts == {"query": "[unused0] ", "document": "[unused1] "}
    queries, documents = ["who wrote hamlet?", "the capital, of france"], SENTENCES[:4]
    assert_same_tokens(ours.encode_query(queries), st.encode_query(queries))
    assert_same_tokens(ours.encode_document(documents), st.encode_document(documents))


@pytest.mark.parametrize("attend", [False, True])
def test_expansion_without_a_mask_module_scores_what_is_attended(mv_root, tmp_path, attend, caplog):
    import logging

    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer

    torch.manual_seed(5)
    STMultiVectorEncoder(modules=[
        Transformer(str(mv_root / "hf"), query_expansion={"strategy": "fixed", "length": 12, "attend": attend}),
        Dense(32, 16, bias=False, activation_function=torch.nn.Identity(), module_input_name="token_embeddings"),
        Normalize(module_input_name="token_embeddings")], device="cpu").save(str(tmp_path / "no-mask"))
    st = STMultiVectorEncoder(str(tmp_path / "no-mask"), device="cpu")
    with caplog.at_level(logging.WARNING):
        ours = MultiVectorEncoder(tmp_path / "no-mask", device="cpu")
    assert "no MultiVectorMask" in caplog.text
    queries = ["short query", "a somewhat longer query about cats"]
    assert_same_tokens(ours.encode_query(queries), st.encode_query(queries))


@pytest.mark.parametrize("patch, message", [
    ({"query_expansion": {"strategy": "fixed", "length": 16, "token": "<not_a_token>"}}, "not in the tokenizer"),
    ({"query_expansion": {"strategy": "fixed", "length": 16, "stride": 2}}, "unknown keys \\['stride'\\]"),
    ({"query_expansion": {"strategy": "fixed", "length": 16, "attend": "yes"}}, "must be a bool"),
    ({"query_length": 8, "query_expansion": {"strategy": "min", "length": 16}}, "query_length 8 is below"),
])
def test_expansion_settings_sentence_transformers_refuses_are_refused(mv_root, tmp_path, patch, message):
    import json
    import shutil

    from sentfuse.model.modules import ModelFolderError

    folder = tmp_path / "patched"
    shutil.copytree(mv_root / next(iter(FOLDERS)), folder)
    config_path = folder / "sentence_bert_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config_path.write_text(json.dumps({**config, **patch}))
    with pytest.raises(ModelFolderError, match=message):
        MultiVectorEncoder(folder, device="cpu")
