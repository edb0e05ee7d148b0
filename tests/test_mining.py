"""similarity_matrix against the dense reference; paraphrase mining and community detection against
sentence-transformers' own functions on real question embeddings and on planted clusters."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import util

from sentfuse.search import communities, matrix, paraphrase
from sentfuse.search.similarity import dot_score

QUESTIONS = Path(__file__).resolve().parents[1] / "data/squad/questions.txt"
N_QUESTIONS = 1500
# Scores from the kernel and from sentence-transformers' torch.mm differ by float rounding only.
ATOL = 1e-5

METHODS = ["pairs", "topk"]


@pytest.fixture(scope="module")
def squad(request) -> torch.Tensor:
    """Embeddings of the first 1,500 SQuAD questions (many near-duplicates), cached across runs."""
    texts = QUESTIONS.read_text(encoding="utf-8").splitlines()[:N_QUESTIONS]
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    cached = request.config.cache.mkdir("sentfuse-mining") / f"squad-{key}.npy"
    if not cached.exists():
        from sentfuse import Encoder

        np.save(cached, Encoder().encode(texts, batch_size=64))
    return torch.from_numpy(np.load(cached))


def planted(n_clusters=30, per_cluster=40, noise_rows=500, dim=48, spread=0.5, seed=0) -> torch.Tensor:
    """Rows near n_clusters random centers (one cluster 8x larger, so k has to grow), plus noise rows."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, dim, generator=g)
    sizes = [per_cluster] * n_clusters
    sizes[0] *= 8
    members = torch.cat([c + spread * torch.randn(s, dim, generator=g) for c, s in zip(centers, sizes)])
    rows = torch.cat([members, torch.randn(noise_rows, dim, generator=g)])
    return rows[torch.randperm(len(rows), generator=g)]


def reference_cos(a, b):
    return torch.nn.functional.normalize(a.double(), dim=1) @ torch.nn.functional.normalize(b.double(), dim=1).T


def away_from_scores(x, threshold, margin=2e-6):
    """threshold nudged until no pair scores within margin of it, so rounding cannot flip a membership."""
    scores = reference_cos(x, x)
    while ((scores - threshold).abs() < margin).any():
        threshold += 3e-4
    return threshold


# similarity_matrix


def random_set(rows, dim=24, seed=0):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("form", ["none", "tensor", "numpy", "memmap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_b", [False, True])
def test_similarity_matrix_equals_dense(form, dtype, with_b, tmp_path):
    a, b = random_set(53, seed=1), random_set(37, seed=2)
    a[5] = 0  # a zero row scores 0 against everything
    other = b if with_b else None
    shape = (53, 37 if with_b else 53)
    np_dtype = np.float32 if dtype == torch.float32 else np.float16
    if form == "none":
        out = None
    elif form == "tensor":
        out = torch.full(shape, float("nan"), dtype=dtype)
    elif form == "numpy":
        out = np.full(shape, np.nan, dtype=np_dtype)
    else:
        out = np.lib.format.open_memmap(tmp_path / "sim.npy", mode="w+", dtype=np_dtype, shape=shape)
    result = matrix.similarity_matrix(a.numpy(), other, out=out, dtype=np_dtype if form != "none" else dtype, chunk_size=10)
    if out is not None:
        assert result is out
    if form == "memmap":
        result = np.load(tmp_path / "sim.npy")
    result = torch.as_tensor(np.asarray(result)).double()
    expected = reference_cos(a, b if with_b else a)
    torch.testing.assert_close(result, expected, atol=ATOL if dtype == torch.float32 else 1e-3, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 52, 53, 54, 1000, None])
def test_similarity_matrix_chunk_boundaries(chunk_size):
    a, b = random_set(53, seed=3), random_set(29, seed=4)
    result = matrix.similarity_matrix(a, b, chunk_size=chunk_size)
    torch.testing.assert_close(result.double(), reference_cos(a, b), atol=ATOL, rtol=0)


def test_similarity_matrix_empty_and_single():
    assert matrix.similarity_matrix(torch.empty(0, 8), random_set(4, 8)).shape == (0, 4)
    assert matrix.similarity_matrix(random_set(3, 8), torch.empty(0, 8)).shape == (3, 0)
    one = matrix.similarity_matrix(random_set(1, 8)[0])
    torch.testing.assert_close(one, torch.ones(1, 1))


def test_similarity_matrix_errors_before_any_work(tmp_path):
    a, b = random_set(6, seed=5), random_set(4, seed=6)
    out = torch.full((6, 4), 7.0)
    with pytest.raises(ValueError, match=r"out has shape \(4, 6\) and dtype float32; expected shape \(6, 4\) and dtype float32"):
        matrix.similarity_matrix(a, b, out=torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"out has shape \(6, 4\) and dtype float16; expected shape \(6, 4\) and dtype float32"):
        matrix.similarity_matrix(a, b, out=np.zeros((6, 4), np.float16))
    with pytest.raises(ValueError, match=r"out has shape \(6, 4\) and dtype float32; expected shape \(6, 4\) and dtype float16"):
        matrix.similarity_matrix(a, b, out=out, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16"):
        matrix.similarity_matrix(a, b, out=out, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"a \(6, 24\) and b \(4, 23\) must have the same embedding dimension"):
        matrix.similarity_matrix(a, b[:, :23], out=out)
    with pytest.raises(TypeError, match="out must be a torch tensor or numpy array"):
        matrix.similarity_matrix(a, b, out=[[0.0] * 4] * 6)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        matrix.similarity_matrix(a, b, out=out, chunk_size=0)
    np.save(tmp_path / "ro.npy", np.zeros((6, 4), np.float32))
    with pytest.raises(ValueError, match="out is a read-only numpy array"):
        matrix.similarity_matrix(a, b, out=np.load(tmp_path / "ro.npy", mmap_mode="r"))
    assert (out == 7.0).all()


# paraphrase mining


def assert_same_pairs(ours, theirs, x, top_k, dot=False):
    """Equal up to rounding: the same score sequence, and the same pairs except ones scoring within
    ATOL of a cut (the last returned score, or the top_k-th score of one of the pair's rows)."""
    assert len(ours) == len(theirs)
    if not ours:
        return
    assert all(p[1] < p[2] for p in ours) and all(a[0] >= b[0] for a, b in zip(ours, ours[1:]))
    # Unnormalized dot scores (~80 here) carry fp32 rounding relative to their size: the summation orders of
    # sentfuse's rescoring (on AMX CPUs) and of torch.mm differ.
    tol = ATOL * max(1.0, abs(ours[0][0])) if dot else ATOL
    np.testing.assert_allclose([p[0] for p in ours], [p[0] for p in theirs], atol=tol, rtol=0)
    scores = (x.double() @ x.double().T) if dot else reference_cos(x, x)
    scores.fill_diagonal_(-float("inf"))
    kth = scores.topk(min(top_k, len(x) - 1), dim=1).values[:, -1]
    ours_d, theirs_d = {(i, j): s for s, i, j in ours}, {(i, j): s for s, i, j in theirs}
    for i, j in ours_d.keys() & theirs_d.keys():
        assert abs(ours_d[i, j] - theirs_d[i, j]) < tol
    for i, j in ours_d.keys() ^ theirs_d.keys():
        s = scores[i, j].item()
        near_cut = min(abs(s - ours[-1][0]), abs(s - kth[i].item()), abs(s - kth[j].item()))
        assert near_cut < tol, f"pair {(i, j)} score {s} is in one result only"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(top_k=5, max_pairs=1000, query_chunk_size=256),
        dict(top_k=1, max_pairs=10**6, query_chunk_size=7),
    ],
    ids=["defaults", "topk5-max1000-chunk256", "topk1-chunk7"],
)
def test_paraphrase_mining_embeddings_matches_sentence_transformers(squad, kwargs):
    x = squad if kwargs.get("query_chunk_size") != 7 else squad[:300]
    ours = paraphrase.paraphrase_mining_embeddings(x, **kwargs)
    theirs = util.paraphrase_mining_embeddings(x, **kwargs)
    assert_same_pairs(ours, theirs, x, kwargs.get("top_k", 100))


def test_paraphrase_mining_planted_and_dot_score():
    x = planted(n_clusters=10, per_cluster=20, noise_rows=100, seed=1)
    for kwargs in [dict(top_k=3, max_pairs=400), dict(top_k=50, max_pairs=10**5, query_chunk_size=97)]:
        assert_same_pairs(paraphrase.paraphrase_mining_embeddings(x, **kwargs), util.paraphrase_mining_embeddings(x, **kwargs), x, kwargs["top_k"])
    ours = paraphrase.paraphrase_mining_embeddings(x, top_k=4, max_pairs=500, score_function=dot_score)
    theirs = util.paraphrase_mining_embeddings(x, top_k=4, max_pairs=500, score_function=util.dot_score)
    np.testing.assert_allclose([p[0] for p in ours], [p[0] for p in theirs], rtol=1e-5)
    assert_same_pairs(ours, theirs, x, 4, dot=True)


def test_paraphrase_mining_duplicates_and_edges():
    x = random_set(6, seed=7)
    x[4] = x[1]  # exact duplicates: a pair scoring 1, listed once, never a row with itself
    pairs = paraphrase.paraphrase_mining_embeddings(x, top_k=10)
    assert len(pairs) == 15 and pairs[0][1:] == [1, 4] and pairs[0][0] == pytest.approx(1.0)
    assert len({(i, j) for _, i, j in pairs}) == 15
    assert paraphrase.paraphrase_mining_embeddings(x, top_k=10, max_pairs=2) == pairs[:2]
    for other in (x.double(), x.half(), x.numpy(), x.tolist()):
        assert [p[1:] for p in paraphrase.paraphrase_mining_embeddings(other, top_k=10)][:1] == [[1, 4]]
    assert paraphrase.paraphrase_mining_embeddings(torch.empty(0, 8)) == []
    assert paraphrase.paraphrase_mining_embeddings(x[:1]) == []
    assert paraphrase.paraphrase_mining_embeddings(x, top_k=0) == []
    assert paraphrase.paraphrase_mining_embeddings(x, max_pairs=0) == []
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        paraphrase.paraphrase_mining_embeddings(x, top_k=-1)
    with pytest.raises(ValueError, match="query_chunk_size must be a positive integer"):
        paraphrase.paraphrase_mining_embeddings(x, query_chunk_size=0)
    with pytest.raises(TypeError, match="score_function must be a callable"):
        paraphrase.paraphrase_mining_embeddings(x, score_function="cosine")


@pytest.mark.parametrize("score_function", [util.manhattan_sim, util.euclidean_sim, lambda a, b: -(a @ b.T)])
def test_paraphrase_mining_any_score_function(score_function):
    """A score function the kernels do not compute is called on query chunks, as sentence-transformers does."""
    x = planted(n_clusters=6, per_cluster=10, noise_rows=40, seed=4)
    kwargs = dict(top_k=5, max_pairs=150, query_chunk_size=33, score_function=score_function)
    ours = paraphrase.paraphrase_mining_embeddings(x, **kwargs)
    theirs = util.paraphrase_mining_embeddings(x, **kwargs)
    assert len(ours) == len(theirs) == 150
    np.testing.assert_allclose([p[0] for p in ours], [p[0] for p in theirs], rtol=1e-5, atol=1e-5)
    assert {tuple(p[1:]) for p in ours} == {tuple(p[1:]) for p in theirs}
    capped = paraphrase.paraphrase_mining_embeddings(x, **kwargs, min_score=ours[20][0])
    assert [p[1:] for p in capped] == [p[1:] for p in ours if p[0] >= ours[20][0]]


@pytest.mark.parametrize("call", ["paraphrase", "communities"])
def test_non_finite_embeddings_are_named(call):
    x = random_set(50, 16, seed=8)
    x[17, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^embeddings holds NaN or inf \(row 17 is the first\)$"):
        if call == "paraphrase":
            paraphrase.paraphrase_mining_embeddings(x)
        else:
            communities.community_detection(x, min_community_size=2)


def test_paraphrase_mining_encodes_with_the_model(squad):
    class Model:  # stands in for an encoder; records what paraphrase_mining asks of it
        def encode(self, sentences, **kwargs):
            self.kwargs = kwargs
            return squad[: len(sentences)]

    model = Model()
    ours = paraphrase.paraphrase_mining(model, ["q"] * 400, batch_size=8, top_k=7, max_pairs=900)
    assert model.kwargs["convert_to_tensor"] and model.kwargs["batch_size"] == 8
    assert_same_pairs(ours, util.paraphrase_mining(model, ["q"] * 400, batch_size=8, top_k=7, max_pairs=900), squad[:400], 7)


# community detection


def assert_same_communities(ours, theirs, x):
    """Equal up to the order of members that tie: same centers and members, same score sequences."""
    assert [len(c) for c in ours] == [len(c) for c in theirs]
    scores = reference_cos(x, x)
    for mine, st in zip(ours, theirs):
        assert mine[0] == st[0] and sorted(mine) == sorted(st)
        torch.testing.assert_close(scores[mine[0], mine[1:]], scores[st[0], st[1:]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("threshold, min_size", [(0.75, 10), (0.75, 3), (0.6, 5), (0.9, 2)])
def test_community_detection_matches_sentence_transformers_squad(squad, method, threshold, min_size):
    threshold = away_from_scores(squad, threshold)
    ours = communities.community_detection(squad, threshold=threshold, min_community_size=min_size, batch_size=500,
                                      method=method)
    theirs = util.community_detection(squad, threshold=threshold, min_community_size=min_size)
    assert len(ours) > 3
    assert_same_communities(ours, theirs, squad)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("threshold, min_size, batch_size", [(0.5, 10, 1024), (0.35, 20, 333), (0.6, 1, 100)])
def test_community_detection_matches_sentence_transformers_planted(method, threshold, min_size, batch_size):
    x = planted()
    threshold = away_from_scores(x, threshold)
    ours = communities.community_detection(x.numpy(), threshold=threshold, min_community_size=min_size,
                                      batch_size=batch_size, method=method)
    theirs = util.community_detection(x, threshold=threshold, min_community_size=min_size)
    assert len(ours[0]) > 64  # the large cluster made k grow
    assert_same_communities(ours, theirs, x)


@pytest.mark.parametrize("method", METHODS)
def test_community_detection_small_inputs(method):
    x = random_set(12, dim=6, seed=8)
    threshold = away_from_scores(x, -0.2)
    for min_size in (1, 2, 5, 12):
        assert_same_communities(
            communities.community_detection(x, threshold, min_size, method=method),
            util.community_detection(x, threshold, min_size), x,
        )
    assert communities.community_detection(x, threshold=-1.0, min_community_size=12, method=method)[0][0] == 0
    assert communities.community_detection(x, 0.5, min_community_size=13, method=method) == []
    assert communities.community_detection(torch.empty(0, 6), method=method) == []
    assert communities.community_detection(x[0], threshold=0.9, min_community_size=1, method=method) == [[0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=1.5), r"threshold must be a number in \[-1, 1\]"),
        (dict(threshold=-1.01), r"threshold must be a number in \[-1, 1\]"),
        (dict(threshold="high"), "threshold must be a number"),
        (dict(min_community_size=0), "min_community_size must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_community_detection_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        communities.community_detection(torch.empty(0, 4), **kwargs)


def test_paraphrase_mining_with_a_sentfuse_encoder(tiny_model_root, sentences):
    from sentfuse import Encoder

    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    texts = sentences + [sentences[0], sentences[6]]  # two exact repeats score 1
    ours = paraphrase.paraphrase_mining(encoder, texts, top_k=3, max_pairs=20)
    assert {tuple(p[1:]) for p in ours[:2]} == {(0, len(sentences)), (6, len(sentences) + 1)}
    assert_same_pairs(ours, util.paraphrase_mining(encoder, texts, top_k=3, max_pairs=20), encoder.encode(texts, convert_to_tensor=True), 3)


def test_stable_argsort_equals_numpys_stable_sort():
    from sentfuse.search.sort_keys import stable_argsort

    g = np.random.default_rng(5)
    for keys in (g.integers(0, 50, 3000), g.integers(-(2**62), 2**62, 3000), np.zeros(10, np.int64), np.arange(0)):
        assert (stable_argsort(keys) == np.argsort(keys, kind="stable")).all()
