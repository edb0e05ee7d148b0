"""Run stage: backbone + sentence head over one staged batch, eagerly or as a replayed CUDA graph.

On CUDA a batch of a new (rows, width) shape is captured once into a CUDA graph and replayed for every
later batch of that shape, in this and later encode calls: one launch instead of a few hundred, and no
attention plan built per batch. The planner keeps the shapes few (plan.py). A shape whose capture fails
(a backbone that synchronizes with the host inside its forward, say) runs eagerly from then on.

Switches: SENTFUSE_CUDA_GRAPHS=0 (or RunOptions(cuda_graphs=False)) forces the eager path;
SENTFUSE_SDPA_BACKEND=flash|efficient|cudnn|math pins the attention kernel (default: torch's choice);
SENTFUSE_TOKENIZE_THREADS=N sets how many threads tokenize (default: see RunOptions.tokenize_threads_for).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import positive_int

logger = logging.getLogger(__name__)

Forward = Callable[[dict[str, torch.Tensor], int], torch.Tensor]  # (features, skip_tokens) -> [rows, D]
MAX_GRAPHS = 64  # graphs kept per encoder; shapes beyond run eagerly (the planner makes ~20 per call)
WARMUP_RUNS = 2  # eager runs on a side stream before a capture (library handles, autotuning)


def _sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }


SDPA_BACKEND_NAMES = ("flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class RunOptions:
    cuda_graphs: bool = True  # replay CUDA graphs per shape (CUDA only)
    sdpa_backend: str | None = None  # flash, efficient, cudnn or math; None lets torch choose
    fixed_shapes: bool | None = None  # bucketed batch shapes (plan.py); None: on CUDA only
    tokenize_threads: int | None = None  # None: tokenize_threads_for's default

    def __post_init__(self) -> None:
        if self.sdpa_backend is not None and self.sdpa_backend not in SDPA_BACKEND_NAMES:
            raise ValueError(
                f"sdpa_backend must be one of {', '.join(SDPA_BACKEND_NAMES)} or None, got {self.sdpa_backend!r}"
            )
        positive_int(self.tokenize_threads, "tokenize_threads")

    @classmethod
    def from_env(cls) -> RunOptions:
        graphs = os.environ.get("SENTFUSE_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")
        threads = os.environ.get("SENTFUSE_TOKENIZE_THREADS", "").strip() or None
        if threads is not None:
            try:
                threads = int(threads)
            except ValueError:
                raise ValueError(f"SENTFUSE_TOKENIZE_THREADS must be a positive integer, got {threads!r}") from None
        return cls(cuda_graphs=graphs, sdpa_backend=os.environ.get("SENTFUSE_SDPA_BACKEND") or None,
                   tokenize_threads=positive_int(threads, "SENTFUSE_TOKENIZE_THREADS"))

    def tokenize_threads_for(self, device: torch.device, cores: int) -> int:
        """Threads that tokenize. By default every core on CPU (the model waits for the tokens either way);
        with the model on CUDA and 4 cores or more, every core but one, which stays free for the thread
        that launches the model: with all cores tokenizing it waits for a time slice between batches and
        the GPU idles."""
        if self.tokenize_threads is not None:
            return self.tokenize_threads
        return cores - 1 if device.type == "cuda" and cores >= 4 else cores

    def attention(self):
        """The context the forward runs in: pins SDPA's kernel when sdpa_backend is set."""
        if self.sdpa_backend is None:
            return nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(_sdpa_backends()[self.sdpa_backend])


class EagerRunner:
    def __init__(self, forward: Forward, options: RunOptions) -> None:
        self.forward = forward
        self.options = options

    def __call__(self, features: dict[str, torch.Tensor], skip_tokens: int) -> torch.Tensor:
        with self.options.attention():
            return self.forward(features, skip_tokens)


@dataclass
class CapturedGraph:
    inputs: dict[str, torch.Tensor]  # static inputs: each batch is copied in before a replay
    output: torch.Tensor  # static output, overwritten by each replay
    replay: Callable[[], None]


def capture_cuda_graph(forward: Callable[[], torch.Tensor], device: torch.device, pool: Any) -> tuple[Callable, torch.Tensor]:
    """(replay, output) of forward captured as a CUDA graph, after warm-up runs on a side stream."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            forward()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the tokenizer thread's CUDA calls (event waits, copies on their own stream) stay legal.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = forward()
    return graph.replay, output


class GraphRunner:
    """Replays one captured graph per (feature names, rows, width, skip_tokens); captures new keys on first use.

    capture(forward, device, pool) -> (replay, output) is capture_cuda_graph on CUDA; tests inject a stand-in
    to check the bookkeeping on CPU. Graphs share one memory pool: they replay one at a time on one stream.
    """

    def __init__(self, forward: Forward, options: RunOptions, device: torch.device, capture: Callable | None = None):
        self.eager = EagerRunner(forward, options)
        self.device = device
        self.graphs: dict[tuple, CapturedGraph | None] = {}  # None: runs eagerly
        self._capture = capture or capture_cuda_graph
        self._pool = torch.cuda.graph_pool_handle() if capture is None else None

    @staticmethod
    def key(features: dict[str, torch.Tensor], skip_tokens: int) -> tuple:
        rows, width = features["input_ids"].shape
        return tuple(sorted(features)), rows, width, skip_tokens

    def __call__(self, features: dict[str, torch.Tensor], skip_tokens: int) -> torch.Tensor:
        key = self.key(features, skip_tokens)
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:
                return self.eager(features, skip_tokens)
            self.graphs[key] = self._new_graph(key, features, skip_tokens)
        graph = self.graphs[key]
        if graph is None:
            return self.eager(features, skip_tokens)
        for name, value in features.items():
            graph.inputs[name].copy_(value, non_blocking=True)
        graph.replay()
        return graph.output

    def _new_graph(self, key: tuple, features: dict[str, torch.Tensor], skip_tokens: int) -> CapturedGraph | None:
        inputs = {name: torch.zeros_like(value) for name, value in features.items()}
        inputs["attention_mask"].fill_(1)  # warm-up runs see no fully masked row

        def forward() -> torch.Tensor:
            return self.eager(inputs, skip_tokens)

        try:
            replay, output = self._capture(forward, self.device, self._pool)
        except Exception as e:  # any failure to capture leaves this shape on the eager path, which still works
            logger.warning("CUDA graph capture failed for batch shape %s (%s); running it eagerly", key[1:3], e)
            return None
        return CapturedGraph(inputs, output, replay)
