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


def _stsb_pairs(rows: int = 120):
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data/stsb/sts-test.tsv"
    with open(path, encoding="utf-8", newline="") as f:
        data = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:rows]
    return [r["sentence1"] for r in data], [r["sentence2"] for r in data], [float(r["score"]) for r in data]


@pytest.mark.parametrize("similar", [True, False])
def test_threshold_search_matches_sentence_transformers_on_ties(similar):
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as Theirs
    from sklearn.metrics import average_precision_score

    from sentfuse.evaluation.binary import average_precision, best_accuracy, best_f1

    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(1, 40))
        scores = rng.integers(0, 6, n).astype(np.float32) / 4  # few distinct values: many ties
        labels = rng.integers(0, 2, n)
        assert best_accuracy(scores, labels, similar) == Theirs.find_best_acc_and_threshold(scores, labels, similar)
        assert best_f1(scores, labels, similar) == Theirs.find_best_f1_and_threshold(scores, labels, similar)
        if 0 < labels.sum() < n:
            expected = average_precision_score(labels, scores if similar else -scores)
            assert average_precision(scores if similar else -scores, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fns", [None, ["cosine", "dot", "euclidean", "manhattan"]])
def test_binary_classification_evaluator(models, tmp_path, fns):
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as Theirs

    from sentfuse.evaluation import BinaryClassificationEvaluator

    st, ours = models
    first, second, scores = _stsb_pairs()
    labels = [int(s >= 3) for s in scores]
    theirs = Theirs(first, second, labels, name="dup", write_csv=False, similarity_fn_names=fns)
    expected = theirs(st)
    evaluator = BinaryClassificationEvaluator(first, second, labels, name="dup", similarity_fn_names=fns)
    mine = evaluator(ours, output_path=str(tmp_path))
    assert list(mine) == list(expected) and evaluator.primary_metric == theirs.primary_metric
    for key in expected:
        # thresholds and scores from embeddings that agree to ~1e-6 (different kernels)
        assert mine[key] == pytest.approx(expected[key], abs=1e-4), key
    header = (tmp_path / "binary_classification_evaluation_dup_results.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,steps,cosine_accuracy,cosine_accuracy_threshold,cosine_f1")


def test_triplet_and_sequential_evaluators(models):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as TheirSimilarity
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator as TheirSequence
    from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator as Theirs

    from sentfuse.evaluation import EmbeddingSimilarityEvaluator, SequentialEvaluator, TripletEvaluator

    st, ours = models
    first, second, scores = _stsb_pairs()
    negatives = second[7:] + second[:7]
    for kwargs in (dict(), dict(similarity_fn_names=["cosine", "manhattan"], margin={"cosine": 0.05}),
                   dict(main_similarity_function="dot", margin=0.02)):
        expected = Theirs(first, second, negatives, name="t", write_csv=False, **kwargs)(st)
        evaluator = TripletEvaluator(first, second, negatives, name="t", **kwargs)
        mine = evaluator(ours)
        assert mine.keys() == expected.keys() and 0 < mine[evaluator.primary_metric] < 1
        for key in expected:
            assert mine[key] == pytest.approx(expected[key], abs=1 / len(first) + 1e-9), key  # one triplet at most

    stsb = dict(sentences1=first, sentences2=second, scores=scores, name="sts", write_csv=False)
    triplet = dict(anchors=first, positives=second, negatives=negatives, name="t", write_csv=False)
    expected = TheirSequence([Theirs(**triplet), TheirSimilarity(**stsb)], main_score_function=max)(st)
    mine = SequentialEvaluator([TripletEvaluator(**triplet), EmbeddingSimilarityEvaluator(**stsb)],
                               main_score_function=max)(ours)
    assert mine.keys() == expected.keys()
    assert mine["sequential_score"] == pytest.approx(expected["sequential_score"], abs=1e-4)
