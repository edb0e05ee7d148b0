"""mine_hard_negatives against sentence-transformers' util.mine_hard_negatives on one tiny model and SQuAD
(question, paragraph) pairs: the same rows in every output format, filter and sampling strategy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

SQUAD = Path(__file__).resolve().parents[1] / "data" / "squad"


@pytest.fixture(scope="module")
def pairs():
    from datasets import Dataset

    paragraphs = {}
    with open(SQUAD / "paragraphs.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            paragraphs[row["pid"]] = row["text"][:300]
    questions = []
    with open(SQUAD / "questions.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            questions.append((row["question"], paragraphs[row["pid"]]))
            if len(questions) == 80:
                break
    anchors, positives = map(list, zip(*questions))
    # One question with a second positive: max_positives > 1 widens the candidate lists.
    anchors.append(anchors[3])
    positives.append(paragraphs[max(paragraphs)])
    return Dataset.from_dict({"query": anchors, "answer": positives})


@pytest.fixture(scope="module")
def models(tiny_model_root):
    from sentence_transformers import SentenceTransformer

    from sentfuse import Encoder

    folder = str(tiny_model_root / "bert-mean-normalize")
    return SentenceTransformer(folder, device="cpu"), Encoder(folder, device="cpu")


def _same(ours, theirs) -> None:
    assert ours.column_names == theirs.column_names
    assert len(ours) == len(theirs)
    for name in theirs.column_names:
        if name in ("scores", "score"):
            np.testing.assert_allclose(np.asarray(ours[name], dtype=float), np.asarray(theirs[name], dtype=float),
                                       atol=1e-5)
        else:
            assert ours[name] == theirs[name], name


CASES = [
    dict(),
    dict(num_negatives=2, output_format="n-tuple", output_scores=True),
    dict(num_negatives=2, output_format="labeled-pair"),
    dict(num_negatives=2, output_format="labeled-pair", output_scores=True),
    dict(num_negatives=3, output_format="labeled-list"),
    dict(num_negatives=3, output_format="labeled-list", output_scores=True),
    dict(absolute_margin=0.0, num_negatives=2, output_format="n-tuple"),
    dict(relative_margin=0.02, max_score=0.99, output_scores=True),
    dict(min_score=0.5, range_min=2, range_max=12, num_negatives=4, output_format="labeled-list"),
    dict(range_min=1, range_max=20, num_negatives=3, sampling_strategy="random"),
    dict(include_positives=True, num_negatives=2),
    dict(corpus=["an extra passage about nothing", "Paris is the capital of France."], faiss_batch_size=7),
]


@pytest.mark.parametrize("kwargs", CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_rows_as_sentence_transformers(pairs, models, kwargs):
    from sentence_transformers.util import mine_hard_negatives as theirs

    from sentfuse.util import mine_hard_negatives

    st, ours = models
    random.seed(5)
    expected = theirs(pairs, st, verbose=False, **kwargs)
    random.seed(5)
    got = mine_hard_negatives(pairs, ours, verbose=False, **kwargs)
    assert len(got) > 0
    _same(got, expected)


def test_cross_encoder_rescoring_and_cached_embeddings(pairs, models, tiny_model_root, tmp_path, capsys):
    import transformers
    from sentence_transformers import CrossEncoder
    from sentence_transformers.util import mine_hard_negatives as theirs

    from sentfuse.util import mine_hard_negatives

    classifier = transformers.BertForSequenceClassification.from_pretrained(str(tiny_model_root / "hf-bert"),
                                                                           num_labels=1)
    classifier.save_pretrained(tmp_path / "ce")
    transformers.AutoTokenizer.from_pretrained(str(tiny_model_root / "hf-bert")).save_pretrained(tmp_path / "ce")
    cross_encoder = CrossEncoder(str(tmp_path / "ce"), device="cpu")  # the same scorer for both libraries
    st, ours = models
    kwargs = dict(cross_encoder=cross_encoder, num_negatives=2, output_format="n-tuple", output_scores=True,
                  range_max=6)
    expected = theirs(pairs, st, verbose=False, **kwargs)
    got = mine_hard_negatives(pairs, ours, verbose=False, cache_folder=str(tmp_path / "cache"), **kwargs)
    _same(got, expected)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    again = mine_hard_negatives(pairs, ours, verbose=True, cache_folder=str(tmp_path / "cache"), **kwargs)
    _same(again, expected)  # from the cached embeddings
    printed = capsys.readouterr().out
    assert "Metric" in printed and "Negative" in printed


def test_bad_arguments_are_named(pairs, models):
    from sentfuse.util import mine_hard_negatives

    _, ours = models
    with pytest.raises(ValueError, match="output_format"):
        mine_hard_negatives(pairs, ours, output_format="pairs", verbose=False)
    with pytest.raises(ValueError, match="range_min"):
        mine_hard_negatives(pairs, ours, range_min=5, range_max=5, verbose=False)
    with pytest.raises(ValueError, match="cannot mine 4 negatives"):
        mine_hard_negatives(pairs, ours, range_max=3, num_negatives=4, verbose=False)
    with pytest.raises(ValueError, match="empty"):
        mine_hard_negatives(pairs.select([]), ours, verbose=False)
