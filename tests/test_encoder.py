"""Encoder behaviour: argument checking, result shapes, ordering, batching, truncation, model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sentfuse import Encoder
from sentfuse.model.modules import ModelFolderError


@pytest.fixture(scope="module")
def bert(tiny_model_root) -> Encoder:
    return Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")


@pytest.fixture(scope="module")
def distilbert(tiny_model_root) -> Encoder:
    """16-token limit and do_lower_case, both from a legacy sentence_bert_config.json."""
    return Encoder(tiny_model_root / "distilbert-lasttoken-sqrt-lower", device="cpu")


@pytest.fixture
def no_forward(bert, monkeypatch):
    """Fails the test if the model runs: argument errors must come before any work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(bert, "_forward", forbidden)
    return bert


# --- argument checking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentences, message",
    [
        (["a", "b", "c", 3], r"sentences\[3\] is int, expected str"),
        (["a", None], r"sentences\[1\] is NoneType, expected str"),
        ([["nested"]], r"sentences\[0\] is list, expected str"),
        (5, "sentences must be a str or a list of str, got int"),
        (b"bytes", "sentences must be a str or a list of str, got bytes"),
    ],
)
def test_bad_sentences(no_forward, sentences, message):
    with pytest.raises(TypeError, match=message):
        no_forward.encode(sentences)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -2}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"precision": "float16"}, "precision must be one of .* got 'float16'"),
        ({"output_value": "cls"}, "output_value must be one of"),
        ({"prompt_name": "nope"}, "prompt_name 'nope' is not one of the prompts"),
        ({"truncate_dim": 0}, "truncate_dim must be a positive integer"),
        ({"device": "gpu0"}, "device 'gpu0' is not a torch device"),
        ({"precision": "int8", "sentences": ["only one"]}, "needs at least 2 sentences"),
        ({"precision": "uint8", "sentences": "a single str"}, "needs at least 2 sentences"),
    ],
)
def test_bad_arguments(no_forward, kwargs, message):
    sentences = kwargs.pop("sentences", ["one", "two"])
    with pytest.raises(ValueError, match=message):
        no_forward.encode(sentences, **kwargs)


@pytest.mark.parametrize("name", ["convert_to_numpy", "convert_to_tensor", "normalize_embeddings"])
def test_bad_flag(no_forward, name):
    with pytest.raises(TypeError, match=f"{name} must be a bool"):
        no_forward.encode(["x", "y"], **{name: "yes"})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"max_seq_length": 0}, "max_seq_length must be a positive integer"),
        ({"truncate_dim": -1}, "truncate_dim must be a positive integer"),
        ({"default_prompt_name": "missing"}, "default_prompt_name 'missing' is not one of the prompts"),
        ({"similarity_fn_name": "jaccard"}, "similarity_fn_name must be one of"),
        ({"device": "tpu:x"}, "is not a torch device"),
    ],
)
def test_bad_constructor_arguments(tiny_model_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Encoder(tiny_model_root / "bert-mean-normalize", **kwargs)


# --- model folders ------------------------------------------------------------------------------


@pytest.fixture
def folder_copy(tiny_model_root, tmp_path) -> Path:
    """A writable copy of a sentence-transformers folder with Pooling, Dense and Normalize."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_root / "bert-legacy-cls-max-mean-dense", dst)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match=f"model folder {tmp_path / 'nope'} does not exist"):
        Encoder(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="model folder ./nope/deeper does not exist"):
        Encoder("./nope/deeper")


def test_folder_without_model(tmp_path):
    with pytest.raises(ModelFolderError, match="neither modules.json .* nor config.json"):
        Encoder(tmp_path)


def test_name_not_in_cache(tmp_path):
    with pytest.raises(ModelFolderError, match="no model of that name was found in the local Hugging Face cache"):
        Encoder("sentfuse-tests/no-such-model", cache_folder=str(tmp_path))


def test_invalid_json(folder_copy):
    (folder_copy / "modules.json").write_text("[{")
    with pytest.raises(ModelFolderError, match=f"modules.json in {folder_copy} is not valid JSON"):
        Encoder(folder_copy)


def test_modules_json_not_a_list(folder_copy):
    (folder_copy / "modules.json").write_text('{"a": 1}')
    with pytest.raises(ModelFolderError, match="must hold a non-empty JSON list"):
        Encoder(folder_copy)


def test_unknown_pooling_mode(folder_copy):
    (folder_copy / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": ["mean", "median"]}))
    with pytest.raises(ModelFolderError, match="1_Pooling/config.json: unknown pooling mode 'median'"):
        Encoder(folder_copy)


def test_missing_pooling_config(folder_copy):
    (folder_copy / "1_Pooling" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="config.json not found in .*1_Pooling"):
        Encoder(folder_copy)


def test_missing_dense_weights(folder_copy):
    (folder_copy / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="no model.safetensors or pytorch_model.bin in .*2_Dense"):
        Encoder(folder_copy)


def test_dense_weights_from_pytorch_bin(folder_copy, tiny_model_root, sentences):
    from safetensors.torch import load_file

    dense = folder_copy / "2_Dense"
    torch.save(load_file(str(dense / "model.safetensors")), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    expected = Encoder(tiny_model_root / "bert-legacy-cls-max-mean-dense", device="cpu").encode(sentences)
    np.testing.assert_allclose(Encoder(folder_copy, device="cpu").encode(sentences), expected, atol=1e-6)


def test_dense_shape_mismatch(folder_copy):
    config = json.loads((folder_copy / "2_Dense" / "config.json").read_text())
    config["in_features"] = 10
    (folder_copy / "2_Dense" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="Dense weights in .* do not match config.json"):
        Encoder(folder_copy)


def test_unsupported_module(folder_copy):
    modules = json.loads((folder_copy / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "x", "path": "", "type": "sentence_transformers.models.LayerNorm"})
    (folder_copy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelFolderError, match="module type 'sentence_transformers.models.LayerNorm' is not supported"):
        Encoder(folder_copy)


def test_hub_name_from_local_cache(tiny_model_root, tmp_path, sentences):
    """A hub name resolves to its snapshot in a Hugging Face cache folder, without the network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--sentfuse-tests--tiny-bert"
    shutil.copytree(tiny_model_root / "bert-mean-normalize", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cached = Encoder("sentfuse-tests/tiny-bert", cache_folder=str(tmp_path), device="cpu")
    local = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    np.testing.assert_array_equal(cached.encode(sentences), local.encode(sentences))


def test_default_model_is_bundled_minilm():
    encoder = Encoder(device="cpu")
    assert encoder.get_sentence_embedding_dimension() == 384
    assert encoder.max_seq_length == 256
    emb = encoder.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)  # the folder ends with Normalize
    scores = encoder.similarity(emb, emb)
    assert scores[0, 1] > scores[0, 2] + 0.3


def test_plain_hf_folder_uses_mean_pooling(tiny_model_root, sentences):
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_model_root / "bert-plain-hf"
    emb = Encoder(folder, device="cpu").encode(sentences, convert_to_tensor=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(emb, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-4)


# --- results ------------------------------------------------------------------------------------


def test_empty_input(bert):
    dim = bert.get_sentence_embedding_dimension()
    out = bert.encode([])
    assert isinstance(out, np.ndarray) and out.shape == (0, dim) and out.dtype == np.float32
    tensor = bert.encode([], convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (0, dim)
    assert bert.encode([], convert_to_numpy=False) == []
    assert bert.encode([], output_value="token_embeddings") == []
    assert bert.encode([], truncate_dim=5).shape == (0, 5)
    binary = bert.encode([], precision="ubinary")
    assert binary.shape == (0, (dim + 7) // 8) and binary.dtype == np.uint8
    for precision, dtype in (("int8", np.int8), ("uint8", np.uint8)):  # nothing to calibrate on, nothing refused
        empty = bert.encode([], precision=precision)
        assert empty.shape == (0, dim) and empty.dtype == dtype
    with pytest.raises(ValueError, match="at least 2"):
        bert.encode(["one"], precision="int8")


def test_str_and_list_shapes(bert, sentences):
    dim = bert.get_sentence_embedding_dimension()
    assert bert.encode(sentences[0]).shape == (dim,)
    assert bert.encode(sentences[:1]).shape == (1, dim)
    assert bert.encode(sentences).shape == (len(sentences), dim)
    assert bert.encode(tuple(sentences)).shape == (len(sentences), dim)
    single = bert.encode(sentences[0], convert_to_tensor=True)
    assert isinstance(single, torch.Tensor) and tuple(single.shape) == (dim,)
    rows = bert.encode(sentences, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(sentences) and tuple(rows[0].shape) == (dim,)
    tokens = bert.encode(sentences[1], output_value="token_embeddings")
    assert isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and tokens.shape[1] == 32
    assert bert.encode(sentences[0], precision="binary").shape == ((dim + 7) // 8,)


def test_input_order_preserved(bert, sentences):
    together = bert.encode(sentences, batch_size=4)
    one_by_one = np.stack([bert.encode(s) for s in sentences])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(bert.encode(sentences[::-1], batch_size=4), together[::-1], atol=1e-5)
    tokens = bert.encode(sentences, output_value="token_embeddings", batch_size=3)
    for text, emb in zip(sentences, tokens):
        assert emb.shape[0] == len(bert.tokenizer(text)["input_ids"])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7, 10, 100])
def test_batch_sizes(bert, sentences, batch_size):
    np.testing.assert_allclose(bert.encode(sentences, batch_size=batch_size), bert.encode(sentences), atol=1e-5)


def test_duplicates_and_empty_strings(bert):
    out = bert.encode(["same", "", "same", ""])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    np.testing.assert_allclose(out[1], out[3], atol=1e-6)
    assert np.isfinite(out).all()


def test_over_long_text_is_truncated_like_sentence_transformers(tiny_model_root, distilbert):
    from sentence_transformers import SentenceTransformer

    folder = tiny_model_root / "distilbert-lasttoken-sqrt-lower"
    long_text = " ".join(["word"] * 50 + ["tail"] * 2000)
    head = " ".join(["word"] * 50)
    assert distilbert.max_seq_length == 16
    tokens = distilbert.encode(long_text, output_value="token_embeddings")
    assert tokens.shape[0] == 16
    ours = distilbert.encode([long_text, head, "short"])
    np.testing.assert_allclose(ours[0], ours[1], atol=1e-6)  # everything past token 16 is cut
    theirs = SentenceTransformer(str(folder), device="cpu").encode([long_text, head, "short"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_max_seq_length_override(tiny_model_root, sentences):
    folder = tiny_model_root / "bert-mean-normalize"
    short = Encoder(folder, device="cpu", max_seq_length=5)
    assert short.max_seq_length == 5
    assert short.encode(sentences[1], output_value="token_embeddings").shape[0] == 5
    short.max_seq_length = 7
    assert short.encode(sentences[1], output_value="token_embeddings").shape[0] == 7
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        short.max_seq_length = 0


def test_do_lower_case(distilbert):
    upper, lower = distilbert.encode(["HELLO Big World", "hello big world"])
    np.testing.assert_allclose(upper, lower, atol=1e-6)


def test_prompts(tiny_model_root, sentences):
    encoder = Encoder(tiny_model_root / "mpnet-weightedmean-noprompt", device="cpu")
    assert encoder.default_prompt_name == "classify"
    default = encoder.encode(sentences)
    np.testing.assert_allclose(default, encoder.encode(sentences, prompt_name="classify"), atol=1e-6)
    np.testing.assert_allclose(default, encoder.encode(sentences, prompt="classify this text: "), atol=1e-6)
    query = encoder.encode_query(sentences)
    np.testing.assert_allclose(query, encoder.encode(sentences, prompt_name="query"), atol=1e-6)
    assert not np.allclose(query, default, atol=1e-3)
    # "document" is defined but empty, so encode_document uses no prompt rather than the default one.
    np.testing.assert_allclose(encoder.encode_document(sentences), encoder.encode(sentences, prompt=""), atol=1e-6)
    overridden = Encoder(tiny_model_root / "mpnet-weightedmean-noprompt", device="cpu", prompts={"query": "q "})
    assert overridden.prompts["query"] == "q " and overridden.prompts["classify"] == "classify this text: "


def test_include_prompt_false_skips_prompt_tokens(tiny_model_root):
    """With include_prompt=False a prompt only changes the context, never adds its own tokens to the pool."""
    encoder = Encoder(tiny_model_root / "bert-mean-noprompt-dense", device="cpu")
    prompt = encoder.prompts["query"]
    assert encoder._prompt_length(prompt) == len(encoder.tokenizer(prompt)["input_ids"]) - 1
    tokens = encoder.encode("some text", prompt_name="query", output_value="token_embeddings")
    assert tokens.shape[0] == len(encoder.tokenizer(prompt + "some text")["input_ids"])


@pytest.mark.parametrize("fn_name", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions(bert, fn_name):
    a = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0, 1.0]], dtype=np.float32)
    expected = {
        "cosine": (a @ b.T) / np.linalg.norm(a, axis=1, keepdims=True) / np.linalg.norm(b, axis=1),
        "dot": a @ b.T,
        "euclidean": -np.linalg.norm(a[:, None] - b[None], axis=-1),
        "manhattan": -np.abs(a[:, None] - b[None]).sum(-1),
    }[fn_name]
    previous = bert.similarity_fn_name
    try:
        bert.similarity_fn_name = fn_name
        scores = bert.similarity(a, torch.from_numpy(b[0]))
    finally:
        bert.similarity_fn_name = previous
    assert isinstance(scores, torch.Tensor) and scores.shape == (2, 1)
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)


def test_similarity_checks_shapes(bert):
    with pytest.raises(ValueError, match="embeddings1 has 3 features but embeddings2 has 4"):
        bert.similarity(np.ones((2, 3)), np.ones((2, 4)))


def test_properties(bert):
    assert bert.device == torch.device("cpu")
    assert bert.tokenizer("hi")["input_ids"][0] == bert.tokenizer.cls_token_id
    assert "bert-mean-normalize" in repr(bert)


def test_copies_and_pickles_encode_the_same(tiny_model_root, sentences):
    from conftest import copies

    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    want = encoder.encode(sentences)
    for other in copies(encoder):
        np.testing.assert_array_equal(other.encode(sentences), want)
