"""Static-embedding folders (a token table averaged over each text's tokens, no transformer) against
sentence-transformers' own StaticEmbedding on the same folders: sentence-transformers' layout with and
without Normalize / Dense, model2vec's (bare, and with modules.json), prompts, truncation, save, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SENTENCES, _wordpieces
from op_devices import device  # noqa: F401  (the fixture: CPU, and CUDA where a GPU is visible)
from sentfuse import Encoder
from sentfuse.model.modules import ModelFolderError

TOL = 1e-6
DIM = 24
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LONG = "the quick brown fox jumps over the lazy dog " * 6

# name -> (Normalize?, Dense (in, out) or None, tokenizer truncation or None, prompts)
ST_FOLDERS = {
    "static": (False, None, None, {"query": "query: "}),
    "static-normalize-truncated": (True, None, 8, {"query": "query: ", "document": "passage: "}),
    "static-dense": (False, (DIM, 12), None, None),
}


def _tokenizer(truncation: int | None = None):
    """A BERT-style WordPiece tokenizer whose template adds [CLS] / [SEP] (a bag must leave them out)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + _wordpieces(600))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(SPECIALS)
    if truncation:
        tok.enable_truncation(truncation)
    return tok


def _st_static_folder(out: Path, normalize: bool, dense, truncation, prompts, seed: int) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

    torch.manual_seed(seed)
    tok = _tokenizer(truncation)
    modules = [StaticEmbedding(tok, embedding_weights=torch.randn(tok.get_vocab_size(), DIM))]
    if dense:
        modules.append(Dense(*dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(out))


def _model2vec_folder(out: Path, modules_json: bool, fp16: bool = False) -> None:
    """model2vec's layout: 'embeddings' (fewer rows than tokens, through 'mapping') and per-token 'weights';
    config.json asks for normalized output. fp16: a half table, no mapping or weights."""
    from safetensors.torch import save_file

    out.mkdir()
    tok = _tokenizer()
    vocab = tok.get_vocab_size()
    gen = torch.Generator().manual_seed(7)
    if fp16:
        tensors = {"embeddings": torch.randn(vocab, DIM, generator=gen).half()}
    else:
        tensors = {
            "embeddings": torch.randn(vocab // 2, DIM, generator=gen),
            "mapping": torch.randint(0, vocab // 2, (vocab,), generator=gen),
            "weights": torch.rand(vocab, generator=gen) + 0.5,
        }
    save_file(tensors, str(out / "model.safetensors"))
    tok.save(str(out / "tokenizer.json"))
    (out / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True, "hidden_dim": DIM}))
    if modules_json:  # as model2vec's hub folders: the StaticEmbedding in the root, and no Normalize module
        entry = {"idx": 0, "name": "0", "path": ".", "type": "sentence_transformers.models.StaticEmbedding"}
        (out / "modules.json").write_text(json.dumps([entry]))


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("static-models")
    for seed, (name, spec) in enumerate(ST_FOLDERS.items()):
        _st_static_folder(root / name, *spec, seed=seed)
    _model2vec_folder(root / "model2vec", modules_json=False)
    _model2vec_folder(root / "model2vec-modules", modules_json=True)
    _model2vec_folder(root / "model2vec-fp16", modules_json=True, fp16=True)
    return root


def _st_model(folder: Path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    if folder.name == "model2vec":  # sentence-transformers reads a bare model2vec folder only module by module
        return SentenceTransformer(modules=[StaticEmbedding.load(str(folder)), Normalize()], device="cpu")
    return SentenceTransformer(str(folder), device="cpu")


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max())


@pytest.mark.parametrize("name", [*ST_FOLDERS, "model2vec", "model2vec-modules"])
@pytest.mark.parametrize("normalize", [False, True])
def test_embeddings_match_sentence_transformers(static_root, name, normalize):
    folder = static_root / name
    texts = SENTENCES + [LONG, "[CLS] [PAD] unseenwordpiecez"]
    ours = Encoder(folder, device="cpu").encode(texts, normalize_embeddings=normalize)
    theirs = _st_model(folder).encode(texts, normalize_embeddings=normalize)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert _max_diff(ours, theirs) <= TOL


@pytest.mark.parametrize("mode", ["bf16-mixed", "int8-dynamic"])
def test_compute_mode_leaves_a_static_table_in_float32(static_root, mode):
    """A compute mode changes matrix products only; a static table has none and encodes as float32 does."""
    folder = static_root / next(iter(ST_FOLDERS))
    ours = Encoder(folder, device="cpu", dtype=mode).encode(SENTENCES)
    assert _max_diff(ours, Encoder(folder, device="cpu").encode(SENTENCES)) == 0.0


def test_half_table_bags_in_its_dtype(static_root):
    """An fp16 table averages in fp16 as sentence-transformers' bag does; normalizing then differs only by
    fp16 rounding, except that a text without tokens stays zeros where sentence-transformers gives NaN."""
    folder = static_root / "model2vec-fp16"
    st = _st_model(folder)
    assert _max_diff(Encoder(folder).encode(SENTENCES), st.encode(SENTENCES)) == 0.0
    ours = Encoder(folder).encode(SENTENCES, normalize_embeddings=True)
    theirs = st.encode(SENTENCES, normalize_embeddings=True).astype(np.float32)
    assert not np.isnan(ours).any()
    empty = SENTENCES.index("")
    assert not ours[empty].any()
    keep = [i for i in range(len(SENTENCES)) if i != empty]
    assert _max_diff(ours[keep], theirs[keep]) < 2e-3


def test_bags_split_over_many_calls_give_the_same_rows(static_root, monkeypatch):
    from sentfuse.encode import bag

    folder = static_root / "static-dense"
    texts = SENTENCES * 40
    whole = Encoder(folder).encode(texts, truncate_dim=5, convert_to_tensor=True)
    monkeypatch.setattr(bag, "BAG_TOKENS", 7)
    model = Encoder(folder)
    split = model.encode(texts, truncate_dim=5, convert_to_tensor=True)
    assert split.is_contiguous() and torch.equal(split, whole)


def test_normalize_only_where_the_folder_has_it(static_root):
    def norms(name):
        return np.linalg.norm(Encoder(static_root / name).encode(SENTENCES[:2]), axis=1)

    np.testing.assert_allclose(norms("static-normalize-truncated"), 1.0, rtol=1e-5)
    np.testing.assert_allclose(norms("model2vec"), 1.0, rtol=1e-5)  # bare model2vec: its config's normalize
    assert np.abs(norms("static") - 1.0).min() > 1e-3
    assert np.abs(norms("model2vec-modules") - 1.0).min() > 1e-3  # modules.json wins: no Normalize module


def test_bag_is_the_mean_of_the_table_rows_without_special_tokens(static_root):
    from safetensors.torch import load_file

    folder = static_root / "static"
    table = load_file(str(folder / "model.safetensors"))["embedding.weight"]
    ids = _tokenizer().encode("A man is playing a guitar.", add_special_tokens=False).ids
    got = Encoder(folder).encode("A man is playing a guitar.", convert_to_tensor=True)
    torch.testing.assert_close(got, table[ids].mean(0), rtol=0, atol=TOL)
    assert not Encoder(folder).encode("", convert_to_tensor=True).any()  # no token: zeros, never NaN
    assert Encoder(folder).encode([]).shape == (0, DIM)


@pytest.mark.parametrize("call", [
    dict(prompt_name="query"), dict(prompt="Represent this: "), dict(method="encode_query"),
    dict(method="encode_document"),
])
def test_prompts_match_sentence_transformers(static_root, call):
    folder = static_root / "static-normalize-truncated"
    call = dict(call)
    method = call.pop("method", "encode")
    ours = getattr(Encoder(folder), method)(SENTENCES, **call)
    theirs = getattr(_st_model(folder), method)(SENTENCES, **call)
    assert _max_diff(ours, theirs) <= TOL
    assert _max_diff(ours, Encoder(folder).encode(SENTENCES)) > 1e-3  # the prompt's tokens count


@pytest.mark.parametrize("kwargs", [
    dict(truncate_dim=10), dict(truncate_dim=10, normalize_embeddings=True), dict(precision="int8"),
    dict(precision="ubinary"), dict(convert_to_tensor=True), dict(convert_to_numpy=False),
])
def test_encode_flags_match_sentence_transformers(static_root, kwargs):
    folder = static_root / "static-dense"
    ours = Encoder(folder).encode(SENTENCES, **kwargs)
    theirs = _st_model(folder).encode(SENTENCES, **kwargs)
    assert type(ours) is type(theirs)
    if isinstance(ours, list):
        ours, theirs = torch.stack(ours), torch.stack(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert _max_diff(ours, theirs) <= TOL
    if kwargs.get("precision") != "int8":  # int8 calibrates on the call's rows: one text has no range
        single = Encoder(folder).encode(SENTENCES[0], **kwargs)
        assert tuple(single.shape) == tuple(ours.shape[1:])


def test_truncation_follows_the_tokenizer_file_then_max_seq_length(static_root):
    from safetensors.torch import load_file

    folder = static_root / "static-normalize-truncated"
    table = load_file(str(folder / "model.safetensors"))["embedding.weight"]
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    ids = _tokenizer().encode(words, add_special_tokens=False).ids
    assert len(ids) > 8
    for limit, model in ((8, Encoder(folder)), (3, Encoder(folder, max_seq_length=3))):
        assert model.max_seq_length == limit
        expected = torch.nn.functional.normalize(table[ids[:limit]].mean(0), dim=0)
        torch.testing.assert_close(model.encode(words, convert_to_tensor=True), expected, rtol=0, atol=TOL)
    assert Encoder(static_root / "static").max_seq_length >= int(1e9)  # no truncation in the file: none


def test_save_round_trip(static_root, tmp_path):
    from sentence_transformers import SentenceTransformer

    for name in ("static-normalize-truncated", "static-dense", "model2vec"):
        model = Encoder(static_root / name)
        model.max_seq_length = 5
        model.save(tmp_path / name)
        expected = model.encode(SENTENCES + [LONG])
        assert _max_diff(SentenceTransformer(str(tmp_path / name), device="cpu").encode(SENTENCES + [LONG]),
                         expected) <= TOL
        reloaded = Encoder(tmp_path / name)
        assert reloaded.max_seq_length == 5
        assert _max_diff(reloaded.encode(SENTENCES + [LONG]), expected) <= TOL


def test_dtype_device_and_worker_rebuild(static_root):
    folder = static_root / "static-normalize-truncated"
    exact = Encoder(folder).encode(SENTENCES)
    half = Encoder(folder, dtype="bfloat16")
    assert half.encode(SENTENCES).dtype == np.float32
    assert _max_diff(half.encode(SENTENCES), exact) < 2e-2
    assert half.encode(SENTENCES, output_dtype=None, convert_to_tensor=True).dtype == torch.bfloat16
    assert _max_diff(half.float().encode(SENTENCES), exact) < 2e-2  # the cast table keeps its rounding
    model = Encoder(folder)
    rebuilt = Encoder(**model.worker_kwargs(), device="cpu")
    assert _max_diff(rebuilt.encode(SENTENCES), exact) <= TOL
    assert model.to("cpu").device.type == "cpu" and model.get_embedding_dimension() == DIM


def test_on_each_device(static_root, device):  # noqa: F811
    folder = static_root / "static-dense"
    model = Encoder(folder, device=device)
    ours = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert ours.device.type == device
    theirs = _st_model(folder).encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    assert _max_diff(ours.cpu(), theirs) <= (TOL if device == "cpu" else 1e-5)  # CUDA sums in its own order


def test_tokenize_gives_packed_ids_as_sentence_transformers(static_root):
    folder = static_root / "static-normalize-truncated"
    ours = Encoder(folder).tokenize(SENTENCES + [LONG])
    theirs = _st_model(folder).tokenize(SENTENCES + [LONG])
    assert set(ours) == {"input_ids", "offsets"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key])


def test_token_embeddings_are_refused(static_root):
    with pytest.raises(ValueError, match="token_embeddings.*static-embedding"):
        Encoder(static_root / "static").encode(SENTENCES, output_value="token_embeddings")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(folder: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"))


def test_broken_folders_name_the_problem(static_root, tmp_path):
    src = static_root / "static"
    folder = _copy(src, tmp_path / "no-tokenizer")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json not found"):
        Encoder(folder)

    folder = _copy(src, tmp_path / "wrong-key")
    _rewrite_weights(folder, {"weight": torch.zeros(3, DIM)})
    with pytest.raises(ModelFolderError, match="'embedding.weight'.*'embeddings'"):
        Encoder(folder)

    folder = _copy(src, tmp_path / "small-table")
    _rewrite_weights(folder, {"embedding.weight": torch.zeros(10, DIM)})
    with pytest.raises(ModelFolderError, match="tokenizer has .* tokens but the embedding table only 10 rows"):
        Encoder(folder)

    folder = _copy(src, tmp_path / "int-table")
    _rewrite_weights(folder, {"embedding.weight": torch.zeros(700, DIM, dtype=torch.int8)})
    with pytest.raises(ModelFolderError, match="2-D floating-point"):
        Encoder(folder)

    folder = _copy(static_root / "model2vec", tmp_path / "bad-mapping")
    _rewrite_weights(folder, {"embeddings": torch.zeros(4, DIM), "mapping": torch.tensor([0, 9])})
    with pytest.raises(ModelFolderError, match="'mapping' points outside the 4 embeddings"):
        Encoder(folder)


@pytest.mark.parametrize("entries, message", [
    ([("", "StaticEmbedding"), ("1_Pooling", "Pooling")], "Pooling after a StaticEmbedding"),
    ([("1_Normalize", "Normalize"), ("", "StaticEmbedding")], "first module must be a Transformer or a StaticEmbedding"),
])
def test_module_order_is_checked(static_root, tmp_path, entries, message):
    folder = _copy(static_root / "static", tmp_path / "order")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    (folder / "1_Normalize").mkdir()
    modules = [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
               for i, (p, t) in enumerate(entries)]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelFolderError, match=message):
        Encoder(folder)


@pytest.mark.parametrize("name", ["static-normalize-truncated", "static-dense"])
def test_a_loss_and_its_gradient_match_sentence_transformers(static_root, name):
    """Training a static model: the bag's table (and a Dense layer) get sentence-transformers' gradients."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    from sentfuse import losses
    from sentfuse.train import tokenize_column, training_mode

    anchors, positives = SENTENCES[:4], SENTENCES[4:8]
    st = _st_model(static_root / name)
    st_loss = st_losses.MultipleNegativesRankingLoss(st)([st.preprocess(anchors), st.preprocess(positives)], None)
    st_loss.backward()
    ours = Encoder(static_root / name, device="cpu")
    with training_mode(ours):
        loss = losses.MultipleNegativesRankingLoss(ours)
        value = loss([tokenize_column(ours, anchors), tokenize_column(ours, positives)], None)
        as_features = loss([ours.preprocess(anchors), ours.preprocess(positives)], None)  # sentence-transformers' way
        torch.testing.assert_close(as_features, value)
        value.backward()
        assert ours._model.table.requires_grad
    assert not ours._model.table.requires_grad  # frozen again for inference
    torch.testing.assert_close(value.detach(), st_loss.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours._model.table.grad, st[0].embedding.weight.grad, atol=1e-6, rtol=1e-5)


def test_a_trained_static_model_saves_its_trained_table(static_root, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from sentfuse import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    model = Encoder(static_root / "static", device="cpu")
    before = model.encode(SENTENCES)
    data = Dataset.from_dict({"anchor": SENTENCES[:5] * 2, "positive": SENTENCES[5:10] * 2})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3,
                                                per_device_train_batch_size=4, learning_rate=1e-2, report_to="none",
                                                save_strategy="no", disable_tqdm=True, use_cpu=True)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                               loss=losses.MultipleNegativesRankingLoss(model)).train()
    after = model.encode(SENTENCES)
    assert np.abs(after - before).max() > 1e-4
    model.save(tmp_path / "saved")
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(SENTENCES), after,
                               atol=1e-6)
    np.testing.assert_allclose(Encoder(tmp_path / "saved", device="cpu").encode(SENTENCES), after, atol=1e-6)
