"""`sentfuse rerank` and `sentfuse search --rerank`: cross-encoder scores as CrossEncoder.rank gives them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _tokenizer
from test_cross_encoder import _classifier

import sentfuse
from cli_runner import run, write_lines

CORPUS = ["The cat sat on the mat.", "", "Stock markets fell sharply.", "A woman slices an onion.", "cats", "  "]
QUERIES = ["cats on mats", "Who cut the onion?"]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-cross-encoder") / "bert"
    torch.manual_seed(7)
    tokenizer = _tokenizer("bert", folder.parent / "vocab")
    model = _classifier("bert", len(tokenizer), 1, tokenizer.pad_token_id)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_rerank_gives_rank_order_and_scores(tmp_path, capsys, cross_encoder):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS)
    code, out, _ = run(capsys, "rerank", "--corpus", corpus, "--model", cross_encoder, "-k", 3, "--json",
                       "--no-progress", *QUERIES)
    assert code == 0
    results = json.loads(out)
    model = sentfuse.CrossEncoder(cross_encoder, device="cpu")
    non_blank = [i for i, t in enumerate(CORPUS) if t.strip()]
    for query, result in zip(QUERIES, results):
        want = model.rank(query, [CORPUS[i] for i in non_blank], top_k=3)
        assert result["query"] == query
        assert [h["corpus_id"] for h in result["hits"]] == [non_blank[h["corpus_id"]] for h in want]
        assert [h["score"] for h in result["hits"]] == pytest.approx([h["score"] for h in want], rel=1e-5)
        assert all(h["text"] == CORPUS[h["corpus_id"]] for h in result["hits"])
    code, out, err = run(capsys, "rerank", "--corpus", corpus, "--model", cross_encoder, QUERIES[0])
    assert code == 0 and out.startswith("query: cats on mats\n   1. ") and "Encoding" in err  # table, progress bar


def test_search_then_rerank(tmp_path, capsys, tiny_model_root, cross_encoder):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS)
    code, out, _ = run(capsys, "search", "--corpus", corpus, "--model", tiny_model_root / "bert-mean-normalize",
                       "--rerank", cross_encoder, "--rerank-k", 3, "-k", 2, "--json", "--no-progress", *QUERIES)
    assert code == 0
    model = sentfuse.CrossEncoder(cross_encoder, device="cpu")
    for query, result in zip(QUERIES, json.loads(out)):
        hits = result["hits"]
        assert len(hits) == 2 and all({"corpus_id", "score", "retrieval_score", "text"} <= set(h) for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        scores = model.predict([(query, h["text"]) for h in hits])
        assert [h["score"] for h in hits] == pytest.approx(scores.tolist(), rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["rerank", "--corpus", "{corpus}", "--model", "{model}", " "], "query 1 is blank"),
    (["rerank", "--corpus", "{missing}", "--model", "{model}", "q"], "does not exist"),
    (["rerank", "--corpus", "{blank}", "--model", "{model}", "q"], "only blank lines"),
    (["rerank", "--corpus", "{corpus}", "--model", "{missing}", "q"], "does not exist"),
])
def test_rerank_errors(tmp_path, capsys, cross_encoder, argv, message):
    paths = {"corpus": write_lines(tmp_path / "c.txt", CORPUS), "blank": write_lines(tmp_path / "b.txt", ["", " "]),
             "missing": tmp_path / "missing", "model": cross_encoder}
    code, _, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 1 and message in err and err.startswith("sentfuse rerank: error:")


def test_rerank_refuses_a_several_label_model(tmp_path, capsys):
    folder = tmp_path / "three"
    tokenizer = _tokenizer("bert", tmp_path / "vocab")
    _classifier("bert", len(tokenizer), 3, tokenizer.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code, _, err = run(capsys, "rerank", "--corpus", write_lines(tmp_path / "c.txt", CORPUS), "--model", folder, "q")
    assert code == 1 and "has 3 labels" in err
