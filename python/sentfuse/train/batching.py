"""Which texts of a training batch share one backbone call.

Every input column of a loss batch (anchors, positives, negatives) is embedded together: the texts are
sorted by token count and cut into runs, each padded only to its own longest text. A run closes when
its padded tokens would pass the token budget, or when widening it to the next text would pad more
tokens than one extra backbone call costs. The embeddings go back to the batch's own order afterwards,
so the loss still sees every column whole and in-batch negatives come from the whole shuffled batch.
A packed (BERT-family) backbone takes the whole batch in one call and cuts only its attention grids this way.
"""

from __future__ import annotations

from dataclasses import dataclass

# Default padded-token budget of one backbone call in training (activations are kept for the backward
# pass, so smaller than encode's CPU default would allow on GPU memory, and no slower on CPU).
DEFAULT_TRAIN_BATCH_TOKENS = 8192
# What one more backbone call costs, in padded tokens: below this, padding a run wider is cheaper.
CALL_OVERHEAD_TOKENS = 256


@dataclass(frozen=True)
class LengthRuns:
    order: list[int]  # text indices, shortest first
    bounds: list[tuple[int, int]]  # [start, end) slices of order, one per backbone call


def plan_length_runs(lengths: list[int], max_batch_tokens: int = DEFAULT_TRAIN_BATCH_TOKENS) -> LengthRuns:
    """Runs of texts of near-equal length, each within max_batch_tokens padded tokens (a single text
    longer than the budget travels alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order):
            bounds.append((start, i))
            break
        rows, width, next_width = i - start, lengths[order[i - 1]], lengths[order[i]]
        over_budget = (rows + 1) * next_width > max_batch_tokens
        padding_costs_more = rows * (next_width - width) > CALL_OVERHEAD_TOKENS
        if over_budget or padding_costs_more:
            bounds.append((start, i))
            start = i
    return LengthRuns(order, bounds if lengths else [])
