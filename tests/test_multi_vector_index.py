"""The multi-vector index on disk (sentfuse.multi_vector.index): round trip, search against the in-memory
maxsim_topk op, atomic writes (a failed or killed write leaves the old index or none), and the model check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SENTENCES, _save_hf_model
from sentfuse import MultiVectorEncoder, _ops
from sentfuse.multi_vector.index import IndexFolderError, MultiVectorIndex, is_index, merge_topk, write_index
from test_multi_vector import FOLDERS, _build

DIM = 16


class FakeEncoder:
    """encode_document of texts "n:seed": n random unit vectors (n = 0: a document whose tokens were all masked)."""

    similarity_fn_name = "maxsim"

    def __init__(self, model_path: Path, fail_on_call: int | None = None):
        self.model_path, self.calls, self.fail_on_call = model_path, 0, fail_on_call

    def get_embedding_dimension(self):
        return DIM

    def encode_document(self, texts, prompt=None, batch_size=32, packed=False, show_progress_bar=False):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        items = [document(t) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in items]).cumsum(0)
        return torch.cat(items), offsets


def document(text: str) -> torch.Tensor:
    n, seed = map(int, text.split(":"))
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture
def fake_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"one model")
    return folder


TEXTS = [f"{n}:{i}" for i, n in enumerate([3, 7, 0, 1, 12, 5, 5, 0, 9, 2, 30, 4, 6])]


def queries(count=4, tokens=5, seed=99):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(tokens - i % 2, DIM, generator=g), dim=-1) for i in range(count)]


def test_round_trip(tmp_path, fake_model):
    index = write_index(tmp_path / "idx", FakeEncoder(fake_model), TEXTS, chunk_documents=4, source={"note": "x"})
    assert is_index(tmp_path / "idx") and len(index) == len(TEXTS)
    reopened = MultiVectorIndex(tmp_path / "idx")
    assert reopened.manifest["source"] == {"note": "x"} and reopened.manifest["dtype"] == "float16"
    for d, text in enumerate(TEXTS):
        stored = torch.from_numpy(np.array(reopened.tokens[reopened.offsets[d] : reopened.offsets[d + 1]]))
        assert torch.equal(stored, document(text).half())
    assert sorted(os.listdir(tmp_path)) == ["idx", "model"]  # no temporary folder left


@pytest.mark.parametrize("chunk_tokens", [1, 10, 40, 1 << 20])
@pytest.mark.parametrize("k", [1, 3, 20])
def test_search_equals_in_memory_topk(tmp_path, fake_model, chunk_tokens, k):
    index = write_index(tmp_path / "idx", FakeEncoder(fake_model), TEXTS, chunk_documents=5)
    q = queries()
    scores, ids = index.search(q, k, chunk_tokens=chunk_tokens)
    # In memory: the same float16-rounded vectors, empty documents left out (their ids mapped back).
    kept = [d for d, t in enumerate(TEXTS) if len(document(t))]
    docs = torch.cat([document(TEXTS[d]).half().float() for d in kept])
    offsets = torch.tensor([0] + [len(document(TEXTS[d])) for d in kept]).cumsum(0)
    padded = torch.nn.utils.rnn.pad_sequence(q, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(x)) for x in q], batch_first=True)
    expected_scores, expected_ids = _ops.maxsim_topk(padded, docs, offsets, k, query_mask=mask)
    assert ids.shape == (len(q), min(k, len(kept)))
    torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=1e-6)
    assert torch.equal(ids, torch.tensor(kept)[expected_ids])


def test_merge_topk_ties_to_lower_id():
    scores, ids = merge_topk(torch.tensor([[2.0, 1.0]]), torch.tensor([[5, 1]]), torch.tensor([[2.0, 1.0]]),
                             torch.tensor([[3, 0]]), 3)
    assert ids.tolist() == [[3, 5, 0]] and scores.tolist() == [[2.0, 2.0, 1.0]]


def test_failed_write_keeps_the_old_index(tmp_path, fake_model):
    write_index(tmp_path / "idx", FakeEncoder(fake_model), TEXTS[:3])
    with pytest.raises(KeyboardInterrupt):
        write_index(tmp_path / "idx", FakeEncoder(fake_model, fail_on_call=2), TEXTS, chunk_documents=4)
    assert len(MultiVectorIndex(tmp_path / "idx")) == 3
    assert sorted(os.listdir(tmp_path)) == ["idx", "model"]


def test_killed_write_leaves_no_index(tmp_path, fake_model):
    """SIGKILL in the middle of a write (no clean-up runs): the target folder never appears."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_multi_vector_index import FakeEncoder, TEXTS
        from sentfuse.multi_vector.index import write_index

        class Killed(FakeEncoder):
            def encode_document(self, *args, **kwargs):
                if self.calls == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().encode_document(*args, **kwargs)

        write_index({str(tmp_path / "idx")!r}, Killed({str(fake_model)!r}), TEXTS, chunk_documents=4)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert not (tmp_path / "idx").exists() and not is_index(tmp_path / "idx")
    with pytest.raises(IndexFolderError, match="not a folder"):
        MultiVectorIndex(tmp_path / "idx")


def test_broken_and_foreign_folders(tmp_path, fake_model):
    index = write_index(tmp_path / "idx", FakeEncoder(fake_model), TEXTS)
    with open(index.path / "tokens.f16", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(IndexFolderError, match="changed after it was written"):
        MultiVectorIndex(tmp_path / "idx")
    (tmp_path / "other").mkdir()
    with pytest.raises(IndexFolderError, match="no readable manifest.json"):
        MultiVectorIndex(tmp_path / "other")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(IndexFolderError, match="not a multi-vector index"):
        write_index(tmp_path / "other", FakeEncoder(fake_model), TEXTS)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_float16_overflow_is_refused(tmp_path, fake_model):
    class Huge(FakeEncoder):
        def encode_document(self, texts, **kwargs):
            tokens, offsets = super().encode_document(texts, **kwargs)
            return tokens * 1e6, offsets

    with pytest.raises(IndexFolderError, match="overflow float16"):
        write_index(tmp_path / "idx", Huge(fake_model), TEXTS)
    assert not (tmp_path / "idx").exists()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mv-index")
    _save_hf_model("bert", root / "hf", 0)
    _build(root / "hf", root / "a", FOLDERS["mask-normalize"])
    _build(root / "hf", root / "b", FOLDERS["expansion-fixed"])
    return MultiVectorEncoder(root / "a", device="cpu"), MultiVectorEncoder(root / "b", device="cpu")


def test_encoder_search_matches_similarity(tmp_path, two_models):
    model, _ = two_models
    corpus_index = model.write_index(SENTENCES, tmp_path / "idx", chunk_documents=4)
    assert corpus_index.manifest["prompt"] == model.prompts["document"]
    queries = ["What is the capital of France?", "guitar"]
    hits = model.search(queries, tmp_path / "idx", top_k=3, chunk_tokens=20)
    docs = [d.half().float() for d in model.encode_document(SENTENCES)]
    expected = model.similarity(model.encode_query(queries), docs)  # meanmaxsim for this folder
    for row, query_hits in zip(expected, hits):
        top = torch.topk(row, 3)
        assert [h["corpus_id"] for h in query_hits] == top.indices.tolist()
        assert np.allclose([h["score"] for h in query_hits], top.values.tolist(), rtol=1e-5)
    assert model.search("guitar", corpus_index, top_k=2) == hits[1][:2]


def test_wrong_model_is_refused(tmp_path, two_models):
    model, other = two_models
    model.write_index(SENTENCES[:4], tmp_path / "idx")
    with pytest.raises(IndexFolderError, match="built by the model .* rebuild the index"):
        other.search("guitar", tmp_path / "idx")
    assert model.search("guitar", tmp_path / "idx", top_k=1)  # its own model is accepted


def run_cli(capsys, *argv):
    from sentfuse.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_cli_encode_and_search(tmp_path, capsys, two_models):
    model, other = two_models
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(["A man is playing a guitar.", "", "Stock markets fell.", "cats"]) + "\n")
    code, _, err = run_cli(capsys, "encode", "--multi-vector", "--model", model.model_path, corpus, "-o",
                           tmp_path / "idx", "--no-progress")
    assert code == 0 and "indexed 4 texts" in err and is_index(tmp_path / "idx")
    code, out, err = run_cli(capsys, "search", "--corpus", corpus, "--embeddings", tmp_path / "idx", "--json",
                             "-k", "5", "guitar")
    assert code == 0, err
    hits = json.loads(out)[0]["hits"]
    expected = model.search("guitar", tmp_path / "idx", top_k=4)
    assert [h["corpus_id"] for h in hits] == [h["corpus_id"] for h in expected if h["corpus_id"] != 1]  # blank out
    code, _, err = run_cli(capsys, "search", "--corpus", corpus, "--embeddings", tmp_path / "idx", "--model",
                           other.model_path, "guitar")
    assert code == 1 and "built by the model" in err
    corpus.write_text("something else\n")
    code, _, err = run_cli(capsys, "search", "--corpus", corpus, "--embeddings", tmp_path / "idx", "guitar")
    assert code == 1 and "built from other texts" in err
    code, _, err = run_cli(capsys, "encode", "--multi-vector", "--model", model.model_path, corpus, "-o",
                           tmp_path / "x.npy")
    assert code == 1 and "index folder" in err
    code, _, err = run_cli(capsys, "encode", "--multi-vector", "--model", model.model_path, corpus, "-o",
                           tmp_path / "idx2", "--normalize", "--ray")
    assert code == 1 and "--multi-vector does not take --normalize, --ray" in err
