"""The encode pipeline: tokenize -> plan -> stage -> run -> head -> finish, one module per stage.

A background thread tokenizes (on every core, tokenize.py), plans batches (plan.py) and stages them into
reused buffers on their way to the device (stage.py); the calling thread runs the model and the head on each
batch (run.py) and hands the rows to a sink: encode scatters them into one [N, D] tensor on the device,
copied to the host once at the end (finish.py), a sparse model keeps their non-zeros. The head is the only
part a model type adds: sentence pooling (pooling.py), SPLADE (sparse/heads.py), a classifier's logits
(OutputHead). The Pipeline object keeps what later calls reuse: the tokenizer copy, the staging buffers and
the captured CUDA graphs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .plan import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, BatchPlanner, ShapePolicy
from .run import EagerRunner, GraphRunner, RunOptions
from .stage import Staging, StagedBatch
from .tokenize import ChunkTokenizer, TokenStore, cpu_cores, tokenize_chunks

SLOTS = 4  # staged batches in flight: enough to keep the tokenizer thread ahead of the model


class BatchStream:
    """StagedBatches for texts, made by a daemon thread; an error in the thread re-raises here."""

    def __init__(self, texts: Sequence[str], tokenize: Callable, threads: int, planner: BatchPlanner,
                 store: TokenStore, staging: Staging) -> None:
        self._texts, self._tokenize, self._threads = texts, tokenize, threads
        self._planner, self._store, self._staging = planner, store, staging
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="sentfuse-batches", daemon=True)
        self._thread.start()

    def _send(self, plan) -> bool:
        slot = self._staging.acquire(self._stop)
        if slot is None:
            return False
        self._queue.put(self._staging.fill(slot, plan, self._store))
        return True

    def _produce(self) -> None:
        try:
            for chunk in tokenize_chunks(self._texts, self._tokenize, self._threads):
                self._store.add(chunk)
                for plan in self._planner.add(chunk.start, chunk.lengths):
                    if not self._send(plan):
                        return
            for plan in self._planner.finish():
                if not self._send(plan):
                    return
            self._queue.put(None)
        except BaseException as e:  # handed to the consumer, which raises it in the caller's thread
            self._queue.put(e)

    def __iter__(self) -> Iterator[StagedBatch]:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread and hand back the slots of batches nobody will run."""
        self._stop.set()
        self._thread.join()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, StagedBatch):
                self._staging.release(item)


@dataclass
class EncodeRequest:
    texts: list  # str each, or (first, second) pairs with a pairs Pipeline; prompts already prepended
    skip_tokens: int  # prompt tokens the pooling leaves out
    batch_size: int | None
    max_batch_tokens: int | None
    token_embeddings: bool  # output_value "token_embeddings" instead of sentence embeddings
    dim: int  # features kept per sentence embedding
    normalize: bool
    out_dtype: torch.dtype | None  # None: the backbone's dtype
    progress: bool


class OutputHead:
    """The head of a backbone whose forward already gives one row per input (a classifier's logits, a static
    sparse model's vectors): its output [rows, dim] leaves as float32, so that scores never tie in bf16/fp16."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, output: torch.Tensor, mask: torch.Tensor, skip_tokens: int) -> torch.Tensor:
        return output.float()

    def finish(self, x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
        return x


Sink = Callable[[torch.Tensor, torch.Tensor], Any]  # (positions [n] on the device, rows [n, dim])
TokenSelect = Callable[[torch.Tensor], torch.Tensor]  # input_ids [B, W] -> bool [B, W]: the tokens kept


@dataclass
class PackedTokens:
    """Token rows of N texts in the order their batches ran: rows [T, D] text after text, with each text's
    input position and row count (positions, counts: [N] int64 on the host)."""

    rows: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor

    def per_text(self) -> list[torch.Tensor]:
        """One [n_i, D] view of rows per text, in input order (no copy)."""
        out: list[Any] = [None] * len(self.positions)
        for position, view in zip(self.positions.tolist(), torch.split(self.rows, self.counts.tolist())):
            out[position] = view
        return out

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [T, D], offsets [N + 1] int64 on the host) in input order: one gather of rows."""
        order = torch.argsort(self.positions)
        counts = self.counts[order]
        offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=offsets[1:])
        starts = torch.cumsum(self.counts, 0) - self.counts  # each text's first row in rows (run order)
        # Row j of the result, of text i, is row j - offsets[i] + starts[i] of rows.
        shift = torch.repeat_interleave(starts[order] - offsets[:-1], counts, output_size=int(offsets[-1]))
        index = torch.arange(int(offsets[-1])) + shift
        return self.rows.index_select(0, index.to(self.rows.device)), offsets


class Pipeline:
    """encode's machinery for one tokenizer, backbone and head on one device, reused across calls.

    backbone(features) -> what the head takes: the last hidden state [rows, width, H] for a sentence or
    SPLADE head, a classifier's logits [rows, labels] for OutputHead; it is looked up at each call so that a
    caller may replace it. head(output, attention_mask, skip_tokens) -> [rows, D] and head.finish(x, dim,
    normalize) are the only parts a model type adds; a head whose in_graph is False (it reads device results
    on the host) runs after the CUDA graph of the backbone instead of inside it. With pairs, each input is a
    (first, second) pair of texts tokenized together into one row; special_tokens False leaves out the
    tokenizer's special tokens (a static bag has none). Inputs are truncated at max_length tokens (default: the
    tokenizer's model_max_length).
    """

    def __init__(self, tokenizer: Any, backbone: Callable, head: Any, device: torch.device,
                 dtype: torch.dtype, options: RunOptions, pairs: bool = False, special_tokens: bool = True,
                 max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length if max_length is not None else tokenizer.model_max_length
        self.chunk_tokenizer = ChunkTokenizer(tokenizer, self.max_length, pairs, special_tokens)
        self.unit = "pair" if pairs else "sentence"  # what the progress bar counts
        self.backbone = backbone
        self.head = head
        self.head_in_graph = getattr(head, "in_graph", True)
        self.device = device
        self.dtype = dtype
        self.options = options
        self.typed = self.chunk_tokenizer.typed  # token types travel to the model only where they vary
        self.threads = options.tokenize_threads_for(device, cpu_cores())
        self.staging: Staging | None = None
        self.runner = self._runner()
        self._lock = threading.Lock()  # one call at a time: the staging slots and graph inputs are shared

    def _forward(self, features: dict[str, torch.Tensor], skip_tokens: int) -> torch.Tensor:
        output = self.backbone(features)
        return self.head(output, features["attention_mask"], skip_tokens) if self.head_in_graph else output

    def _rows(self, staged: StagedBatch, skip_tokens: int) -> torch.Tensor:
        """The head's [n, D] rows for a staged batch's n inputs (padding rows cut off)."""
        x = self.runner(staged.features, skip_tokens)
        if not self.head_in_graph:
            x = self.head(x, staged.features["attention_mask"], skip_tokens)
        return x[: len(staged.plan.positions)]

    def _runner(self):
        if self.device.type == "cuda" and self.options.cuda_graphs:
            return GraphRunner(self._forward, self.options, self.device)
        return EagerRunner(self._forward, self.options)

    def policy(self, batch_size: int | None, max_batch_tokens: int | None) -> ShapePolicy:
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        return ShapePolicy(
            batch_size=batch_size or DEFAULT_MAX_BATCH_SIZE[kind],
            max_batch_tokens=max_batch_tokens or DEFAULT_BATCH_TOKENS[kind],
            max_length=self.max_length,
            fixed_shapes=self.options.fixed_shapes if self.options.fixed_shapes is not None else kind == "cuda",
        )

    def stream(self, texts: Sequence, policy: ShapePolicy) -> BatchStream:
        tok = self.tokenizer
        store = TokenStore(
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            pad_type_id=getattr(tok, "pad_token_type_id", 0),
            left_padding=tok.padding_side == "left",
        )
        if self.staging is None:
            capacity = min(policy.max_batch_tokens, policy.batch_size * policy.max_length)
            self.staging = Staging(self.device, SLOTS, capacity, policy.batch_size, self.typed)
        return BatchStream(texts, self.chunk_tokenizer, self.threads, BatchPlanner(policy), store, self.staging)

    def _progress(self, request: EncodeRequest) -> tqdm:
        return tqdm(total=len(request.texts), desc="Encoding", unit=self.unit, disable=not request.progress)

    def encode(self, request: EncodeRequest) -> torch.Tensor | list[torch.Tensor]:
        """[N, dim] sentence embeddings on the device, or N [n_tokens, H] token embeddings."""
        if request.token_embeddings:
            return self.tokens(request).per_text()
        out = torch.empty((len(request.texts), request.dim), device=self.device, dtype=request.out_dtype or self.dtype)
        self.collect(request, lambda positions, x: out.index_copy_(0, positions, x.to(out.dtype)))
        return out

    def collect(self, request: EncodeRequest, sink: Sink) -> None:
        """sink(positions, rows) for each batch of request's inputs, its rows finished (cut to request.dim,
        normalized when asked), in the order batches leave the planner."""
        with self._lock, self._progress(request) as bar:
            for staged in self.stream(request.texts, self.policy(request.batch_size, request.max_batch_tokens)):
                try:
                    self.staging.ready(staged)
                    x = self.head.finish(self._rows(staged, request.skip_tokens), request.dim, request.normalize)
                    sink(staged.positions, x)
                finally:
                    self.staging.release(staged)
                bar.update(len(staged.plan.positions))

    def tokens(self, request: EncodeRequest, select: TokenSelect | None = None,
               project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PackedTokens:
        """request's token rows, packed: per batch the backbone's output at each text's real tokens (only those
        select(input_ids [B, W]) marks, with select) gathered into [t, H] by one indexing op, then project
        ([t, H] -> [t, D], with project) run once on them. Padding and dropped tokens never reach project, and
        no op runs per text."""
        parts, positions, counts = [], [], []
        with self._lock, self._progress(request) as bar:
            for staged in self.stream(request.texts, self.policy(request.batch_size, request.max_batch_tokens)):
                n = len(staged.plan.positions)
                try:
                    self.staging.ready(staged)
                    with self.options.attention():
                        hidden = self.backbone(staged.features)[:n]
                    # Read the slot's ids and mask before release: the tokenizer thread refills it afterwards.
                    keep = staged.features["attention_mask"][:n] != 0
                    if select is not None:
                        keep &= select(staged.features["input_ids"][:n])
                    rows = hidden[keep]
                finally:
                    self.staging.release(staged)
                parts.append(rows if project is None else project(rows))
                positions.append(staged.plan.positions)
                counts.append(keep.sum(1))
                bar.update(n)
        width = parts[0].shape[1] if parts else 0
        return PackedTokens(torch.cat(parts) if parts else torch.zeros(0, width, device=self.device),
                            torch.from_numpy(np.concatenate(positions)) if positions else torch.zeros(0, dtype=torch.long),
                            torch.cat(counts).cpu() if counts else torch.zeros(0, dtype=torch.long))
