"""Batches for SparseEncoder.encode, planned by the dense encoder's rule (encode/plan.py): texts grouped by
token count, each batch within batch_size texts and max_batch_tokens padded tokens."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

import numpy as np
import torch

from ..encode.plan import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, BatchPlanner, ShapePolicy


def batch_policy(device: torch.device, batch_size: int | None, max_batch_tokens: int | None,
                 max_length: int) -> ShapePolicy:
    kind = "cuda" if device.type == "cuda" else "cpu"
    return ShapePolicy(batch_size=batch_size or DEFAULT_MAX_BATCH_SIZE[kind],
                       max_batch_tokens=max_batch_tokens or DEFAULT_BATCH_TOKENS[kind],
                       max_length=max_length, fixed_shapes=False)


def _pad(rows: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row):] = row
            else:
                out[i, : len(row)] = row
    return torch.from_numpy(out)


def planned_batches(encoded: dict[str, list[list[int]]], tokenizer: Any,
                    policy: ShapePolicy) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(positions [n], padded features [n, width]) for every batch of the tokenized texts."""
    ids = encoded["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    planner = BatchPlanner(policy)
    left = tokenizer.padding_side == "left"
    pads = {"input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
    for plan in chain(planner.add(0, lengths), planner.finish()):
        width = max(int(lengths[plan.positions].max()), 0) if len(plan.positions) else 0
        picked = plan.positions.tolist()
        features = {key: _pad([encoded[key][p] for p in picked], width, pad, left)
                    for key, pad in pads.items() if key in encoded}
        features["attention_mask"] = _pad([[1] * len(ids[p]) for p in picked], width, 0, left)
        yield plan.positions, features
