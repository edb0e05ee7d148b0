"""The differentiable forward of an Encoder: token ids of every input column -> sentence embeddings.

The backbone runs in whatever mode the caller set (train() for dropout), one call per run of
near-equal-length texts (batching.py); the valid tokens of all runs are packed into one [T, H] tensor and
pooled by the masked_pool_varlen op, which never reads padding; Dense and Normalize follow as the
model folder lists them. Gradients reach the backbone and the Dense layers through sentfuse's ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import _ops
from ..model.modules import NormalizeModule
from .batching import DEFAULT_TRAIN_BATCH_TOKENS, plan_length_runs

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


@dataclass
class TokenColumn:
    """One input column of a training batch: each text's token ids, unpadded and truncated."""

    input_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_column(model: Encoder, texts: list[str]) -> TokenColumn:
    return TokenColumn(model._tokenize_unpadded(list(texts))["input_ids"])


def _run_backbone(model: Encoder, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-token hidden states [sum(len), H] of rows (in order) from one padded backbone call."""
    tokenizer = model.tokenizer
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    left = tokenizer.padding_side == "left"
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    device = model.device
    ids, mask = ids.to(device), mask.to(device)
    hidden = model._model(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
    return hidden[mask.bool()], mask.sum(dim=1)


def embed_tokens(model: Encoder, columns: list[TokenColumn], max_batch_tokens: int | None = None) -> list[torch.Tensor]:
    """Sentence embeddings [len(column), dim] of each column, differentiable, in the columns' own order."""
    rows = [ids for column in columns for ids in column.input_ids]
    if not rows:
        raise ValueError("embed_tokens: the batch has no texts")
    if any(len(r) == 0 for r in rows):
        raise ValueError("embed_tokens: a text has no tokens (the tokenizer returned an empty sequence)")
    runs = plan_length_runs([len(r) for r in rows], max_batch_tokens or DEFAULT_TRAIN_BATCH_TOKENS)
    packed, lengths = [], []
    for start, end in runs.bounds:
        tokens, counts = _run_backbone(model, [rows[i] for i in runs.order[start:end]])
        packed.append(tokens)
        lengths.append(counts)
    tokens = torch.cat(packed)
    cu_seqlens = torch.nn.functional.pad(torch.cat(lengths).cumsum(0), (1, 0)).to(torch.int64)
    head = model._head
    pooled = [_ops.masked_pool_varlen(tokens, cu_seqlens, mode, head.fuse_normalize) for mode in head.pooling.modes]
    x = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
    for stage in head.post:
        x = _ops.l2_normalize(x) if isinstance(stage, NormalizeModule) else stage(x)
    inverse = torch.empty(len(rows), dtype=torch.long)
    inverse[torch.tensor(runs.order)] = torch.arange(len(rows))
    x = x[inverse.to(x.device)]
    return list(x.split([len(c) for c in columns]))
