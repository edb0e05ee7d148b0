"""CachedMultipleNegativesRankingLoss: MultipleNegativesRankingLoss with gradient caching (Gao et al. 2021).

Memory no longer grows with the batch: the columns are embedded mini-batch by mini-batch without
autograd, the loss and its gradient with respect to the embeddings are computed on the whole batch
(cheap: [B, D] tensors and one [B, B * columns] score matrix), and on the backward pass each
mini-batch is embedded again, this time with autograd, and back-propagated with its cached embedding
gradient. The random state of each mini-batch is replayed, so dropout masks match between the passes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..search.similarity import cos_sim
from ..train.forward import TokenColumn, as_token_columns, embed_tokens
from .ranking import MultipleNegativesRankingLoss

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


def minibatch_ranges(column: TokenColumn, mini_batch_size: int, mini_batch_num_tokens: int | None) -> list[tuple[int, int]]:
    """[begin, end) row ranges: mini_batch_size rows each, or as many rows as fit mini_batch_num_tokens tokens."""
    rows = len(column)
    if mini_batch_num_tokens is None:
        return [(b, min(b + mini_batch_size, rows)) for b in range(0, rows, mini_batch_size)]
    cumulative, total = [], 0
    for ids in column.input_ids:
        total += len(ids)
        cumulative.append(total)
    ranges, begin = [], 0
    while begin < rows:
        before = cumulative[begin - 1] if begin else 0
        end = max(bisect.bisect_right(cumulative, before + mini_batch_num_tokens), begin + 1)
        ranges.append((begin, end))
        begin = end
    return ranges


class _RandomState:
    """The CPU and CUDA generator states at one moment, to replay a mini-batch's dropout."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def replay(self):
        fork = torch.random.fork_rng(devices=range(len(self.cuda)) if self.cuda else [])
        fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        return fork


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss (same arguments, loss and gradients) whose memory follows
    mini_batch_size (or mini_batch_num_tokens), not the batch size."""

    def __init__(
        self,
        model: Encoder,
        scale: float = 20.0,
        similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        show_progress_bar: bool = False,
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
    ) -> None:
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
                         hardness_mode, hardness_strength)
        if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
        if mini_batch_num_tokens is not None and (not isinstance(mini_batch_num_tokens, int) or mini_batch_num_tokens < 1):
            raise ValueError(f"mini_batch_num_tokens must be a positive int or None, got {mini_batch_num_tokens!r}")
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        # What turns the whole batch's embeddings into the loss; MatryoshkaLoss wraps it.
        self.loss_on_embeddings = self.compute_loss_from_embeddings

    def _replayed(self, column: TokenColumn, ranges: list[tuple[int, int]], states: list[_RandomState]):
        """Each mini-batch's embeddings again, with autograd, under the random state of its first pass."""
        for i, (begin, end) in enumerate(tqdm(ranges, desc="Embed mini-batches", disable=not self.show_progress_bar,
                                              leave=False)):
            part = TokenColumn(column.input_ids[begin:end])
            fork = states[i].replay()
            try:
                yield embed_tokens(self.model, [part])[0]
            finally:
                fork.__exit__(None, None, None)

    def forward(self, sentence_features: Iterable[TokenColumn], labels: torch.Tensor | None) -> torch.Tensor:
        columns = as_token_columns(sentence_features)
        if len(columns) < 2:
            raise ValueError(f"{type(self).__name__} expects at least 2 text columns (anchor, positive), got {len(columns)}")
        ranges = [minibatch_ranges(c, self.mini_batch_size, self.mini_batch_num_tokens) for c in columns]
        grad = torch.is_grad_enabled()
        reps, states = [], []
        with torch.no_grad():
            for column, column_ranges in zip(columns, ranges):
                column_states, parts = [], []
                for begin, end in column_ranges:
                    column_states.append(_RandomState())
                    parts.append(embed_tokens(self.model, [TokenColumn(column.input_ids[begin:end])])[0])
                states.append(column_states)
                reps.append(torch.cat(parts).detach().requires_grad_(grad))
        if not grad:
            return self.loss_on_embeddings(reps, labels)
        loss = self.loss_on_embeddings(reps, labels)
        loss.backward()
        cached = [r.grad for r in reps]
        out = loss.detach().requires_grad_()
        out.register_hook(partial(self._replay_backward, columns, ranges, states, cached))
        return out

    def _replay_backward(self, columns, ranges, states, cached, grad_output: torch.Tensor) -> None:
        """Embed each mini-batch again with autograd and back-propagate its cached gradient."""
        with torch.enable_grad():
            for column, column_ranges, column_states, grad in zip(columns, ranges, states, cached):
                for (begin, end), emb in zip(column_ranges, self._replayed(column, column_ranges, column_states)):
                    g = grad[begin:end].to(emb.dtype)
                    (emb.float() * g.float()).sum().mul(grad_output).backward()

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size,
                "mini_batch_num_tokens": self.mini_batch_num_tokens}


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """CachedMultipleNegativesRankingLoss with directions ("query_to_doc", "doc_to_query"), one softmax each
    (sentence-transformers deprecates this name for those arguments; it stays for the scripts that use it)."""

    def __init__(self, model: Encoder, scale: float = 20.0,
                 similarity_fct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 gather_across_devices: bool = False, show_progress_bar: bool = False) -> None:
        super().__init__(model, scale, similarity_fct, mini_batch_size, mini_batch_num_tokens, gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                         show_progress_bar=show_progress_bar)
