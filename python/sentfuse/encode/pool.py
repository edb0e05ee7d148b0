"""Encoding in several worker processes, one copy of the encoder (Encoder or SparseEncoder) in each
(sentence-transformers' multi-process API).

    with start_multi_process_pool(encoder, ["cuda:0", "cuda:1"]) as pool:
        embeddings = encode_multi_process(pool, sentences, batch_size=64)

Workers are started with the "spawn" method (CUDA cannot run in forked children), so a script that
starts a pool must guard its entry point with ``if __name__ == "__main__":``, and the workers import
sentfuse as the parent does (same PYTHONPATH / environment).

Design: each worker has its own pipe to the parent and holds at most one chunk at a time; the
parent hands the next chunk to whichever worker answers first, so fast devices take more chunks.
Unlike one queue shared by all workers, a worker that dies cannot leave a shared lock held or a
half-written result in a pipe the parent reads from. The parent waits on every pipe together with
every process's sentinel, so a death (SIGKILL, segfault, os._exit) is seen at once instead of being
a hang; the pool is then stopped, since the dead worker's chunk is lost. An exception inside a
worker's encode is sent back and raised in the parent, and the pool stays usable.
"""

from __future__ import annotations

import math
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import check_sentences, parse_device_list, positive_int
from .tokenize import cpu_cores as _cpu_cores

MAX_CPU_WORKERS = 4
CHUNKS_PER_WORKER = 4  # default chunking: a few chunks per worker, so a slow worker holds up little at the end
MAX_CHUNK_SIZE = 5000
STOP_TIMEOUT_S = 10.0
TOKEN_OR_SENTENCE = ("sentence_embedding", "token_embeddings")  # the output_value a pool computes  # how long close() lets workers exit on their own before terminating them

# Arguments about the result's type. Workers always return float32 numpy rows; the calling process
# converts or quantizes them itself (Encoder.encode(..., pool=pool) does).
_CONVERSION_KWARGS = ("convert_to_numpy", "convert_to_tensor", "precision", "output_dtype")
# encode_multi_process's own arguments, which are not sent to the workers.
_POOL_PARAMETERS = ("self", "inputs", "sentences", "show_progress_bar", "pool", "chunk_size")


class _RemoteTraceback(Exception):
    """A worker's traceback, chained as the cause of the parent's RuntimeError so that it is printed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _default_devices() -> list[str]:
    """Every visible CUDA device; without CUDA, min(4, cores // 2) CPU workers (at least 1).

    On CPU, torch already spreads one model over all cores; extra processes pay off in the
    tokenization and Python overhead they overlap, but each holds a copy of the model, so a few
    workers with at least 2 threads each.
    """
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"] * min(MAX_CPU_WORKERS, max(1, _cpu_cores() // 2))


def _check_devices(target_devices: Any) -> list[str]:
    if target_devices is None:
        return _default_devices()
    return parse_device_list(target_devices)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _exit_status(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}, exit code {code}"
        except ValueError:
            pass
    return f"exit code {code}"


@dataclass
class SparseChunk:
    """A worker's sparse [rows, V] result (SparseEncoder), sent as its non-zeros: dense rows would be
    vocabulary-wide."""

    indices: np.ndarray  # [2, nnz] int64 (row, column)
    values: np.ndarray  # [nnz] float32
    shape: tuple[int, int]

    def __len__(self) -> int:
        return self.shape[0]


def _stack_sparse(chunks: list[SparseChunk]) -> torch.Tensor:
    """The chunks, in order, as one coalesced sparse COO [N, V] float32 tensor."""
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    indices = np.concatenate([c.indices + np.array([[offset], [0]]) for c, offset in zip(chunks, offsets)], axis=1)
    values = np.concatenate([c.values for c in chunks])
    shape = (sum(len(c) for c in chunks), chunks[0].shape[1])
    return torch.sparse_coo_tensor(torch.from_numpy(indices), torch.from_numpy(values), shape).coalesce()


def _float32_rows(embeddings: Any) -> np.ndarray | list[np.ndarray] | SparseChunk:
    """What a worker sends back: [N, D] float32 rows, (token embeddings) a list of [n_tokens, H] float32 arrays,
    or (sparse vectors) a SparseChunk."""
    if isinstance(embeddings, torch.Tensor) and embeddings.is_sparse:
        coo = embeddings.coalesce().cpu()
        return SparseChunk(coo.indices().numpy(), coo.values().float().numpy(), tuple(coo.shape))
    if isinstance(embeddings, list):
        return [np.ascontiguousarray(torch.as_tensor(e).float().cpu().numpy()) for e in embeddings]
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def _worker(conn: Connection, factory: Any, encoder_kwargs: dict[str, Any], device: str, num_threads: int | None) -> None:
    """A worker process: build the encoder once (factory(**encoder_kwargs, device=device)), say "ready" (or why
    not), then encode chunks until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what happens and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        target = torch.device(device)
        if target.type == "cuda" and target.index is not None:
            # Otherwise this process also creates a CUDA context (and pinned buffers) on cuda:0.
            torch.cuda.set_device(target)
        encoder = factory(**encoder_kwargs, device=device)
    except Exception as e:
        conn.send(("error", _describe(e), traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent has gone away
            return
        if task is None:
            return
        texts, encode_kwargs = task
        try:
            embeddings = encoder.encode(texts, show_progress_bar=False, **encode_kwargs)
            reply: tuple = ("ok", _float32_rows(embeddings))
        except Exception as e:
            reply = ("error", _describe(e), traceback.format_exc())
        conn.send(reply)


class EncoderPool:
    """Worker processes, each with its own copy of an Encoder on one of `devices`.

    Made by start_multi_process_pool; used by encode_multi_process (or Encoder.encode(..., pool=pool));
    stopped by close() / stop_multi_process_pool or at the end of a with block. A pool whose worker
    died, or whose encode_multi_process call was interrupted, is stopped and refuses further use.
    """

    def __init__(self, encoder: Any, target_devices: Sequence[str] | None = None) -> None:
        describe = getattr(encoder, "worker_description", None)
        if not callable(describe):
            raise TypeError(f"encoder must be a sentfuse Encoder, got {type(encoder).__name__}")
        description = describe()
        self.devices: list[str] = _check_devices(target_devices)
        self.dim: int = description["dim"]
        # Width before the encoder's own truncate_dim: encode(truncate_dim=...) may ask for up to this.
        self.model_dim: int = description["model_dim"]
        self.encode_parameters: tuple[str, ...] = description["encode_parameters"]
        self.processes: list[BaseProcess] = []
        self._conns: list[Connection] = []
        self._closed = False
        self._broken: str | None = None

        n_cpu = sum(torch.device(d).type == "cpu" for d in self.devices)
        # CPU workers share the cores instead of each starting one thread per core.
        cpu_threads = max(1, _cpu_cores() // n_cpu) if n_cpu else None
        context = get_context("spawn")
        factory, kwargs = description["factory"], description["kwargs"]
        try:
            for i, device in enumerate(self.devices):
                parent_end, child_end = context.Pipe()
                threads = cpu_threads if torch.device(device).type == "cpu" else None
                process = context.Process(
                    target=_worker, args=(child_end, factory, kwargs, device, threads), name=f"sentfuse-pool-{i}", daemon=True
                )
                process.start()
                # Only the worker may hold its end: when it dies the parent then reads EOF instead of waiting.
                child_end.close()
                self.processes.append(process)
                self._conns.append(parent_end)
            self._wait_until_loaded()
        except BaseException:
            self._stop(timeout=0)
            raise

    def _wait_until_loaded(self) -> None:
        loading = set(range(len(self.processes)))
        while loading:
            i, message = self._receive()
            if message[0] == "error":
                raise RuntimeError(
                    f"worker {i} on {self.devices[i]} could not load the model: {message[1]}"
                ) from _RemoteTraceback(message[2])
            loading.discard(i)

    # --- talking to the workers -------------------------------------------------------------------

    def _receive(self) -> tuple[int, tuple]:
        """(worker, message) for the next message from any worker; a worker's death raises and breaks the pool."""
        owners: dict[Any, int] = {}
        for i, (conn, process) in enumerate(zip(self._conns, self.processes)):
            owners[conn] = i
            owners[process.sentinel] = i
        ready = wait(list(owners))
        # Messages first: a worker may have sent its last result just before it died.
        for handle in ready:
            if isinstance(handle, Connection):
                try:
                    return owners[handle], handle.recv()
                except (EOFError, OSError):
                    self._died(owners[handle])
        self._died(owners[ready[0]])

    def _send(self, i: int, task: tuple) -> None:
        try:
            self._conns[i].send(task)
        except OSError:  # BrokenPipeError / ConnectionResetError: the worker is gone
            self._died(i)

    def _died(self, i: int) -> NoReturn:
        process = self.processes[i]
        process.join(timeout=1.0)  # reap it, for its exit code
        reason = f"worker {i} on {self.devices[i]} died ({_exit_status(process.exitcode)})"
        self._break(reason)
        raise RuntimeError(f"{reason}; the pool has been stopped")

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._stop(timeout=0)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RuntimeError(
                f"this pool is unusable: {self._broken}; start a new one with start_multi_process_pool"
            )
        if self._closed:
            raise RuntimeError("this pool is closed; start a new one with start_multi_process_pool")
        for i, process in enumerate(self.processes):
            if not process.is_alive():
                self._died(i)

    def _run(self, chunks: list[list[str]], encode_kwargs: dict[str, Any], bar: Any) -> list[np.ndarray]:
        """Each chunk's embeddings, in chunk order; the first worker error is raised once no chunk is in flight."""
        results: list[Any] = [None] * len(chunks)
        in_flight: dict[int, int] = {}  # worker -> chunk
        next_chunk = 0
        failure: tuple[int, tuple] | None = None
        try:
            while in_flight or (failure is None and next_chunk < len(chunks)):
                for i in range(len(self.processes)):
                    if failure is None and next_chunk < len(chunks) and i not in in_flight:
                        in_flight[i] = next_chunk
                        self._send(i, (chunks[next_chunk], encode_kwargs))
                        next_chunk += 1
                i, message = self._receive()
                chunk = in_flight.pop(i)
                if message[0] == "error":
                    # Stop handing out chunks but collect those in flight, so nothing stale is left in a pipe.
                    failure = failure or (i, message)
                    continue
                rows = message[1]
                if len(rows) != len(chunks[chunk]) or (isinstance(rows, np.ndarray) and rows.ndim != 2):
                    shape = rows.shape if isinstance(rows, np.ndarray) else f"{len(rows)} token arrays"
                    raise RuntimeError(
                        f"worker {i} on {self.devices[i]} returned {shape} for {len(chunks[chunk])} sentences"
                    )
                results[chunk] = rows
                bar.update(len(chunks[chunk]))
        except BaseException as e:
            # Chunks may still be in flight, and their results would be taken for the next call's.
            self._break(f"encode_multi_process stopped early ({_describe(e)})")
            raise
        if failure is not None:
            i, message = failure
            error = RuntimeError(f"worker {i} on {self.devices[i]} failed: {message[1]}")
            raise error from _RemoteTraceback(message[2])
        return results

    # --- stopping ---------------------------------------------------------------------------------

    def _stop(self, timeout: float) -> None:
        """Ask the workers to exit, wait up to timeout seconds, then terminate those still running."""
        self._closed = True
        if timeout > 0:
            for conn in self._conns:
                try:
                    conn.send(None)
                except OSError:  # already gone
                    pass
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self._conns:
            conn.close()

    def close(self) -> None:
        """Stop the worker processes (a no-op when already stopped)."""
        if not self._closed:
            self._stop(STOP_TIMEOUT_S)

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"unusable: {self._broken}" if self._broken else "closed" if self._closed else "running"
        return f"EncoderPool(devices={self.devices}, dim={self.dim}, {state})"


def start_multi_process_pool(encoder: Any, target_devices: Sequence[str] | None = None) -> EncoderPool:
    """Start one worker process per target device, each with a copy of encoder, and wait until all have loaded it.

    target_devices: e.g. ["cuda:0", "cuda:1"] or ["cpu"] * 4; a device may repeat. Default: every
    visible CUDA device, else min(4, cores // 2) CPU workers (at least 1). CPU workers split the cores
    between them (torch.set_num_threads). A worker that cannot load the model makes this raise
    RuntimeError with its error, after the other workers are stopped.
    """
    return EncoderPool(encoder, target_devices)


def stop_multi_process_pool(pool: EncoderPool) -> None:
    """Stop the pool's worker processes (pool.close())."""
    pool.close()


def _check_encode_kwargs(encode_kwargs: dict[str, Any], encode_parameters: Sequence[str]) -> None:
    accepted = set(encode_parameters) - set(_POOL_PARAMETERS)
    unknown = sorted(set(encode_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"encode_multi_process got unexpected encode arguments {unknown}; Encoder.encode takes {sorted(accepted)}"
        )
    for name in _CONVERSION_KWARGS:
        if name in encode_kwargs:
            raise ValueError(
                f"encode_multi_process does not take {name}: workers return float32 numpy embeddings; convert "
                "or quantize them afterwards, or call Encoder.encode(..., pool=pool), which does"
            )
    if "device" in encode_kwargs:
        raise ValueError(
            "encode_multi_process does not take device: each worker runs on its own device from target_devices"
        )
    if encode_kwargs.get("output_value", "sentence_embedding") not in TOKEN_OR_SENTENCE:
        raise ValueError(
            f"encode_multi_process computes one of {', '.join(TOKEN_OR_SENTENCE)}, "
            f"got output_value={encode_kwargs['output_value']!r}"
        )


def encode_multi_process(
    pool: EncoderPool,
    sentences: Sequence[str],
    *,
    chunk_size: int | None = None,
    show_progress_bar: bool = False,
    **encode_kwargs: Any,
) -> np.ndarray | list[np.ndarray] | torch.Tensor:
    """float32 [N, D] sentence embeddings of sentences, in input order, computed by the pool's workers
    (output_value="token_embeddings": a list of float32 [n_tokens, H] arrays; a SparseEncoder's pool: one sparse
    COO [N, V] float32 tensor).

    The sentences are split into chunks of chunk_size (default ceil(N / (4 * workers)), at most 5000),
    each encoded by one worker with Encoder.encode(chunk, **encode_kwargs) (prompt_name, prompt,
    batch_size, normalize_embeddings, truncate_dim, ...). A worker's exception is raised here as
    RuntimeError naming its device; a worker's death raises RuntimeError with its exit code and
    leaves the pool unusable.
    """
    if not isinstance(pool, EncoderPool):
        raise TypeError(f"pool must be an EncoderPool from start_multi_process_pool, got {type(pool).__name__}")
    single, texts = check_sentences(sentences)
    if single:
        raise TypeError("sentences must be a list of str; wrap a single text in a list")
    chunk_size = positive_int(chunk_size, "chunk_size")
    if not isinstance(show_progress_bar, (bool, np.bool_)):
        raise TypeError(f"show_progress_bar must be a bool, got {type(show_progress_bar).__name__}")
    _check_encode_kwargs(encode_kwargs, pool.encode_parameters)
    pool._check_usable()
    tokens = encode_kwargs.get("output_value") == "token_embeddings"
    if not texts and tokens:
        return []
    if not texts:
        truncate_dim = positive_int(encode_kwargs.get("truncate_dim"), "truncate_dim")
        dim = pool.dim if truncate_dim is None else min(truncate_dim, pool.model_dim)
        return np.zeros((0, dim), dtype=np.float32)

    return map_chunks(pool, texts, chunk_size, show_progress_bar, encode_kwargs)


def map_chunks(pool: EncoderPool, items: list, chunk_size: int | None, show_progress_bar: bool,
               encode_kwargs: dict[str, Any], unit: str = "sentence") -> np.ndarray:
    """float32 rows for non-empty, checked items (texts, or a cross-encoder's pairs), in input order: the
    items split into chunks of chunk_size (default ceil(N / (4 * workers)), at most 5000), each run by one
    worker's encode(chunk, **encode_kwargs)."""
    pool._check_usable()
    if chunk_size is None:
        chunk_size = min(MAX_CHUNK_SIZE, math.ceil(len(items) / (CHUNKS_PER_WORKER * len(pool.processes))))
    chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
    with tqdm(total=len(items), desc="Encoding", unit=unit, disable=not show_progress_bar) as bar:
        results = pool._run(chunks, encode_kwargs, bar)
    if isinstance(results[0], SparseChunk):
        return _stack_sparse(results)
    if encode_kwargs.get("output_value") == "token_embeddings":
        return [rows for part in results for rows in part]
    return np.concatenate(results)
