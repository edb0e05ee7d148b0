"""SparseEncoder against sentence-transformers' SparseEncoder on tiny random masked-LM folders saved by
sentence-transformers' own classes (BERT and DistilBERT backbones)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SENTENCES, _tokenizer, copies

import sentfuse
from sentfuse.model.modules import ModelFolderError

LONG = "a very long text that runs on " * 60  # past the folders' max_seq_length of 48
TEXTS = SENTENCES + [LONG, "  "]
SPLADE_SPECS = [(arch, act, pool) for arch in ("bert", "distilbert") for act in ("relu", "log1p_relu")
                for pool in ("max", "sum")]
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _mlm(arch: str, vocab_size: int):
    import transformers as tf

    if arch == "bert":
        config = tf.BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=128)
        return tf.BertForMaskedLM(config)
    config = tf.DistilBertConfig(vocab_size=vocab_size, dim=32, hidden_dim=64, n_layers=2, n_heads=2)
    return tf.DistilBertForMaskedLM(config)


@pytest.fixture(scope="module")
def sparse_root(tmp_path_factory):
    """One masked-LM folder per arch, a SparseEncoder folder per (arch, activation, pooling), and an
    inference-free Router folder (SparseStaticEmbedding queries, SPLADE documents)."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    root = tmp_path_factory.mktemp("sparse-models")
    for seed, arch in enumerate(("bert", "distilbert")):
        torch.manual_seed(seed)
        tokenizer = _tokenizer(arch, root / f"{arch}-vocab")
        model = _mlm(arch, len(tokenizer))
        with torch.no_grad():  # every parameter (biases, LayerNorms) away from its default
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(root / f"hf-{arch}")
        tokenizer.save_pretrained(root / f"hf-{arch}")
    for arch, act, pool in SPLADE_SPECS:
        backbone = Transformer(str(root / f"hf-{arch}"), transformer_task="fill-mask", max_seq_length=48)
        STSparseEncoder(modules=[backbone, SpladePooling(pool, act)], device="cpu",
                        prompts={"query": "query: ", "document": "passage: "}).save(str(root / f"{arch}-{act}-{pool}"))
    backbone = Transformer(str(root / "hf-bert"), transformer_task="fill-mask", max_seq_length=48)
    weight = torch.rand(len(backbone.tokenizer))
    static = SparseStaticEmbedding(tokenizer=backbone.tokenizer, weight=weight, frozen=True)
    router = Router.for_query_document(query_modules=[static], document_modules=[backbone, SpladePooling("max")])
    STSparseEncoder(modules=[router], device="cpu", max_active_dims=None).save(str(root / "inference-free"))
    return root


def _set_padding_side(st, ours, side: str) -> None:
    st.tokenizer.padding_side = side
    for head in ours._heads.values():
        head.tokenizer.padding_side = side


def _pair(folder, dtype=None, **kwargs):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    model_kwargs = {"dtype": dtype} if dtype is not None else None
    st = STSparseEncoder(str(folder), device="cpu", model_kwargs=model_kwargs, **kwargs)
    return st, sentfuse.SparseEncoder(folder, device="cpu", dtype=dtype, **kwargs)


def assert_same_vectors(expected: torch.Tensor, got: torch.Tensor, dtype=torch.float32):
    """Same active dimensions and values within TOL[dtype] (relative to the largest weight for 16-bit)."""
    expected, got = expected.to_dense().float(), got.to_dense().float()
    assert got.shape == expected.shape
    tol = TOL[dtype] * (1 if dtype == torch.float32 else max(1.0, expected.abs().max().item()))
    torch.testing.assert_close(got, expected, atol=tol, rtol=TOL[dtype])
    clear = (expected.abs() > tol) | (got.abs() > tol)  # 16-bit: weights near 0 may fall either side
    assert torch.equal((got != 0) & clear, (expected != 0) & clear)
    if dtype == torch.float32:
        assert torch.equal(got != 0, expected != 0)


@pytest.mark.parametrize("spec", SPLADE_SPECS, ids=["-".join(s) for s in SPLADE_SPECS])
def test_same_vectors_as_sentence_transformers(sparse_root, spec):
    st, ours = _pair(sparse_root / "-".join(spec))
    for method in ("encode", "encode_query", "encode_document"):
        expected = getattr(st, method)(TEXTS, batch_size=5)
        got = getattr(ours, method)(TEXTS, batch_size=3)  # right padding: batching never changes a vector
        assert got.is_sparse and got.shape == (len(TEXTS), ours.get_embedding_dimension())
        assert_same_vectors(expected, got)
    # Left padding shifts absolute positions, so a vector depends on its batch: compare one batch as
    # sentence-transformers pads it, through both heads.
    _set_padding_side(st, ours, "left")
    features = {k: v for k, v in st.preprocess(TEXTS, prompt="query: ").items() if isinstance(v, torch.Tensor)}
    with torch.inference_mode():
        assert_same_vectors(st(dict(features))["sentence_embedding"], ours._heads["default"](features))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", [("bert", "relu", "max"), ("distilbert", "log1p_relu", "sum")], ids=str)
def test_16_bit_backbones(sparse_root, spec, dtype):
    st, ours = _pair(sparse_root / "-".join(spec), dtype=dtype)
    assert_same_vectors(st.encode(TEXTS), ours.encode(TEXTS), dtype)


def test_max_active_dims_and_prompts(sparse_root):
    st, ours = _pair(sparse_root / "bert-relu-max")
    assert_same_vectors(st.encode(TEXTS, max_active_dims=7), ours.encode(TEXTS, max_active_dims=7))
    assert (ours.encode(TEXTS, max_active_dims=7).to_dense() != 0).sum(1).max() <= 7
    assert_same_vectors(st.encode(TEXTS, prompt="search: "), ours.encode(TEXTS, prompt="search: "))
    assert_same_vectors(st.encode_query(TEXTS, prompt_name="document"), ours.encode_query(TEXTS, prompt_name="document"))
    st, ours = _pair(sparse_root / "bert-relu-max", max_active_dims=3)
    assert_same_vectors(st.encode(TEXTS), ours.encode(TEXTS))


def test_inference_free_router(sparse_root):
    st, ours = _pair(sparse_root / "inference-free")
    for method in ("encode", "encode_query", "encode_document"):
        assert_same_vectors(getattr(st, method)(TEXTS), getattr(ours, method)(TEXTS))
    query = ours.encode_query(["a man"], convert_to_sparse_tensor=False)[0]
    assert (query != 0).sum() == 2, "the static route weighs each distinct token of the text, no special tokens"


def test_result_types(sparse_root):
    st, ours = _pair(sparse_root / "bert-log1p_relu-max")
    one = ours.encode("A man is playing a guitar.")
    assert one.is_sparse and one.shape == (ours.get_embedding_dimension(),)
    assert_same_vectors(st.encode("A man is playing a guitar."), one)
    rows = ours.encode(TEXTS[:3], convert_to_tensor=False)
    assert isinstance(rows, list) and len(rows) == 3 and all(r.is_sparse and r.dim() == 1 for r in rows)
    dense_rows = ours.encode(TEXTS[:3], convert_to_tensor=False, convert_to_sparse_tensor=False)
    for expected, got in zip(st.encode(TEXTS[:3], convert_to_tensor=False), dense_rows):
        assert not got.is_sparse
        assert_same_vectors(expected, got)
    empty = ours.encode([])
    assert empty.shape == (0, ours.get_embedding_dimension())


def test_similarity_decode_sparsity(sparse_root):
    st, ours = _pair(sparse_root / "bert-relu-sum")
    queries, docs = ours.encode_query(TEXTS[:3]), ours.encode_document(TEXTS[3:7])
    torch.testing.assert_close(ours.similarity(queries, docs), st.similarity(queries, docs), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.similarity(queries.to_dense(), list(docs.to_dense())),
                               st.similarity(queries, docs), atol=1e-4, rtol=1e-5)
    assert ours.decode(queries, top_k=4) == st.decode(queries, top_k=4)
    assert ours.decode(queries[0]) == st.decode(queries[0])
    assert ours.sparsity(queries) == pytest.approx(st.sparsity(queries))
    three = ours.encode_document(TEXTS[3:6])
    for name in ("cosine", "euclidean", "manhattan"):
        ours.similarity_fn_name = st.similarity_fn_name = name
        # (sentence-transformers' sparse euclidean goes through |a|^2 - 2ab + |b|^2: ~1e-5 relative)
        torch.testing.assert_close(ours.similarity(queries, docs), st.similarity(queries, docs), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.similarity_pairwise(queries, three), st.similarity_pairwise(queries, three),
                                   atol=1e-4, rtol=1e-4)


def test_bad_arguments_and_folders(sparse_root, tmp_path):
    folder = sparse_root / "bert-relu-max"
    with pytest.raises(ValueError, match="max_active_dims must be a positive integer"):
        sentfuse.SparseEncoder(folder, device="cpu", max_active_dims=0)
    ours = sentfuse.SparseEncoder(folder, device="cpu")
    with pytest.raises(ValueError, match="prompt_name 'nope' is not one of the prompts"):
        ours.encode(["x"], prompt_name="nope")
    with pytest.raises(ValueError, match="similarity_fn_name must be one of"):
        ours.similarity_fn_name = "maxsim"
    with pytest.raises(TypeError, match="sentences\\[1\\] is int"):
        ours.encode(["x", 3])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.base.modules.Transformer",
                                                      "path": ""}]))
    with pytest.raises(ModelFolderError, match="modules \\['Transformer'\\] are not supported"):
        sentfuse.SparseEncoder(broken, device="cpu")
    pooling = sparse_root / "bert-relu-max" / "1_SpladePooling" / "config.json"
    bad = tmp_path / "bad-pooling"
    import shutil

    shutil.copytree(sparse_root / "bert-relu-max", bad)
    (bad / "1_SpladePooling" / "config.json").write_text(pooling.read_text().replace('"max"', '"mean"'))
    with pytest.raises(ModelFolderError, match="pooling_strategy must be one of"):
        sentfuse.SparseEncoder(bad, device="cpu")


def test_cli_sparse_outputs(sparse_root, tmp_path):
    import scipy.sparse

    from sentfuse.cli import main

    source = tmp_path / "texts.txt"
    source.write_text("A man is playing a guitar.\n\ncats\n", encoding="utf-8")
    folder = str(sparse_root / "bert-relu-max")
    assert main(["encode", str(source), "--sparse", "--model", folder, "-o", str(tmp_path / "v.npz"),
                 "--max-active-dims", "4", "--no-progress"]) == 0
    expected = sentfuse.SparseEncoder(folder, device="cpu").encode_document(
        ["A man is playing a guitar.", "", "cats"], max_active_dims=4).to_dense()
    matrix = scipy.sparse.load_npz(tmp_path / "v.npz")
    torch.testing.assert_close(torch.from_numpy(matrix.toarray()), expected)
    assert main(["encode", str(source), "--sparse", "--model", folder, "-o", str(tmp_path / "v.jsonl"),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(rows) and list(rows[2].values()) == sorted(rows[2].values(), reverse=True)
    assert main(["encode", str(source), "--sparse", "--model", folder, "-o", str(tmp_path / "v.npy")]) == 1


def test_cli_sparse_checks_scipy_before_the_work_and_hides_every_bar(sparse_root, tmp_path, monkeypatch, capfd):
    import sys

    from sentfuse.cli import main
    from sentfuse.sparse import output

    source = tmp_path / "texts.txt"
    source.write_text("cats\n", encoding="utf-8")
    folder = str(sparse_root / "bert-relu-max")
    assert main(["encode", str(source), "--sparse", "--model", folder, "-o", str(tmp_path / "v.jsonl"),
                 "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert "encoded 1 text in" in err

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before scipy was checked")

    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    monkeypatch.setattr(output, "SparseEncoder", no_model)
    assert main(["encode", str(source), "--sparse", "--model", folder, "-o", str(tmp_path / "v.npz")]) == 1
    err = capfd.readouterr().err
    assert "writing .npz needs scipy (pip install 'sentfuse[sparse]')" in err and "Traceback" not in err


@pytest.mark.parametrize("native", [True, False])
def test_16_bit_vocabulary_projection_widens_where_the_cpu_emulates_it(sparse_root, monkeypatch, native):
    """Without bf16 instructions the projection multiplies in float32 (torch's emulated bf16 products were 2.7x
    slower end to end); with them it stays bf16. Either way the vectors are the bf16 model's."""
    from sentfuse.sparse import heads

    monkeypatch.setattr(heads, "cpu_has_native", lambda dtype: native)
    st, ours = _pair(sparse_root / "bert-relu-max", dtype=torch.bfloat16)
    head = ours._heads["default"]._head
    assert head.weight.dtype == (torch.bfloat16 if native else torch.float32)
    assert head.dtype == torch.bfloat16
    assert_same_vectors(st.encode(TEXTS), ours.encode(TEXTS), torch.bfloat16)
    ours.to("cpu")  # a move keeps the choice
    assert head.weight.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("name", ["bert-relu-max", "inference-free"])
def test_copies_and_pickles_encode_the_same(sparse_root, name):
    ours = sentfuse.SparseEncoder(sparse_root / name, device="cpu")
    want = ours.encode_query(SENTENCES, convert_to_sparse_tensor=False)
    for other in copies(ours):
        assert torch.equal(other.encode_query(SENTENCES, convert_to_sparse_tensor=False), want)


def test_max_seq_length_can_be_set_on_every_route(sparse_root):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    for name in ("bert-relu-max", "inference-free"):
        ours, st = sentfuse.SparseEncoder(sparse_root / name, device="cpu"), STSparseEncoder(str(sparse_root / name))
        ours.max_seq_length = st.max_seq_length = 6
        assert ours.max_seq_length == 6
        long = [" ".join(TEXTS)]
        assert_same_vectors(st.encode_document(long), ours.encode_document(long))
        with pytest.raises(ValueError, match="max_seq_length"):
            ours.max_seq_length = 0


def test_a_plain_masked_lm_folder_is_splade_with_max_pooling(sparse_root):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    folder = sparse_root / "hf-bert"
    assert_same_vectors(STSparseEncoder(str(folder), device="cpu").encode(TEXTS),
                        sentfuse.SparseEncoder(folder, device="cpu").encode(TEXTS))


def test_prompt_and_prompt_name_together_warn(sparse_root, caplog):
    import logging

    ours = sentfuse.SparseEncoder(sparse_root / "bert-relu-max", device="cpu")
    with caplog.at_level(logging.WARNING):
        ours.encode(TEXTS[:1], prompt="query: ", prompt_name="query")
    assert "ignoring prompt_name" in caplog.text
