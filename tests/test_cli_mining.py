"""`sentfuse mine` and `sentfuse cluster`: results equal the mining functions on the encoder's embeddings."""

from __future__ import annotations

import json
import re

import pytest

from sentfuse import Encoder
from cli_runner import run
from sentfuse.cli import main
from sentfuse.search import community_detection, paraphrase_mining_embeddings

# Three groups of identical lines (score 1 with any model) among distinct ones.
TEXTS = (
    ["The cat sat on the mat."] * 4
    + ["Stock markets fell sharply on Monday."] * 3
    + ["What is the capital of France?", "A woman slices an onion.", "cats", "ok"]
    + ["Two children play in the park."] * 2
    + ["The quick brown fox jumps over the lazy dog."]
)


@pytest.fixture(scope="module")
def model(tiny_model_root):
    return tiny_model_root / "bert-mean-normalize"


@pytest.fixture(scope="module")
def embeddings(model):
    return Encoder(model, device="cpu").encode(TEXTS, normalize_embeddings=True)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("threshold, top_k", [(0.9, 100), (0.5, 2), (-1.0, 100)])
def test_mine_json_equals_paraphrase_mining(capsys, source, model, embeddings, threshold, top_k):
    code, out, err = run(capsys, "mine", source, "--model", model, "--threshold", threshold, "--top-k", top_k,
                         "--json", "--no-progress")
    assert code == 0
    expected = [p for p in paraphrase_mining_embeddings(embeddings, top_k=top_k) if p[0] >= threshold]
    pairs = json.loads(out)
    # The same pairs with the same scores, best first; pairs whose scores differ by rounding only (identical
    # lines score 1 +- 1e-7) may come in either order, as the CLI scores pairs on another path.
    assert sorted((p["i"], p["j"]) for p in pairs) == sorted((i, j) for _, i, j in expected)
    expected_scores = {(i, j): s for s, i, j in expected}
    assert [p["score"] for p in pairs] == pytest.approx([expected_scores[p["i"], p["j"]] for p in pairs], abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(pairs, pairs[1:]))
    assert all(p["text_i"] == TEXTS[p["i"]] and p["text_j"] == TEXTS[p["j"]] for p in pairs)
    assert f"{len(pairs)} pairs with cosine >= {threshold} among {len(TEXTS)} texts" in err


def test_mine_text_output_shows_both_texts(capsys, source, model):
    code, out, _ = run(capsys, "mine", source, "--model", model, "--threshold", "0.999", "--no-progress")
    assert code == 0
    found = set()
    for line in out.splitlines():
        score, i, text_i, j, text_j = re.fullmatch(r"(\d\.\d{4})  \[(\d+)\] (.*)  \|  \[(\d+)\] (.*)", line).groups()
        assert float(score) == pytest.approx(1.0, abs=1e-4) and (text_i, text_j) == (TEXTS[int(i)], TEXTS[int(j)])
        found.add((int(i), int(j)))
    groups = [range(0, 4), range(4, 7), range(11, 13)]  # the identical lines
    assert found == {(i, j) for group in groups for i in group for j in group if i < j}


@pytest.mark.parametrize("threshold, min_size", [(0.999, 2), (0.999, 3), (0.3, 2), (0.3, 5)])
def test_cluster_json_equals_community_detection(capsys, source, model, embeddings, threshold, min_size):
    code, out, err = run(capsys, "cluster", source, "--model", model, "--threshold", threshold,
                         "--min-size", min_size, "--json", "--no-progress")
    assert code == 0
    expected = community_detection(embeddings, threshold, min_size)
    communities = json.loads(out)
    assert [c["ids"] for c in communities] == expected
    assert all(c["texts"] == [TEXTS[i] for i in c["ids"]] and c["size"] == len(c["ids"]) for c in communities)
    assert f"{len(expected)} communities of >= {min_size} texts" in err


def test_cluster_text_output(capsys, source, model):
    code, out, err = run(capsys, "cluster", source, "--model", model, "--threshold", "0.999", "--min-size", "3",
                         "--no-progress")
    assert code == 0
    assert out.splitlines() == (
        ["community 1: 4 texts"] + [f"  [{i}] The cat sat on the mat." for i in range(4)]
        + ["community 2: 3 texts"] + [f"  [{i}] Stock markets fell sharply on Monday." for i in range(4, 7)]
    )
    assert "7 of 14 texts clustered" in err


def test_jsonl_input_and_empty_input(tmp_path, capsys, model):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS[:5]) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "cluster", src, "--field", "body", "--model", model, "--threshold", "0.999",
                       "--min-size", "4", "--json", "--no-progress")
    assert code == 0 and [c["ids"] for c in json.loads(out)] == [[0, 1, 2, 3]]
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    for command in ("mine", "cluster"):
        code, out, err = run(capsys, command, empty, "--model", model, "--json")
        assert code == 1 and out == "" and f"sentfuse {command}: error: {empty} is empty" in err
        code, out, err = run(capsys, command, blank, "--model", model, "--json")
        assert code == 1 and out == "" and f"{blank} has only blank lines" in err
        assert "Encoding" not in err


@pytest.fixture
def with_blanks(tmp_path):
    """TEXTS with blank lines before, among and after them; maps each text's index in TEXTS to its line index."""
    lines, where = ["", "  "], {}
    for i, text in enumerate(TEXTS):
        where[i] = len(lines)
        lines += [text] + ([""] if i % 3 == 0 else [])
    path = tmp_path / "blanks.txt"
    lines += ["", ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines, where


def test_mine_skips_blank_lines_and_keeps_line_numbers(capsys, with_blanks, model, embeddings):
    path, lines, where = with_blanks
    code, out, err = run(capsys, "mine", path, "--model", model, "--threshold", "0.5", "--json", "--no-progress")
    assert code == 0
    expected = [p for p in paraphrase_mining_embeddings(embeddings, top_k=100) if p[0] >= 0.5]
    pairs = json.loads(out)
    assert sorted((p["i"], p["j"]) for p in pairs) == sorted((where[i], where[j]) for _, i, j in expected)
    assert all(p["text_i"] == lines[p["i"]] and p["text_j"] == lines[p["j"]] and p["text_i"].strip() for p in pairs)
    assert f"among {len(TEXTS)} texts ({len(lines) - len(TEXTS)} blank lines skipped)" in err


def test_cluster_skips_blank_lines_and_keeps_line_numbers(capsys, with_blanks, model, embeddings):
    path, lines, where = with_blanks
    code, out, _ = run(capsys, "cluster", path, "--model", model, "--threshold", "0.999", "--min-size", 2,
                       "--json", "--no-progress")
    assert code == 0
    expected = community_detection(embeddings, 0.999, 2)
    assert [c["ids"] for c in json.loads(out)] == [[where[i] for i in c] for c in expected]


@pytest.mark.parametrize("command", ["mine", "cluster"])
def test_errors(tmp_path, capsys, model, command):
    code, _, err = run(capsys, command, tmp_path / "missing.txt", "--model", model)
    assert code == 1 and f"sentfuse {command}: error: input file" in err and "does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(tmp_path / "missing.txt"), "--threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "expected a cosine similarity in [-1, 1], got '1.5'" in capsys.readouterr().err


def test_mine_threshold_1_finds_every_exact_duplicate(tmp_path, capsys, model):
    """Copies of a text score 1 up to rounding (0.99999994 and 0.99999988 here): --threshold 1 finds them all."""
    from conftest import SENTENCES

    texts = [t for t in SENTENCES if t] * 2
    path = tmp_path / "dups.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "mine", path, "--model", model, "--threshold", 1, "--json", "--no-progress")
    n = len(texts) // 2
    assert code == 0 and sorted((p["i"], p["j"]) for p in json.loads(out)) == [(i, i + n) for i in range(n)]
    assert min(p["score"] for p in json.loads(out)) < 1.0  # the case this test is about did occur
    from sentfuse.cli.mine import tolerant

    assert tolerant(1.0) == 1.0 - 4 * 2.0**-24 and tolerant(0.5) == 0.5 - 4 * 2.0**-25


def test_counts_of_one_are_singular(tmp_path, capsys, model):
    path = tmp_path / "one.txt"
    path.write_text("only line\n\n", encoding="utf-8")
    code, out, err = run(capsys, "cluster", path, "--model", model, "--min-size", 1, "--threshold", 0.5)
    assert code == 0 and "community 1: 1 text\n" in out
    assert "of 1 text (1 blank line skipped) clustered" in err
    code, _, err = run(capsys, "mine", path, "--model", model)
    assert code == 0 and "among 1 text (1 blank line skipped)" in err
