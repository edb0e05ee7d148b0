"""sentfuse.distributed on a local Ray (2 CPUs) started once for this module: Ray's start-up is slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="sentfuse.distributed needs the [ray] extra (make test installs it)")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import sentfuse  # noqa: E402
from sentfuse import cli  # noqa: E402
from sentfuse import distributed  # noqa: E402
from sentfuse.distributed.cli import split_ray_argv  # noqa: E402
from sentfuse.distributed.shards import read_embeddings  # noqa: E402

MODEL = "bert-mean-noprompt-dense"  # not normalized: exercises the cosine norms in search and pairs
DATA = Path(__file__).resolve().parent.parent / "data" / "squad" / "questions.txt"


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Encoder subclasses defined here must reach the actors by value: workers cannot import this file.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_model_root) -> str:
    return str(tiny_model_root / MODEL)


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return DATA.read_text(encoding="utf-8").splitlines()[:900]


def _write_inputs(folder: Path, texts: list[str]) -> list[str]:
    """Two shards with ids: Parquet (texts[:400]) and JSON lines (texts[400:700])."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = texts[:400], texts[400:700]
    pq.write_table(pa.table({"text": a, "qid": [f"q{i}" for i in range(len(a))]}), folder / "a.parquet")
    with open(folder / "b.jsonl", "w") as f:
        for i, t in enumerate(b, start=len(a)):
            f.write(json.dumps({"qid": f"q{i}", "text": t}) + "\n")
    return [str(folder / "a.parquet"), str(folder / "b.jsonl")]


def _concat(folder: Path, manifest: dict) -> np.ndarray:
    return np.concatenate([read_embeddings(folder / s["output"]) for s in manifest["shards"]])


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, model, questions):
    """Parquet + JSON lines shards with ids, encoded once for the tests below."""
    root = tmp_path_factory.mktemp("dist")
    inputs = _write_inputs(root / "in", questions)
    result = distributed.encode_dataset(inputs, root / "out", model, id_field="qid")
    return root / "out", result, questions[:700]


def test_encode_dataset_equals_encoder(encoded, model):
    out, result, texts = encoded
    assert result.encoded == ["a.parquet", "b.jsonl.parquet"] and result.skipped == [] and result.rows == 700
    manifest = _manifest(out)
    assert [s["rows"] for s in manifest["shards"]] == [400, 300] and all(s["complete"] for s in manifest["shards"])
    got = _concat(out, manifest)
    want = sentfuse.Encoder(model).encode(texts)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999
    ids = pq.read_table(out / "a.parquet").column("id").to_pylist() + pq.read_table(out / "b.jsonl.parquet").column(
        "id").to_pylist()
    assert ids == [f"q{i}" for i in range(700)]
    assert pq.read_table(out / "b.jsonl.parquet").column("row").to_pylist() == list(range(300))


def test_ray_dataset_int8_calibrated_once_for_all_shards(tmp_path, model, questions):
    texts = questions[700:]
    dataset = ray.data.from_items([{"text": t} for t in texts])
    out = tmp_path / "out"
    result = distributed.encode_dataset(dataset, out, model, precision="int8", normalize_embeddings=True,
                                        rows_per_shard=80)
    assert result.encoded == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    manifest = _manifest(out)
    assert [s["rows"] for s in manifest["shards"]] == [80, 80, 40]
    want = sentfuse.Encoder(model).encode(texts, normalize_embeddings=True)
    # One range for every shard, calibrated on the first 4,096 texts: here all 200.
    np.testing.assert_allclose(np.array(manifest["ranges"]), np.stack([want.min(0), want.max(0)]), atol=1e-5)
    stored = _concat(out, manifest)
    expected = sentfuse.encode.quantize_embeddings(want, "int8", ranges=np.array(manifest["ranges"]))
    assert stored.dtype == np.int8 and stored.shape == (200, manifest["dim"])
    assert np.abs(stored.astype(int) - expected).max() <= 1  # a bucket edge may round either way


class CrashOnce(sentfuse.Encoder):
    """Exits its process on the 2nd encode call, once per marker file: a worker dying mid-run."""

    marker: str = ""

    def encode(self, *args, **kwargs):
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().encode(*args, **kwargs)


def test_worker_death_is_retried_exactly_once(tmp_path, model, questions):
    # One shard per input format, no ids: rows are numbered within each shard.
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"text": questions[:60]}), folder / "a.parquet")
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in questions[60:120]))
    (folder / "c.txt").write_text("\n".join(questions[120:180]) + "\n")
    CrashOnce.marker = str(tmp_path / "crashed")
    result = distributed.encode_dataset(str(folder / "*"), tmp_path / "out", CrashOnce(model))
    assert os.path.exists(CrashOnce.marker), "the worker never died: the test did not test a retry"
    assert result.rows == 180 and result.encoded == ["a.parquet", "b.jsonl.parquet", "c.txt.parquet"]
    manifest = _manifest(tmp_path / "out")
    got = _concat(tmp_path / "out", manifest)
    rows = np.concatenate([pq.read_table(tmp_path / "out" / s["output"]).column("row").to_numpy()
                           for s in manifest["shards"]])
    assert np.array_equal(rows, np.tile(np.arange(60), 3))
    want = sentfuse.Encoder(model).encode(questions[:180])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not list((tmp_path / "out").glob("*.tmp-*"))


DRIVER = """
import sys, time, ray, sentfuse
from sentfuse import distributed

class Slow(sentfuse.Encoder):
    def encode(self, *args, **kwargs):
        time.sleep(1.0)
        return super().encode(*args, **kwargs)

ray.init(address=sys.argv[1], log_to_driver=False)
distributed.encode_dataset(sys.argv[2], sys.argv[3], Slow(sys.argv[4]), num_workers=1)
"""


def test_interrupted_driver_rerun_computes_only_missing_shards(tmp_path, model, questions, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        pq.write_table(pa.table({"text": questions[i * 50 : (i + 1) * 50]}), folder / f"s{i}.parquet")
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), address, str(folder / "*.parquet"),
                               str(out), model], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done: list[str] = []
    while time.time() < deadline and driver.poll() is None:
        if (out / "manifest.json").exists():
            done = [s["output"] for s in _manifest(out)["shards"] if s["complete"]]
            if done:
                break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = [s["output"] for s in _manifest(out)["shards"] if s["complete"]]
    assert 1 <= len(done) < 6, f"the driver was not stopped mid-run (complete: {done})"
    # A complete shard whose file no longer matches its checksum is redone too; the others are kept.
    corrupted = done[0]
    (out / corrupted).write_bytes(b"not parquet")
    before = {name: (out / name).stat().st_mtime_ns for name in done[1:]}

    result = distributed.encode_dataset(str(folder / "*.parquet"), out, model)
    assert sorted(result.skipped) == sorted(done[1:])
    assert sorted(result.encoded) == sorted({f"s{i}.parquet" for i in range(6)} - set(done[1:]))
    assert {name: (out / name).stat().st_mtime_ns for name in done[1:]} == before
    got = _concat(out, _manifest(out))
    np.testing.assert_allclose(got, sentfuse.Encoder(model).encode(questions[:300]), atol=1e-4)

    # The CLI's hook reaches the same run: everything is complete now, so nothing is recomputed.
    assert cli.main(["encode", "--ray", str(folder / "*.parquet"), "-o", str(out), "--model", model]) == 0
    assert "encoded 0 shards, 6 already complete; 300 rows" in capsys.readouterr().err


def test_cli_ray_address_or_input():
    assert split_ray_argv(["encode", "--ray", "data/*.parquet", "-o", "out"]) == [
        "encode", "--ray=local", "data/*.parquet", "-o", "out"]
    for address in ("auto", "10.0.0.1:6379", "ray://head:10001", "[::1]:6379"):
        assert split_ray_argv(["encode", "--ray", address, "x.jsonl"]) == ["encode", f"--ray={address}", "x.jsonl"]
    assert split_ray_argv(["encode", "x.txt", "-o", "o", "--ray"]) == ["encode", "x.txt", "-o", "o", "--ray=local"]


def test_search_equals_single_machine(encoded):
    out, _, _ = encoded
    corpus = torch.from_numpy(_concat(out, _manifest(out)))
    queries = corpus[::37] + 0.01 * torch.randn(len(corpus[::37]), corpus.shape[1], generator=torch.Generator().manual_seed(0))
    # Each call starts its own actors: two calls cover k above a shard's size and exclude_self.
    for k, kwargs, workers in ((450, {}, 2), (3, {"exclude_self": True}, 1)):
        q = corpus[:20] if kwargs else queries
        scores, indices = distributed.search(q, out, k, num_workers=workers, **kwargs)
        want_scores, want_indices = sentfuse.search_topk(q, corpus, k, **kwargs)
        # Per-shard GEMMs may round a score differently in the last bit; hits match up to such ties.
        torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=0)
        moved = indices != want_indices
        assert not moved.any() or (want_scores[moved] - scores[moved]).abs().max() <= 1e-6
    located = distributed.locate(out, [0, 399, 400, 699])
    assert [(x["shard"], x["row"], x["id"]) for x in located] == [
        ("a.parquet", 0, "q0"), ("a.parquet", 399, "q399"), ("b.jsonl.parquet", 0, "q400"),
        ("b.jsonl.parquet", 299, "q699")]


def test_threshold_pairs_equals_single_machine(encoded, tmp_path):
    out, _, _ = encoded
    corpus = torch.from_numpy(_concat(out, _manifest(out)))
    rows, cols, scores = sentfuse.threshold_pairs(corpus, None, 0.9)
    assert 50 < len(rows), "too few pairs for a meaningful comparison"
    # 250-row blocks split the two shards into blocks [0, 400), [400, 700): 3 block pairs.
    count = distributed.threshold_pairs(out, 0.9, tmp_path / "pairs", block_rows=250)
    assert count == len(rows) and len(list((tmp_path / "pairs").glob("pairs-*.parquet"))) == 3
    got_rows, got_cols, got_scores = distributed.read_pairs(tmp_path / "pairs")
    assert torch.equal(got_rows, rows) and torch.equal(got_cols, cols)
    torch.testing.assert_close(got_scores, scores, atol=1e-6, rtol=0)
    assert ((got_rows >= 400) & (got_cols >= 400)).any() and ((got_rows < 400) & (got_cols >= 400)).any()


def test_read_pairs_of_one_file_warns_nothing(tmp_path):
    """One file's Arrow arrays are read-only: torch would warn about each (once a process, hence a fresh one)."""
    pq.write_table(pa.table({"row": pa.array([0, 1], pa.int64()), "col": pa.array([2, 3], pa.int64()),
                             "score": pa.array([0.9, 0.95], pa.float32())}), tmp_path / "pairs-00000.parquet")
    code = ("import sys, warnings; from sentfuse import distributed; warnings.simplefilter('error'); "
            "rows, cols, scores = distributed.read_pairs(sys.argv[1]); print(rows.tolist(), cols.tolist())")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "[0, 1] [2, 3]\n", done.stderr


def test_bad_inputs_are_reported_and_the_rest_completes(tmp_path, model, questions):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"text": questions[:30], "qid": list(range(30))}), folder / "good.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "qid": pa.array([], pa.int64())}), folder / "empty.parquet")
    pq.write_table(pa.table({"body": questions[:5], "qid": list(range(5))}), folder / "nofield.parquet")
    pq.write_table(pa.table({"text": ["fine", None, "also fine"], "qid": [7, 8, 9]}), folder / "null.parquet")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(distributed.EncodeError) as info:
        distributed.encode_dataset(str(folder / "*.parquet"), tmp_path / "out", model, id_field="qid")
    failures = info.value.failures
    assert set(failures) == {"nofield.parquet", "null.parquet", "corrupt.parquet"}
    assert "no field 'text'" in failures["nofield.parquet"] and "body" in failures["nofield.parquet"]
    assert "ids 8" in failures["null.parquet"]
    assert "corrupt.parquet" in failures["corrupt.parquet"]
    entries = {s["output"]: s for s in _manifest(tmp_path / "out")["shards"]}
    assert entries["good.parquet"]["complete"] and entries["good.parquet"]["rows"] == 30
    assert entries["empty.parquet"]["complete"] and entries["empty.parquet"]["rows"] == 0
    assert not (tmp_path / "out" / "nofield.parquet").exists()
    with pytest.raises(ValueError, match="incomplete"):
        distributed.search(np.zeros((1, 20), np.float32), tmp_path / "out", 3)


def test_refuses_another_models_shards(encoded, tiny_model_root):
    out, _, _ = encoded
    other = str(tiny_model_root / "bert-mean-normalize")
    with pytest.raises(ValueError, match=f"another model: .*{MODEL} with SHA-256 .*bert-mean-normalize has SHA-256"):
        distributed.encode_dataset(str(out.parent / "in" / "a.parquet"), out, other, id_field="qid")
    with pytest.raises(ValueError, match="precision='float32'.*precision='int8'"):
        distributed.encode_dataset(str(out.parent / "in" / "a.parquet"), out, str(tiny_model_root / MODEL),
                                   id_field="qid", precision="int8")


def test_argument_errors(tmp_path, model):
    with pytest.raises(distributed.InputError, match="matches no file"):
        distributed.encode_dataset(str(tmp_path / "*.parquet"), tmp_path / "out", model)
    with pytest.raises(ValueError, match="precision must be one of"):
        distributed.encode_dataset(str(tmp_path), tmp_path / "out", model, precision="int4")
    with pytest.raises(ValueError, match="no manifest.json"):
        distributed.search(np.zeros((1, 4), np.float32), tmp_path, 3)


def test_model_is_known_by_its_files_and_a_failed_run_locks_nothing(tmp_path, model, questions):
    """Other weights of the same config under the same path are another model; a run whose every shard
    failed records no options a re-run must keep."""
    from safetensors.torch import load_file, save_file

    from sentfuse.cli.records import build_record
    from sentfuse.model.fingerprint import model_sha256

    mine = tmp_path / "model"
    shutil.copytree(model, mine)
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"body": questions[:20]}), folder / "s0.parquet")
    out = tmp_path / "out"
    with pytest.raises(distributed.EncodeError, match=r"1 shard\(s\) failed, 0 complete"):
        distributed.encode_dataset(str(folder / "*.parquet"), out, str(mine))
    distributed.encode_dataset(str(folder / "*.parquet"), out, str(mine), text_field="body")
    manifest = _manifest(out)
    record = build_record(sentfuse.Encoder(mine), "x", [])
    assert manifest["model_sha256"] == record["model_sha256"] == model_sha256(mine) and manifest["dtype"] is None

    weights = mine / "model.safetensors"
    save_file({name: t + 0.01 for name, t in load_file(weights).items()}, weights)
    pq.write_table(pa.table({"body": questions[20:30]}), folder / "s1.parquet")
    with pytest.raises(ValueError, match="holds shards encoded by another model"):
        distributed.encode_dataset(str(folder / "*.parquet"), out, str(mine), text_field="body")
    assert not (out / "s1.parquet").exists()
