"""sentfuse.evaluation against sentence-transformers' evaluators on one tiny model: same metric names and values."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SENTENCES


@pytest.fixture(scope="module")
def models(tiny_model_root):
    from sentence_transformers import SentenceTransformer

    from sentfuse import Encoder

    folder = str(tiny_model_root / "bert-mean-normalize")
    return SentenceTransformer(folder, device="cpu"), Encoder(folder, device="cpu")


def test_spearman_and_pearson_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    from sentfuse.evaluation.stats import pearson, spearman

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)  # x has many ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(pearsonr(x, y).statistic, abs=1e-12)


def test_embedding_similarity_evaluator(models, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as Theirs

    from sentfuse.evaluation import EmbeddingSimilarityEvaluator

    st, ours = models
    first, second = SENTENCES[:6], SENTENCES[5:11]
    scores = [0.1, 0.4, 0.35, 0.9, 0.0, 0.6]
    theirs = Theirs(first, second, scores, name="sts", write_csv=False)(st)
    evaluator = EmbeddingSimilarityEvaluator(first, second, scores, name="sts")
    mine = evaluator(ours, output_path=str(tmp_path))
    assert mine.keys() == theirs.keys() and evaluator.primary_metric == "sts_spearman_cosine"
    for key in theirs:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert (tmp_path / "similarity_evaluation_sts_results.csv").read_text().startswith("epoch,steps,pearson_cosine")


def test_information_retrieval_evaluator(models):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as Theirs

    from sentfuse.evaluation import InformationRetrievalEvaluator

    st, ours = models
    corpus = {f"d{i}": text for i, text in enumerate(SENTENCES)}
    queries = {"q0": "a man with a guitar", "q1": "capital city of France", "q2": "a cat", "q3": "onions",
               "q4": "no relevant document"}
    relevant = {"q0": {"d0"}, "q1": {"d6", "d5"}, "q2": {"d10"}, "q3": {"d8", "d2", "d4"}}
    kwargs = dict(mrr_at_k=[3, 10], ndcg_at_k=[2, 10], accuracy_at_k=[1, 5], precision_recall_at_k=[1, 3, 10],
                  map_at_k=[5], name="toy")
    theirs = Theirs(queries, corpus, relevant, write_csv=False, **kwargs)(st)
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, write_csv=False, **kwargs)
    mine = evaluator(ours)
    assert evaluator.primary_metric == "toy_cosine_ndcg@10"
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
