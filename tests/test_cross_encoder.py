"""CrossEncoder against sentence-transformers' CrossEncoder on tiny random sequence-classification folders:
sentence-transformers 6 CrossEncoder folders it saves itself, and plain Hugging Face folders (BERT, ModernBERT,
XLM-R, ELECTRA; one label and several)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import SENTENCES, _tokenizer, copies
from op_devices import device  # noqa: F401  (fixture)

import sentfuse
from sentfuse.encode.tokenize import ChunkTokenizer
from sentfuse.model.modules import ModelFolderError

LONG = "a very long document that runs on and on " * 40  # past every folder's token limit
QUERY = "What is the capital of France?"
DOCUMENTS = SENTENCES + [LONG, "Paris is the capital of France."]
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [(LONG, LONG), ("", ""), (LONG, "short"), ("ok", LONG)]
MAX_LENGTH = 48
# name -> (architecture, labels, saved by sentence-transformers (else a plain Hugging Face folder), prompts)
SPECS = {
    "bert-1": ("bert", 1, True, {"query": "query: "}),
    "bert-3": ("bert", 3, True, None),
    "modernbert-1": ("modernbert", 1, True, None),
    "xlmr-1": ("xlm-roberta", 1, False, None),
    "electra-2": ("electra", 2, False, None),
}
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _classifier(arch: str, vocab_size: int, labels: int, pad_id: int):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_labels=labels, pad_token_id=pad_id)
    if arch == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(max_position_embeddings=64, **common))
    if arch == "modernbert":
        return tf.ModernBertForSequenceClassification(tf.ModernBertConfig(max_position_embeddings=64, **common))
    if arch == "electra":
        return tf.ElectraForSequenceClassification(tf.ElectraConfig(embedding_size=16, max_position_embeddings=64,
                                                                     **common))
    return tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(max_position_embeddings=66, **common))


@pytest.fixture(scope="module")
def ce_root(tmp_path_factory):
    """One folder per SPECS entry, a causal-LM folder and a SentenceTransformer folder (both refused)."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    root = tmp_path_factory.mktemp("cross-encoders")
    for seed, (name, (arch, labels, st_saved, prompts)) in enumerate(SPECS.items()):
        torch.manual_seed(seed)
        tokenizer = _tokenizer("bert" if arch in ("modernbert", "electra") else arch, root / f"{name}-vocab")
        tokenizer.model_max_length = MAX_LENGTH
        model = _classifier(arch, len(tokenizer), labels, tokenizer.pad_token_id)
        with torch.no_grad():  # every parameter (biases, LayerNorms) away from its default
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        hf = root / (f"hf-{name}" if st_saved else name)
        model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        if st_saved:
            STCrossEncoder(str(hf), device="cpu", prompts=prompts).save(str(root / name))
    return root


def _pair(folder, **kwargs):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    return STCrossEncoder(str(folder), device="cpu"), sentfuse.CrossEncoder(folder, device="cpu", **kwargs)


def assert_close_scores(expected, got, dtype=torch.float32) -> None:
    expected, got = torch.as_tensor(expected).float(), torch.as_tensor(got).float().cpu()
    assert got.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-12)
    assert float((got - expected).abs().max() / scale) <= TOL[dtype]


@pytest.mark.parametrize("name", list(SPECS))
def test_same_scores_as_sentence_transformers(ce_root, name):
    st, ours = _pair(ce_root / name)
    assert ours.num_labels == st.num_labels == SPECS[name][1]
    assert ours.max_seq_length == st.max_seq_length
    identity = torch.nn.Identity()
    logits = st.predict(PAIRS, activation_fn=identity, convert_to_tensor=True)
    assert_close_scores(logits, ours.predict(PAIRS, activation_fn=identity, convert_to_tensor=True))
    assert_close_scores(st.predict(PAIRS), ours.predict(PAIRS))
    assert_close_scores(st.predict(PAIRS, apply_softmax=True), ours.predict(PAIRS, apply_softmax=True))
    if ours.num_labels == 1:
        want = st.rank(QUERY, DOCUMENTS, return_documents=True)
        got = ours.rank(QUERY, DOCUMENTS, return_documents=True)
        assert [h["corpus_id"] for h in got] == [h["corpus_id"] for h in want]
        assert [h["text"] for h in got] == [h["text"] for h in want]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_models(ce_root, dtype):
    st, ours = _pair(ce_root / "bert-3", dtype=dtype)
    assert ours.model.dtype == dtype
    got = ours.predict(PAIRS, activation_fn=torch.nn.Identity())
    assert got.dtype == np.float32
    assert_close_scores(st.predict(PAIRS, activation_fn=torch.nn.Identity()), got, dtype)


def test_on_each_device(ce_root, device):  # noqa: F811
    st, ours = _pair(ce_root / "bert-1")
    ours.to(device)
    got = ours.predict(PAIRS * 3, convert_to_tensor=True)
    assert got.device.type == device
    assert_close_scores(st.predict(PAIRS * 3), got)


def test_result_types(ce_root):
    st, ours = _pair(ce_root / "bert-1")
    one = ours.predict(PAIRS[0])
    assert isinstance(one, np.float32) and abs(one - st.predict(PAIRS[0])) <= 1e-6
    assert ours.predict([list(PAIRS[0])]).shape == (1,)
    assert ours.predict(np.array(PAIRS[:3])).shape == (3,)  # a 2-D string array: a list of pairs
    assert ours.predict(np.array(PAIRS[0])).shape == ()  # a 1-D one: one pair
    tensor = ours.predict(PAIRS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(PAIRS),)
    as_list = ours.predict(PAIRS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(PAIRS) and as_list[0].shape == ()
    for kwargs in ({}, {"convert_to_tensor": True}):
        want, got = st.predict([], **kwargs), ours.predict([], **kwargs)
        assert type(got) is type(want) and got.shape == want.shape == (0,)
    assert ours.rank(QUERY, []) == []


def test_several_labels(ce_root):
    st, ours = _pair(ce_root / "bert-3")
    scores = ours.predict(PAIRS)
    assert scores.shape == (len(PAIRS), 3)
    softmax = ours.predict(PAIRS, apply_softmax=True)
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, rtol=1e-6)
    assert ours.predict(PAIRS[0], convert_to_tensor=True).shape == (3,)
    with pytest.raises(ValueError, match="num_labels=3"):
        ours.rank(QUERY, DOCUMENTS)


def test_prompts_and_activations(ce_root):
    folder = ce_root / "bert-1"
    st, ours = _pair(folder)
    assert ours.prompts == st.prompts == {"query": "query: "}
    for kwargs in ({"prompt_name": "query"}, {"prompt": "Rank this: "}):
        assert_close_scores(st.predict(PAIRS, **kwargs), ours.predict(PAIRS, **kwargs))
    assert not np.allclose(ours.predict(PAIRS, prompt="Rank this: "), ours.predict(PAIRS))
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        ours.predict(PAIRS, prompt_name="nope")
    from sentence_transformers import CrossEncoder as STCrossEncoder

    st_default = STCrossEncoder(str(folder), device="cpu", default_prompt_name="query")
    ours_default = sentfuse.CrossEncoder(folder, device="cpu", default_prompt_name="query")
    assert_close_scores(st_default.predict(PAIRS), ours_default.predict(PAIRS))
    tanh = sentfuse.CrossEncoder(folder, device="cpu", activation_fn=torch.nn.Tanh())
    logits = ours.predict(PAIRS, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(tanh.predict(PAIRS), np.tanh(logits), rtol=1e-6)
    np.testing.assert_allclose(ours.predict(PAIRS, activation_fn=lambda x: x * 2), logits * 2, rtol=1e-6)


def test_an_activation_outside_torch(ce_root, tmp_path, caplog):
    """Without trust_remote_code the default is used (with a warning), as sentence-transformers does; with it,
    sentence-transformers would import the class, which sentfuse never does: an error, not other scores."""
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(ce_root / "bert-1", folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["activation_fn"] = "my_package.MyActivation"
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        assert isinstance(sentfuse.CrossEncoder(folder, device="cpu").activation_fn, torch.nn.Sigmoid)
    assert "my_package.MyActivation" in caplog.text
    with pytest.raises(NotImplementedError, match="my_package.MyActivation"):
        sentfuse.CrossEncoder(folder, device="cpu", trust_remote_code=True)
    given = sentfuse.CrossEncoder(folder, device="cpu", trust_remote_code=True, activation_fn=torch.nn.Tanh())
    assert isinstance(given.activation_fn, torch.nn.Tanh)


def test_token_limits(ce_root):
    folder = ce_root / "bert-1"
    from sentence_transformers import CrossEncoder as STCrossEncoder

    st = STCrossEncoder(str(folder), device="cpu", max_length=16)
    for kwargs in ({"max_length": 16}, {"max_seq_length": 16}, {"processor_kwargs": {"model_max_length": 16}},
                   {"tokenizer_args": {"model_max_length": 16}}):
        ours = sentfuse.CrossEncoder(folder, device="cpu", **kwargs)
        assert ours.max_seq_length == 16
        assert_close_scores(st.predict(PAIRS), ours.predict(PAIRS))
    ours.max_seq_length = 32
    st.max_seq_length = 32
    assert_close_scores(st.predict(PAIRS), ours.predict(PAIRS))
    with pytest.warns(DeprecationWarning, match="max_seq_length"):
        assert ours.max_length == 32
    with pytest.raises(ValueError, match="conflicting token limits"):
        sentfuse.CrossEncoder(folder, device="cpu", max_length=16, max_seq_length=32)
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        ours.max_seq_length = 0


def test_constructor_keywords(ce_root, caplog):
    folder = ce_root / "bert-1"
    base = sentfuse.CrossEncoder(folder, device="cpu").predict(PAIRS)
    accepted = [
        {"model_kwargs": {"torch_dtype": "float32"}}, {"automodel_args": {"dtype": torch.float32}},
        {"config_kwargs": {"classifier_dropout": 0.3}}, {"classifier_dropout": 0.3}, {"config_args": {}},
        {"cache_folder": str(ce_root)}, {"cache_dir": str(ce_root)}, {"revision": None}, {"token": None},
        {"local_files_only": True}, {"backend": "torch"}, {"keep_in_fp32_modules": []}, {"num_labels": 1},
        {"trust_remote_code": False}, {"use_kernels": False}, {"trust_remote_code": True}, {"token": "hf_x"},
        {"model_kwargs": {"attn_implementation": "eager"}}, {"model_card_data": object()},
    ]
    with caplog.at_level(logging.WARNING):
        for kwargs in accepted:
            np.testing.assert_allclose(sentfuse.CrossEncoder(folder, device="cpu", **kwargs).predict(PAIRS), base,
                                       rtol=1e-6)
    assert "renamed" in caplog.text
    ours = sentfuse.CrossEncoder(model_name=folder, device="cpu", default_activation_function=torch.nn.Identity())
    with pytest.warns(DeprecationWarning):
        assert isinstance(ours.default_activation_function, torch.nn.Identity)
    # The loading keywords reach transformers as they do for Encoder (one parser: sentfuse.model.options).
    ours = sentfuse.CrossEncoder(folder, device="cpu", processor_kwargs={"padding_side": "left"},
                                 config_kwargs={"hidden_act": "relu"})
    assert ours.tokenizer.padding_side == "left" and ours.config.hidden_act == "relu"
    refused = {"modules": [torch.nn.Identity()], "backend": "onnx", "keep_in_fp32_modules": ["classifier"],
               "model_kwargs": {"device_map": "auto"}}
    for name, value in refused.items():
        with pytest.raises(ValueError, match=f"^{name}(=| is not supported|\\['device_map'\\]=)"):
            sentfuse.CrossEncoder(folder, device="cpu", **{name: value})
    with pytest.raises(TypeError, match="trust_remote_code must be a bool"):
        sentfuse.CrossEncoder(folder, device="cpu", trust_remote_code="yes")
    with pytest.raises(TypeError, match="no_such_keyword"):
        sentfuse.CrossEncoder(folder, device="cpu", no_such_keyword=1)
    with pytest.raises(ValueError, match="model_name_or_path is required"):
        sentfuse.CrossEncoder()


def test_new_classifier_from_a_backbone(tiny_model_root, tmp_path):
    """A folder without a classifier gets a new one of num_labels (one unless asked), as sentence-transformers
    builds it; save writes that classifier, not a fresh draw."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ours = sentfuse.CrossEncoder(tiny_model_root / "hf-bert", device="cpu", num_labels=4)
    assert ours.num_labels == 4 and ours.predict(PAIRS).shape == (len(PAIRS), 4)
    default = sentfuse.CrossEncoder(tiny_model_root / "hf-bert", device="cpu")
    st = STCrossEncoder(str(tiny_model_root / "hf-bert"), device="cpu")
    assert default.num_labels == st.num_labels == 1
    assert type(default.activation_fn) is type(st.activation_fn) is torch.nn.Sigmoid
    want = default.predict(PAIRS)
    default.save(tmp_path / "saved")
    assert_close_scores(want, sentfuse.CrossEncoder(tmp_path / "saved", device="cpu").predict(PAIRS))
    assert_close_scores(want, STCrossEncoder(str(tmp_path / "saved"), device="cpu").predict(PAIRS))


def test_save_writes_the_running_weights(ce_root, tmp_path):
    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu")
    with torch.no_grad():
        ours.model.classifier.bias.add_(1.0)
    want = ours.predict(PAIRS)
    ours.save(tmp_path / "edited")
    assert_close_scores(want, sentfuse.CrossEncoder(tmp_path / "edited", device="cpu").predict(PAIRS))


@pytest.mark.parametrize("dtype", [None, "int8-dynamic"])
def test_copies_and_pickles_score_the_same(ce_root, dtype):
    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu", dtype=dtype)
    want = ours.predict(PAIRS)
    for other in copies(ours):
        assert other.model is not ours.model
        np.testing.assert_array_equal(other.predict(PAIRS), want)
    np.testing.assert_array_equal(ours.predict(PAIRS), want)


def test_is_singular_input_as_sentence_transformers(ce_root):
    st, ours = _pair(ce_root / "bert-1")
    for inputs in (("a", "b"), ["a", "b"], [("a", "b")], [], np.array(["a", "b"]), np.array([["a", "b"]]),
                   np.array([], dtype=str), [["a", "b"], ["c", "d"]]):
        assert ours.is_singular_input(inputs) == st.is_singular_input(inputs), inputs


def test_model_card_data_takes_evaluator_results(ce_root):
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu")
    samples = [{"query": QUERY, "positive": [DOCUMENTS[-1]], "negative": DOCUMENTS[:3]}]
    metrics = CrossEncoderRerankingEvaluator(samples, name="t")(ours)
    assert ours.model_card_data.eval_results[-1]["metrics"] == metrics


def test_per_call_processing_kwargs(ce_root):
    st, ours = _pair(ce_root / "bert-1")
    for kwargs in ({"text": {"max_length": 12, "truncation": True}}, {"common": {"max_length": 20},
                                                                       "text": {"padding": True}}):
        assert_close_scores(st.predict(PAIRS, processing_kwargs=kwargs), ours.predict(PAIRS, processing_kwargs=kwargs))
    assert_close_scores(st.predict(PAIRS), ours.predict(PAIRS))  # the model's own limit again
    assert_close_scores(ours.predict(PAIRS, processing_kwargs={}), ours.predict(PAIRS))
    for bad, error in (({"image": {}}, NotImplementedError), ({"text": {"stride": 2}}, NotImplementedError),
                       ({"text": {"truncation": False}}, NotImplementedError), (3, TypeError),
                       ({"text": {"max_length": 0}}, ValueError)):
        with pytest.raises(error, match="processing_kwargs"):
            ours.predict(PAIRS, processing_kwargs=bad)


def test_a_chat_template_is_refused_not_ignored(ce_root):
    """sentence-transformers renders pairs through a tokenizer's chat template (unless the folder pins the text
    modality, as its own saves do): sentfuse refuses such a folder rather than score it differently."""
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(NotImplementedError, match="chat template"):
        sentfuse.CrossEncoder(ce_root / "hf-bert-1", device="cpu", processor_kwargs={"chat_template": template})
    pinned = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu", processor_kwargs={"chat_template": template})
    assert pinned.predict(PAIRS[:2]).shape == (2,)


def test_call_keywords(ce_root, caplog):
    st, ours = _pair(ce_root / "bert-1")
    base = ours.predict(PAIRS)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(ours.predict(sentences=PAIRS, num_workers=2), base)
        np.testing.assert_allclose(ours.predict(PAIRS, activation_fct=torch.nn.Identity()),
                                   ours.predict(PAIRS, activation_fn=torch.nn.Identity()))
        ranked = ours.rank(QUERY, DOCUMENTS, apply_softmax=True, convert_to_numpy=True, convert_to_tensor=True)
    assert "no effect" in caplog.text and "renamed" in caplog.text
    assert ranked == ours.rank(QUERY, DOCUMENTS)
    for batch_size, tokens in ((1, None), (3, None), (None, 64), (2, 10_000)):
        np.testing.assert_allclose(ours.predict(PAIRS, batch_size=batch_size, max_batch_tokens=tokens), base,
                                   rtol=1e-5, atol=1e-6)
    top = ours.rank(QUERY, DOCUMENTS, top_k=3, return_documents=True, show_progress_bar=True)
    want = st.rank(QUERY, DOCUMENTS, top_k=3, return_documents=True)
    assert [(h["corpus_id"], h["text"]) for h in top] == [(h["corpus_id"], h["text"]) for h in want]
    assert set(ours.rank(QUERY, DOCUMENTS)[0]) == {"corpus_id", "score"}
    ours.predict(PAIRS, device="cpu", show_progress_bar=False)
    with pytest.raises(TypeError, match="tokenizer_kwargs"):
        ours.predict(PAIRS, tokenizer_kwargs={})
    with pytest.raises(TypeError, match="processing_kwargs"):  # predict's only, as in sentence-transformers
        ours.rank(QUERY, DOCUMENTS, processing_kwargs={})


@pytest.mark.parametrize("inputs, message", [
    (None, "inputs must be a .text, text. pair"),
    ("just one text", "inputs must be a .text, text. pair"),
    ([("a",)], r"inputs\[0\] must be a pair of two str, got 1 items"),
    ([("a", "b"), ("a", "b", "c")], r"inputs\[1\] must be a pair of two str, got 3 items"),
    ([("a", "b"), (1, "b")], r"inputs\[1\] must be a pair of two str, got 2 items \(int, str\)"),
    ([["a", None]], r"inputs\[0\] must be a pair of two str"),
    (("a", 2), "inputs must be a pair of two str"),
    ([("a", "b"), "ab"], r"inputs\[1\] must be a pair of two str, got str"),
])
def test_bad_pairs(ce_root, inputs, message):
    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu")
    with pytest.raises(TypeError, match=message):
        ours.predict(inputs)


def test_bad_arguments(ce_root):
    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu")
    for kwargs, error, message in (
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"max_batch_tokens": -1}, ValueError, "max_batch_tokens"),
        ({"convert_to_numpy": "yes"}, TypeError, "convert_to_numpy must be a bool"),
        ({"show_progress_bar": 1}, TypeError, "show_progress_bar"),
        ({"activation_fn": "sigmoid"}, TypeError, "activation_fn must be callable"),
        ({"device": "nope"}, ValueError, "device 'nope' is not a torch device"),
        ({"device": []}, ValueError, "device must be a non-empty list"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"pool": object()}, TypeError, "pool must be a pool"),
    ):
        with pytest.raises(error, match=message):
            ours.predict(PAIRS, **kwargs)
    for args, kwargs, error, message in (
        ((None, DOCUMENTS), {}, TypeError, "query must be a str"),
        ((QUERY, None), {}, TypeError, "documents must be a list of str"),
        ((QUERY, "one text"), {}, TypeError, "documents must be a list of str"),
        ((QUERY, ["a", 3]), {}, TypeError, r"documents\[1\] is int"),
        ((QUERY, DOCUMENTS), {"top_k": 0}, ValueError, "top_k must be a positive integer"),
        ((QUERY, DOCUMENTS), {"return_documents": "no"}, TypeError, "return_documents must be a bool"),
    ):
        with pytest.raises(error, match=message):
            ours.rank(*args, **kwargs)


def test_refused_folders(ce_root, tiny_model_root, tmp_path):
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    with pytest.raises(ModelFolderError, match="causal language model reranker"):
        sentfuse.CrossEncoder(causal)
    logit_score = tmp_path / "logit-score"
    logit_score.mkdir()
    (logit_score / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"}]))
    with pytest.raises(ModelFolderError, match="causal language model reranker"):
        sentfuse.CrossEncoder(logit_score)
    with pytest.raises(ModelFolderError, match="Transformer', 'Pooling'|model_type is 'SentenceTransformer'"):
        sentfuse.CrossEncoder(tiny_model_root / "bert-mean-normalize")
    with pytest.raises(ModelFolderError, match="does not exist"):
        sentfuse.CrossEncoder(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match="size mismatch|cannot load the classifier"):
        sentfuse.CrossEncoder(ce_root / "bert-3", num_labels=2)


@pytest.mark.parametrize("name", ["bert-1", "electra-2"])
def test_save_round_trip(ce_root, tmp_path, name):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ours = sentfuse.CrossEncoder(ce_root / name, device="cpu", max_length=40, activation_fn=torch.nn.Tanh(),
                                 prompts={"doc": "doc: "})
    want = ours.predict(PAIRS)
    ours.save(tmp_path / "saved")
    ours.save_pretrained(tmp_path / "saved")  # over an existing folder
    st_back = STCrossEncoder(str(tmp_path / "saved"), device="cpu")
    ours_back = sentfuse.CrossEncoder(tmp_path / "saved", device="cpu")
    for back in (st_back, ours_back):
        assert back.max_seq_length == 40 and back.prompts == ours.prompts and "doc" in ours.prompts
        assert isinstance(back.activation_fn, torch.nn.Tanh)
        assert_close_scores(want, back.predict(PAIRS))
    with pytest.raises(ValueError, match="is a file"):
        ours.save(tmp_path / "saved" / "config.json")


def test_pairs_tokenize_as_the_tokenizer_does(ce_root):
    from transformers import AutoTokenizer

    for fast in (True, False):
        tokenizer = AutoTokenizer.from_pretrained(ce_root / "hf-bert-1", use_fast=fast)
        pair_tokenizer = ChunkTokenizer(tokenizer, 24, pairs=True)
        assert pair_tokenizer.typed and not ChunkTokenizer(tokenizer, 24).typed  # types vary only within pairs
        chunk = pair_tokenizer([list(p) for p in PAIRS])
        want = tokenizer([p[0] for p in PAIRS], [p[1] for p in PAIRS], truncation="longest_first", max_length=24)
        for i, ids in enumerate(want["input_ids"]):
            span = slice(chunk.offsets[i], chunk.offsets[i + 1])
            assert chunk.ids[span].tolist() == ids
            assert chunk.type_ids[span].tolist() == want["token_type_ids"][i]


def test_pool_of_workers(ce_root, monkeypatch):
    import sentfuse.encode.pool as pool_module

    ours = sentfuse.CrossEncoder(ce_root / "bert-1", device="cpu")
    want = ours.predict(PAIRS)
    with ours.start_multi_process_pool(["cpu"]) as pool:
        np.testing.assert_allclose(ours.predict(PAIRS, pool=pool, chunk_size=5), want, rtol=1e-6)
        # the pool batches other pairs together: another padded width, which on some CPUs (AVX2) rounds scores
        # differently in the 7th digit
        got, expected = ours.rank(QUERY, DOCUMENTS, pool=pool), ours.rank(QUERY, DOCUMENTS)
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], rtol=1e-6)
        with pytest.raises(ValueError, match="either pool or device"):
            ours.predict(PAIRS, pool=pool, device="cpu")
        # A device list starts a pool for the call and stops it after: this one, so no second spawn is paid for.
        started = []
        monkeypatch.setattr(pool_module, "start_multi_process_pool",
                            lambda model, devices: started.append(devices) or pool)
        np.testing.assert_allclose(ours.predict(PAIRS, device=["cpu"]), want, rtol=1e-6)
        assert started == [["cpu"]] and pool._closed
