"""`sentfuse search --embeddings`: a cached file is reused only when it was built from this corpus, model and
options; broken files and blank lines give clear answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sentfuse import Encoder
from cli_runner import run, write_lines

CORPUS_A = ["The cat sat on the mat.", "Stock markets fell sharply.", "A woman slices an onion.", "cats"]
CORPUS_B = ["What 007 movie did Sam Mendes direct?", "Two children play.", "The weather is fine.", "ok"]


@pytest.fixture(scope="module")
def model(tiny_model_root):
    return tiny_model_root / "bert-mean-normalize"


def search(capsys, corpus, cache, model, *extra):
    code, out, err = run(capsys, "search", "--corpus", corpus, "--embeddings", cache, "--model", model,
                         "--no-progress", "--json", "cats on mats", *extra)
    return code, (json.loads(out) if code == 0 else None), err


def test_cache_from_another_corpus_is_refused_then_rebuilt(tmp_path, capsys, model):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    code, first, _ = search(capsys, corpus, cache, model)
    assert code == 0 and (tmp_path / "cache.npy.json").exists()
    assert search(capsys, corpus, cache, model)[1] == first  # reused
    write_lines(corpus, CORPUS_B)  # same number of lines, other texts: the old check by shape passed this
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1
    assert f"--embeddings {cache} was built from other texts ({corpus}, 4 items)" in err and "--reencode" in err
    code, hits, err = search(capsys, corpus, cache, model, "--reencode")
    assert code == 0
    expected = Encoder(model, device="cpu").encode_document(CORPUS_B)
    np.testing.assert_allclose(np.load(cache), expected, atol=1e-5)
    assert {h["text"] for h in hits[0]["hits"]} <= set(CORPUS_B)
    assert search(capsys, corpus, cache, model)[0] == 0  # the rebuilt cache matches


def test_cache_from_another_model_of_the_same_width_is_refused(tmp_path, capsys, tiny_model_root, model):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    assert search(capsys, corpus, cache, model)[0] == 0
    other = tiny_model_root / "bert-plain-hf"  # also 32 wide
    code, _, err = search(capsys, corpus, cache, other)
    assert code == 1 and f"was built with another model ({model})" in err


def test_cache_written_by_encode_is_checked_for_options(tmp_path, capsys, tiny_model_root):
    model = tiny_model_root / "bert-mean-noprompt-dense"  # no document prompt: encode and search agree
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "enc.npy"
    assert run(capsys, "encode", corpus, "-o", cache, "--model", model, "--no-progress")[0] == 0
    code, hits, _ = search(capsys, corpus, cache, model)
    assert code == 0 and len(hits[0]["hits"]) == 4
    # A cosine model's scores are the same for unit-length embeddings: encode --normalize output fits.
    assert run(capsys, "encode", corpus, "-o", cache, "--model", model, "--normalize", "--no-progress")[0] == 0
    code, normalized, _ = search(capsys, corpus, cache, model)
    assert code == 0 and [h["corpus_id"] for h in normalized[0]["hits"]] == [h["corpus_id"] for h in hits[0]["hits"]]
    for h, n in zip(hits[0]["hits"], normalized[0]["hits"]):
        assert abs(h["score"] - n["score"]) < 1e-5
    # Options that change the embeddings: search takes them too, and says so when they differ.
    for option, value in (("--max-seq-length", 8), ("--dtype", "bfloat16")):
        assert run(capsys, "encode", corpus, "-o", cache, "--model", model, option, value, "--no-progress")[0] == 0
        code, _, err = search(capsys, corpus, cache, model)
        assert code == 1 and f"(give search the same {option})" in err
        code, hits_again, _ = search(capsys, corpus, cache, model, option, value)
        assert code == 0 and len(hits_again[0]["hits"]) == 4


def test_npy_without_record_is_refused(tmp_path, capsys, model):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    np.save(cache, np.zeros((4, 32), np.float32))
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1 and "has no readable cache.npy.json beside it" in err


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes), not a .npy array file"),
    ("truncated", "is truncated: 200 bytes, but its (4, 32) float32 array needs 640"),
    (b"hello world, not numpy\n", "is not a .npy array file"),
    ("objects", "holds Python objects, not embeddings"),
    ("int8", "holds int8 values of shape (4, 32); search needs float embeddings"),
    ("1-d", "holds float32 values of shape (32,)"),
])
def test_broken_embeddings_files_name_the_file(tmp_path, capsys, model, content, message):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    if content == "truncated":
        np.save(cache, np.zeros((4, 32), np.float32))
        cache.write_bytes(cache.read_bytes()[:200])
    elif content == "objects":
        np.save(cache, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "int8":
        np.save(cache, np.zeros((4, 32), np.int8))
    elif content == "1-d":
        np.save(cache, np.zeros(32, np.float32))
    else:
        cache.write_bytes(content)
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1 and f"sentfuse search: error: --embeddings {cache} {message}" in err


def test_blank_lines_are_never_hits_and_ids_are_line_numbers(tmp_path, capsys, model):
    lines = ["", CORPUS_A[0], "   ", CORPUS_A[1], "", CORPUS_A[2], CORPUS_A[3], ""]
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    code, out, _ = run(capsys, "search", "--corpus", corpus, "--model", model, "--no-progress", "--json", "-k", 10,
                       "hello", "cats")
    assert code == 0
    for result in json.loads(out):
        assert sorted(h["corpus_id"] for h in result["hits"]) == [1, 3, 5, 6]
        assert all(h["text"] == lines[h["corpus_id"]] for h in result["hits"])
    code, out, _ = run(capsys, "search", "--corpus", corpus, "--model", model, "--no-progress", "-k", 2, "cats")
    assert code == 0 and len(out.splitlines()) == 3


def test_search_reads_jsonl_with_format_and_bom(tmp_path, capsys, model):
    corpus = tmp_path / "corpus.data"
    corpus.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"body": t}) for t in CORPUS_A).encode() + b"\n")
    code, out, _ = run(capsys, "search", "--corpus", corpus, "--format", "jsonl", "--field", "body", "--model", model,
                       "--no-progress", "--json", "-k", 4, "cats")
    assert code == 0 and {h["text"] for h in json.loads(out)[0]["hits"]} == set(CORPUS_A)


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "{tmp}/corpus.txt", ""], "query 1 is blank"),
    (["--corpus", "{tmp}/empty.txt", "q"], "{tmp}/empty.txt is empty"),
    (["--corpus", "{tmp}/corpus.txt", "--embeddings", "{tmp}", "q"], "--embeddings {tmp} is a folder"),
    (["--corpus", "{tmp}/corpus.txt", "--embeddings", "{tmp}/corpus.txt/x.npy", "q"],
     "--embeddings {tmp}/corpus.txt/x.npy: {tmp}/corpus.txt is a file"),
])
def test_search_errors(tmp_path, capsys, model, argv, message):
    write_lines(tmp_path / "corpus.txt", CORPUS_A)
    (tmp_path / "empty.txt").write_bytes(b"")
    code, _, err = run(capsys, "search", "--model", model, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1 and message.format(tmp=tmp_path) in err
    assert "Encoding" not in err


def test_encode_output_with_the_document_prompt_is_reused_unchanged(tmp_path, capsys, model):
    """bert-mean-normalize has a document prompt: search uses it, so encode must have used it too."""
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "enc.npy"
    assert run(capsys, "encode", corpus, "-o", cache, "--model", model, "--no-progress")[0] == 0
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1 and "was built with prompt '', this run uses 'passage: '" in err
    assert "sentfuse encode --prompt-name document" in err
    args = ("encode", corpus, "-o", cache, "--model", model, "--prompt-name", "document", "--no-progress")
    assert run(capsys, *args)[0] == 0
    written = cache.stat().st_mtime_ns, (tmp_path / "enc.npy.json").stat().st_mtime_ns
    code, hits, _ = search(capsys, corpus, cache, model)
    assert code == 0 and len(hits[0]["hits"]) == 4
    assert (cache.stat().st_mtime_ns, (tmp_path / "enc.npy.json").stat().st_mtime_ns) == written  # read, not rewritten


def test_unusable_cached_embeddings_name_the_file(tmp_path, capsys, model):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    assert search(capsys, corpus, cache, model)[0] == 0
    good = np.load(cache)
    np.save(cache, np.zeros((good.shape[0], 10), np.float32))  # the record still matches: only the array changed
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1 and f"--embeddings {cache} holds 10-wide embeddings, but --model {model} gives 32-wide" in err
    bad = good.copy()
    bad[2, 5] = np.nan
    np.save(cache, bad)
    code, _, err = search(capsys, corpus, cache, model)
    assert code == 1 and f"--embeddings {cache} holds NaN or infinite values (first in row 2)" in err


def test_cache_from_changed_weights_is_refused_wherever_they_change(tmp_path, capsys, model):
    """The record knows the model by the SHA-256 of all its files: a byte changed anywhere is another model."""
    import shutil

    mine = tmp_path / "model"
    shutil.copytree(model, mine)
    extra = mine / "extra_weights.bin"  # large enough that hashing samples of it would miss most bytes
    extra.write_bytes(bytes(8 << 20))
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    cache = tmp_path / "cache.npy"
    assert search(capsys, corpus, cache, mine)[0] == 0
    with open(extra, "r+b") as f:
        f.seek(100_000)
        f.write(b"\x01")
    code, _, err = search(capsys, corpus, cache, mine)
    assert code == 1 and "was built with another model" in err


def test_sparse_model_folder_suggests_sparse(tmp_path, capsys):
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "cat": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    static = SparseStaticEmbedding(tokenizer=tokenizer, weight=torch.ones(3), frozen=True)
    STSparseEncoder(modules=[static], device="cpu").save(str(tmp_path / "splade"))
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS_A)
    code, _, err = run(capsys, "encode", corpus, "-o", tmp_path / "x.npy", "--model", tmp_path / "splade")
    assert code == 1 and "is a SparseEncoder (SPLADE) model: pass --sparse" in err
    code, _, err = search(capsys, corpus, tmp_path / "c.npy", tmp_path / "splade")
    assert code == 1 and "sentfuse search runs dense models; sentfuse encode --sparse encodes sparse vectors" in err
