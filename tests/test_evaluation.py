"""sentfuse.evaluation against sentence-transformers' evaluators on one tiny model: same metric names and values."""

from __future__ import annotations

import json

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


def test_information_retrieval_evaluator(models, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as Theirs

    from sentfuse.evaluation import InformationRetrievalEvaluator

    st, ours = models
    corpus = {f"d{i}": text for i, text in enumerate(SENTENCES)}
    queries = {"q0": "a man with a guitar", "q1": "capital city of France", "q2": "a cat", "q3": "onions",
               "q4": "no relevant document"}
    relevant = {"q0": {"d0"}, "q1": {"d6", "d5"}, "q2": {"d10"}, "q3": {"d8", "d2", "d4"}}
    kwargs = dict(mrr_at_k=[3, 10], ndcg_at_k=[2, 10], accuracy_at_k=[1, 5], precision_recall_at_k=[1, 3, 10],
                  map_at_k=[5], name="toy")
    theirs = Theirs(queries, corpus, relevant, write_csv=False, write_predictions=True, **kwargs)(st, str(tmp_path / "st"))
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, write_csv=False, write_predictions=True,
                                              **kwargs)
    mine = evaluator(ours, str(tmp_path / "sf"))
    assert evaluator.primary_metric == "toy_cosine_ndcg@10"
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    # The predictions file: same name, same queries, same hits in the same order, same scores.
    name = "Information-Retrieval_evaluation_toy_predictions_cosine.jsonl"
    read = lambda side: [json.loads(line) for line in (tmp_path / side / name).read_text().splitlines()]  # noqa: E731
    for a, b in zip(read("sf"), read("st"), strict=True):
        assert (a["query_id"], a["query"]) == (b["query_id"], b["query"])
        assert [h["corpus_id"] for h in a["results"]] == [h["corpus_id"] for h in b["results"]]
        np.testing.assert_allclose([h["score"] for h in a["results"]], [h["score"] for h in b["results"]], atol=1e-5)


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
    assert evaluator.csv_file == theirs.csv_file == "binary_classification_evaluation_dup_results.csv"
    header = (tmp_path / evaluator.csv_file).read_text().splitlines()[0]
    assert header.startswith("epoch,steps,cosine_accuracy,cosine_accuracy_threshold,cosine_f1")


def test_binary_threshold_search_as_sentence_transformers_static_methods():
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as Theirs

    from sentfuse.evaluation import BinaryClassificationEvaluator as Ours

    rng = np.random.default_rng(1)
    for n, higher in ((50, True), (50, False), (7, True)):
        scores, labels = rng.integers(0, 8, n) / 4, rng.integers(0, 2, n)  # ties among the scores
        assert Ours.find_best_acc_and_threshold(scores, labels, higher) == pytest.approx(
            Theirs.find_best_acc_and_threshold(scores, labels, higher))
        assert Ours.find_best_f1_and_threshold(scores, labels, higher) == pytest.approx(
            Theirs.find_best_f1_and_threshold(scores, labels, higher))


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


def test_mse_translation_mining_and_reranking_evaluators(models, tmp_path):
    from sentence_transformers.sentence_transformer import evaluation as theirs

    from sentfuse import evaluation

    st, ours = models
    first, second, scores = _stsb_pairs(80)
    checks = []
    # Distillation: the teacher's embeddings of first against the student's of second.
    checks.append((theirs.MSEEvaluator(first, second, teacher_model=st, name="mse", write_csv=False)(st),
                   evaluation.MSEEvaluator(first, second, teacher_model=ours, name="mse")(ours, str(tmp_path))))
    checks.append((theirs.TranslationEvaluator(first, second, name="tr", write_csv=False)(st),
                   evaluation.TranslationEvaluator(first, second, name="tr")(ours, str(tmp_path))))
    sentences = {f"s{i}": text for i, text in enumerate(first + second)}
    duplicates = [(f"s{i}", f"s{len(first) + i}") for i, score in enumerate(scores) if score >= 4]
    duplicates += [("s0", "s1"), ("s1", "s2")]  # a chain, for the transitive closure
    for closure in (False, True):
        kwargs = dict(duplicates_list=duplicates, add_transitive_closure=closure, top_k=5, name="pm")
        checks.append((theirs.ParaphraseMiningEvaluator(sentences, write_csv=False, **kwargs)(st),
                       evaluation.ParaphraseMiningEvaluator(sentences, **kwargs)(ours, str(tmp_path))))
    samples = [{"query": first[i], "positive": [second[i]] + ([first[i + 1]] if i % 3 == 0 else []),
                "negative": second[i + 1:i + 6]} for i in range(0, 60, 4)]
    for at_k in (3, 10):
        checks.append((theirs.RerankingEvaluator(samples, at_k=at_k, name="rr", write_csv=False)(st),
                       evaluation.RerankingEvaluator(samples, at_k=at_k, name="rr")(ours, str(tmp_path))))
    for expected, mine in checks:
        assert list(mine) == list(expected)
        for key in expected:
            assert mine[key] == pytest.approx(expected[key], abs=1e-4), key
    assert 0 < checks[2][1]["pm_average_precision"] < 1 and 0 < checks[4][1]["rr_ndcg@3"] < 1


def test_tied_ndcg_matches_scikit_learn():
    from sklearn.metrics import ndcg_score

    from sentfuse.evaluation.reranking import tied_ndcg

    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        relevant = rng.integers(0, 2, n)
        relevant[0] = 1
        scores = rng.integers(0, 4, n).astype(float)  # heavy ties
        for k in (1, 3, 10):
            assert tied_ndcg(relevant, scores, k) == pytest.approx(ndcg_score([relevant], [scores], k=k), abs=1e-12)


def test_custom_evaluators_subclass_the_base_as_in_sentence_transformers(models):
    from sentfuse.evaluation import BaseEvaluator, SentenceEvaluator

    class Norms(SentenceEvaluator):
        def __init__(self):
            self.primary_metric = "mean_norm"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            norms = np.linalg.norm(model.encode(SENTENCES[:4]), axis=1)
            return self.prefix_name_to_metrics({"mean_norm": norms.mean()}, "toy")

    evaluator = Norms()
    assert isinstance(evaluator, BaseEvaluator) and evaluator.description == "Norms"
    assert evaluator(models[1]) == {"toy_mean_norm": pytest.approx(1.0, abs=1e-5)}
    assert evaluator.primary_metric == "toy_mean_norm"
