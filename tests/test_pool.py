"""The multi-process pool: the same embeddings as one process, in input order; failures surface and never hang."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
import torch

from sentfuse import Encoder
from sentfuse.encode import pool as pool_module
from sentfuse.encode.pool import EncoderPool, encode_multi_process, start_multi_process_pool, stop_multi_process_pool

# Prompts skipped by pooling, a Dense head and no Normalize: prompt, normalize_embeddings and
# truncate_dim all change the result.
MODEL = "bert-mean-noprompt-dense"
DIM = 20
LONG = "a very long text that runs on and on " * 300  # far past max_seq_length


def mixed_texts(sentences: list[str], n: int = 29) -> list[str]:
    """Short, empty, duplicated and one very long text; n = 29 is prime, so chunks of 3 or 4 leave a short last one."""
    texts = [sentences[i % len(sentences)] + " extra" * (i // len(sentences)) for i in range(n)]
    texts[5] = LONG
    texts[12] = texts[3]  # duplicate
    texts[20] = ""
    return texts


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() run in a thread: its result or its exception, or a test failure if it takes longer than seconds."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as e:  # handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no answer within {seconds} s: the pool hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.fixture(scope="module")
def encoder(tiny_model_root) -> Encoder:
    return Encoder(tiny_model_root / MODEL, device="cpu")


@pytest.fixture(scope="module")
def pool(encoder):
    with start_multi_process_pool(encoder, ["cpu", "cpu"]) as pool:
        yield pool


@pytest.fixture(scope="module")
def texts(sentences) -> list[str]:
    return mixed_texts(sentences)


# --- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"normalize_embeddings": True},
        {"truncate_dim": 7},
        {"prompt_name": "query", "batch_size": 4},
        {"prompt": "find this: ", "normalize_embeddings": True, "truncate_dim": 11},
    ],
    ids=["plain", "normalize", "truncate", "prompt_name", "prompt+normalize+truncate"],
)
def test_same_as_one_process(pool, encoder, texts, kwargs):
    expected = encoder.encode(texts, **kwargs)
    assert expected.shape == (len(texts), kwargs.get("truncate_dim", DIM))
    for chunk_size in (1, 3, None, 1000):
        got = within(60, lambda: encode_multi_process(pool, texts, chunk_size=chunk_size, **kwargs))
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"chunk_size={chunk_size}")
        np.testing.assert_allclose(got[12], got[3], rtol=0, atol=1e-5)  # a duplicate gets the same embedding


def test_order_follows_input(pool, encoder, texts):
    """Reversed input gives reversed rows: results are placed by chunk, not by arrival."""
    forward = encode_multi_process(pool, texts, chunk_size=2)
    backward = encode_multi_process(pool, texts[::-1], chunk_size=2)
    np.testing.assert_allclose(backward, forward[::-1], rtol=0, atol=1e-5)
    assert not np.allclose(forward[0], forward[1])  # rows differ, so a swap would be caught


def test_progress_bar(pool, texts, capsys):
    got = encode_multi_process(pool, texts, chunk_size=4, show_progress_bar=True)
    assert got.shape == (len(texts), DIM)
    err = capsys.readouterr().err
    assert f"{len(texts)}/{len(texts)}" in err and "sentence" in err


@pytest.mark.parametrize("kwargs, dim", [({}, DIM), ({"truncate_dim": 5}, 5), ({"truncate_dim": 500}, DIM)])
def test_empty_input(pool, kwargs, dim):
    got = encode_multi_process(pool, [], **kwargs)
    assert got.shape == (0, dim) and got.dtype == np.float32


def test_worker_error_is_raised_and_pool_survives(pool, encoder, texts):
    message = r"worker \d on cpu failed: ValueError: batch_size must be a positive integer"
    with pytest.raises(RuntimeError, match=message):
        within(60, lambda: encode_multi_process(pool, texts, chunk_size=2, batch_size=0))
    # Every chunk of the failed call was collected: the next call gets its own results only.
    np.testing.assert_allclose(encode_multi_process(pool, texts, chunk_size=2), encoder.encode(texts), atol=1e-5)


def test_pool_attributes(pool):
    assert pool.devices == ["cpu", "cpu"]
    assert len(pool.processes) == 2 and all(p.is_alive() for p in pool.processes)
    assert repr(pool) == f"EncoderPool(devices=['cpu', 'cpu'], dim={DIM}, running)"


# --- argument checking (no worker is involved) ---------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "4"])
def test_bad_chunk_size(pool, chunk_size):
    with pytest.raises(ValueError, match=f"chunk_size must be a positive integer, got {chunk_size!r}"):
        encode_multi_process(pool, ["a", "b"], chunk_size=chunk_size)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"convert_to_tensor": True}, "does not take convert_to_tensor"),
        ({"convert_to_numpy": False}, "does not take convert_to_numpy"),
        ({"precision": "int8"}, "does not take precision"),
        ({"output_dtype": "float16"}, "does not take output_dtype"),
        ({"device": "cpu"}, "does not take device"),
        ({"output_value": None}, "computes one of sentence_embedding, token_embeddings"),
    ],
)
def test_unsupported_kwargs(pool, kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_multi_process(pool, ["a", "b"], **kwargs)


def test_unknown_kwarg_and_bad_sentences(pool):
    with pytest.raises(TypeError, match=r"unexpected encode arguments \['batchsize'\]"):
        encode_multi_process(pool, ["a"], batchsize=4)
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        encode_multi_process(pool, "a single text")
    with pytest.raises(TypeError, match=r"sentences\[1\] is int"):
        encode_multi_process(pool, ["a", 3])
    with pytest.raises(TypeError, match="pool must be an EncoderPool"):
        encode_multi_process(None, ["a"])


@pytest.mark.parametrize(
    "devices, message",
    [
        ([], "target_devices must be a non-empty list"),
        ("cpu", "target_devices must be a non-empty list .* got 'cpu'"),
        (["cpu", "gpu:0"], r"target_devices\[1\] 'gpu:0' is not a torch device"),
        (["cpu", 0], r"target_devices\[1\] must be a device such as 'cpu' or 'cuda:1', got 0"),
        pytest.param(
            ["cuda:0"],
            r"target_devices\[0\] 'cuda:0' asks for CUDA, but torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_bad_target_devices(encoder, devices, message):
    before = len(multiprocessing.active_children())
    with pytest.raises(ValueError, match=message):
        start_multi_process_pool(encoder, devices)
    assert len(multiprocessing.active_children()) == before  # rejected before any worker started


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default is every CUDA device")
@pytest.mark.parametrize("cores, workers", [(1, 1), (2, 1), (3, 1), (8, 4), (64, 4)])
def test_default_cpu_devices(monkeypatch, cores, workers):
    monkeypatch.setattr(pool_module, "_cpu_cores", lambda: cores)
    assert pool_module._default_devices() == ["cpu"] * workers


# --- worker deaths, start-up failures, stopping ------------------------------------------------


class _KillOnFirstUpdate:
    """Stands in for tqdm: SIGKILLs a worker once the first chunk has come back, so the rest of the run loses it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.updates = 0

    def __call__(self, *args: Any, **kwargs: Any) -> _KillOnFirstUpdate:
        return self

    def __enter__(self) -> _KillOnFirstUpdate:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def update(self, n: int) -> None:
        self.updates += 1
        if self.updates == 1:
            os.kill(self.pid, signal.SIGKILL)


def test_worker_killed_while_encoding(encoder, texts, monkeypatch):
    dying = start_multi_process_pool(encoder, ["cpu", "cpu"])
    try:
        victim = dying.processes[1]
        monkeypatch.setattr(pool_module, "tqdm", _KillOnFirstUpdate(victim.pid))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"worker 1 on cpu died \(killed by SIGKILL, exit code -9\)"):
            within(30, lambda: encode_multi_process(dying, texts * 4, chunk_size=1))
        assert time.monotonic() - started < 30
        # The whole pool is stopped and says why when used again.
        assert not any(p.is_alive() for p in dying.processes)
        with pytest.raises(RuntimeError, match=r"this pool is unusable: worker 1 on cpu died"):
            encode_multi_process(dying, texts)
        with pytest.raises(RuntimeError, match="this pool is unusable"):
            encode_multi_process(dying, [])
        assert "unusable: worker 1 on cpu died" in repr(dying)
    finally:
        dying.close()


def test_worker_killed_before_encoding(encoder, texts):
    with start_multi_process_pool(encoder, ["cpu"]) as dying:
        os.kill(dying.processes[0].pid, signal.SIGKILL)
        dying.processes[0].join(10)
        with pytest.raises(RuntimeError, match=r"worker 0 on cpu died \(killed by SIGKILL"):
            within(30, lambda: encode_multi_process(dying, texts))
        with pytest.raises(RuntimeError, match="this pool is unusable: worker 0 on cpu died"):
            encode_multi_process(dying, texts)


def test_start_failure_is_raised(tiny_model_root, tmp_path):
    """A worker that cannot load the model makes start_multi_process_pool raise, with the worker's message."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_root / MODEL, folder)
    doomed = Encoder(folder, device="cpu")
    shutil.rmtree(folder)
    before = len(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match=f"worker 0 on cpu could not load the model: ModelFolderError: .*{folder}"):
        within(60, lambda: start_multi_process_pool(doomed, ["cpu"]))
    assert len(multiprocessing.active_children()) == before


def test_close_is_idempotent_and_context_manager_stops_workers(encoder, texts):
    with start_multi_process_pool(encoder, ["cpu"]) as short_lived:
        assert isinstance(short_lived, EncoderPool)
        np.testing.assert_allclose(encode_multi_process(short_lived, texts[:4]), encoder.encode(texts[:4]), atol=1e-5)
        processes = list(short_lived.processes)
    assert all(not p.is_alive() and p.exitcode == 0 for p in processes)  # they exited when asked, not terminated
    assert repr(short_lived).endswith("closed)")
    short_lived.close()
    stop_multi_process_pool(short_lived)
    with pytest.raises(RuntimeError, match="this pool is closed"):
        encode_multi_process(short_lived, texts)
