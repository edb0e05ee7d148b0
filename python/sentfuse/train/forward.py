"""The differentiable forward of an Encoder: token ids of every input column -> sentence embeddings.

A BERT-family backbone runs packed (packed_backbone.py: every valid token of the batch in one call, no
padding); any other backbone takes the padded calls below.

The backbone runs in whatever mode the caller set (train() for dropout), one call per run of
near-equal-length texts (batching.py); the valid tokens of all runs are packed into one [T, H] tensor and
pooled by the masked_pool_varlen op, which never reads padding; Dense and Normalize follow as the
model folder lists them. Gradients reach the backbone and the Dense layers through sentfuse's ops.

When a batch takes several backbone calls, the token embeddings of all of them are looked up once and
handed to each call as inputs_embeds: each call's own lookup would build its own dense [vocab, hidden]
gradient in the backward pass (47 MB for MiniLM's), one more than a single padded call needs at its peak.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import _ops
from ..model.modules import NormalizeModule
from ..model.static import StaticBackbone
from .batching import DEFAULT_TRAIN_BATCH_TOKENS, plan_length_runs
from .packed_backbone import pack_rows, packed_forward, row_multiple, takes_packed

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


@dataclass
class TokenColumn:
    """One input column of a training batch: each text's token ids, unpadded and truncated."""

    input_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.input_ids)


def as_token_columns(sentence_features: Iterable[Any]) -> list[TokenColumn]:
    """A batch's columns as the losses take them: TokenColumns (tokenize_column, the trainer's collator), or
    sentence-transformers' tokenized features (a mapping with input_ids [B, L] and, for padded rows,
    attention_mask; a static model's packed input_ids [T] and offsets [N]), unpadded."""
    columns = []
    for i, features in enumerate(sentence_features):
        if isinstance(features, TokenColumn):
            columns.append(features)
        elif isinstance(features, Mapping) and "input_ids" in features and "offsets" in features:
            # a static model's packed features: every text's ids one after another [T], where each starts [N]
            flat = torch.as_tensor(features["input_ids"]).cpu().tolist()
            starts = torch.as_tensor(features["offsets"]).cpu().tolist()
            columns.append(TokenColumn([flat[a:b] for a, b in zip(starts, [*starts[1:], len(flat)])]))
        elif isinstance(features, Mapping) and "input_ids" in features:
            ids = torch.as_tensor(features["input_ids"]).cpu()
            mask = features.get("attention_mask")
            keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else torch.as_tensor(mask).cpu().bool()
            if ids.dim() != 2 or keep.shape != ids.shape:
                raise ValueError(f"column {i}: input_ids and attention_mask must be [batch, length] alike, got "
                                 f"{tuple(ids.shape)} and {tuple(keep.shape)}")
            columns.append(TokenColumn([row[m].tolist() for row, m in zip(ids, keep)]))
        else:
            raise TypeError(f"column {i} is {type(features).__name__}: a loss takes each column as "
                            "sentfuse.train.tokenize_column(model, texts) makes it, or a mapping with input_ids")
    return columns


def tokenize_column(model: Encoder, texts: list[str]) -> TokenColumn:
    """Each text's token ids as the model reads them: truncated, special tokens added (a static-embedding
    model's bag has none)."""
    if isinstance(model._model, StaticBackbone):
        packed = model.tokenize(list(texts))
        ids, starts = packed["input_ids"].tolist(), packed["offsets"].tolist()
        return TokenColumn([ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)])])
    return TokenColumn(model._tokenize_unpadded(list(texts))["input_ids"])


def _run_backbone(model: Encoder, rows: list[list[int]],
                  embeds: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-token hidden states [sum(len), H] of rows (in order) from one padded backbone call; with embeds
    (each row's looked-up token embeddings [len, H]) the backbone takes them instead of the ids (right padding)."""
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
    mask = mask.to(device)
    if embeds is None:
        inputs = dict(input_ids=ids.to(device))
    else:
        inputs = dict(inputs_embeds=torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True))
    hidden = model._model(**inputs, attention_mask=mask, return_dict=True).last_hidden_state
    return hidden[mask.bool()], mask.sum(dim=1)


# Backbones already probed by _takes_embeddings, with the answer.
_PROBED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _takes_embeddings(backbone: nn.Module) -> bool:
    """Whether backbone(inputs_embeds=lookup(ids)) equals backbone(input_ids=ids) on right-padded input,
    checked once per backbone with dropout off: a model that scales its embeddings or places its positions
    from the ids outside its lookup would differ, and keeps the ids path."""
    if backbone not in _PROBED:
        lookup = backbone.get_input_embeddings()
        # The vocabulary's last ids: ordinary tokens (a padding id as content would be placed as padding).
        ids = torch.arange(lookup.num_embeddings - 5, lookup.num_embeddings, device=lookup.weight.device).repeat(2, 1)
        mask = torch.ones_like(ids)
        mask[1, 3:] = 0
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                by_ids = backbone(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
                by_embeds = backbone(inputs_embeds=lookup(ids), attention_mask=mask, return_dict=True).last_hidden_state
            _PROBED[backbone] = bool(torch.allclose(by_ids[mask.bool()], by_embeds[mask.bool()], atol=1e-5, rtol=1e-4))
        except (TypeError, ValueError, AttributeError, NotImplementedError):
            _PROBED[backbone] = False
        finally:
            backbone.train(was_training)
    return _PROBED[backbone]


def _embeddings_once(model: Encoder, rows: list[list[int]]) -> list[torch.Tensor]:
    """Each row's token embeddings [len, H] from one lookup over the whole batch."""
    lookup = model._model.get_input_embeddings()
    flat = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=lookup.weight.device)
    return list(lookup(flat).split([len(r) for r in rows]))


def _padded_tokens(model: Encoder, rows: list[list[int]],
                   max_batch_tokens: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Valid-token hidden states [T, H] from padded backbone calls over runs of near-equal length, their
    cu_seqlens, and the order of rows they come in."""
    runs = plan_length_runs([len(r) for r in rows], max_batch_tokens)
    ordered = [rows[i] for i in runs.order]
    once = (len(runs.bounds) > 1 and model.tokenizer.padding_side != "left" and torch.is_grad_enabled()
            and _takes_embeddings(model._model))
    embeds = _embeddings_once(model, ordered) if once else None
    packed, lengths = [], []
    for start, end in runs.bounds:
        tokens, counts = _run_backbone(model, ordered[start:end], embeds[start:end] if once else None)
        packed.append(tokens)
        lengths.append(counts)
    cu_seqlens = torch.nn.functional.pad(torch.cat(lengths).cumsum(0), (1, 0)).to(torch.int64)
    return torch.cat(packed), cu_seqlens, runs.order


def _head_post(head: Any, x: torch.Tensor) -> torch.Tensor:
    """The head's modules after pooling (Dense, Normalize) on sentence embeddings x [N, D]."""
    for stage in head.post:
        x = _ops.l2_normalize(x) if isinstance(stage, NormalizeModule) else stage(x)
    return x


def embed_tokens(model: Encoder, columns: list[TokenColumn], max_batch_tokens: int | None = None) -> list[torch.Tensor]:
    """Sentence embeddings [len(column), dim] of each column, differentiable, in the columns' own order."""
    rows = [ids for column in columns for ids in column.input_ids]
    if not rows:
        raise ValueError("embed_tokens: the batch has no texts")
    head = model._head
    if isinstance(model._model, StaticBackbone):  # the bag of each text's rows: no positions, no padding
        lengths = torch.tensor([0] + [len(r) for r in rows], device=model.device)
        ids = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=model.device)
        return _head_post(head, model._model(ids, lengths.cumsum(0))).split([len(c) for c in columns])
    if any(len(r) == 0 for r in rows):
        raise ValueError("embed_tokens: a text has no tokens (the tokenizer returned an empty sequence)")
    order = None
    if model.tokenizer.padding_side != "left" and takes_packed(model._model):
        batch = pack_rows(rows, model.device, row_multiple(model.device))
        tokens, cu_seqlens = packed_forward(model._model, batch), batch.cu_seqlens
    else:
        tokens, cu_seqlens, order = _padded_tokens(model, rows, max_batch_tokens or DEFAULT_TRAIN_BATCH_TOKENS)
    pooled = [_ops.masked_pool_varlen(tokens, cu_seqlens, mode, head.fuse_normalize) for mode in head.pooling.modes]
    x = _head_post(head, pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1))
    if order is not None:
        inverse = torch.empty(len(rows), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(rows))
        x = x[inverse.to(x.device)]
    return list(x.split([len(c) for c in columns]))
