"""sentfuse's gradient clipping equals torch.nn.utils.clip_grad_norm_: norm and clipped gradients, with a
lookup table whose gradient is clipped by its batch rows alone, and with accumulated gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sentfuse.train.clipping import clip_grad_norm
from sentfuse.train.lookup_grad import gradient_rows, lookup


def _model_and_grads(accumulate: int, seed: int = 0):
    torch.manual_seed(seed)
    table, dense = nn.Embedding(200, 16), nn.Linear(16, 4)
    for _ in range(accumulate):
        ids = torch.randint(0, 200, (40,))
        ids[:3] = ids[3]  # repeated ids
        (dense(lookup(table, ids)) ** 2).sum().backward()
    return table, dense


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_equals_torchs(accumulate, max_norm):
    table, dense = _model_and_grads(accumulate)
    assert (gradient_rows(table.weight) is None) == (accumulate > 1), "rows are known for one backward pass only"
    params = [table.weight, *dense.parameters()]
    want_grads = [p.grad.clone() for p in params]
    want_norm = torch.nn.utils.clip_grad_norm_([p for p in params], max_norm)  # on clones below
    clipped = [p.grad.clone() for p in params]
    for p, g in zip(params, want_grads):
        p.grad.copy_(g)
    got_norm = clip_grad_norm(params, max_norm)
    torch.testing.assert_close(got_norm, want_norm)
    for p, want in zip(params, clipped):
        torch.testing.assert_close(p.grad, want)
    if max_norm < 1:
        assert got_norm > max_norm, "the case must clip"


def test_rows_are_exactly_the_non_zero_ones():
    table, _ = _model_and_grads(1)
    rows = gradient_rows(table.weight)
    nonzero = table.weight.grad.abs().sum(1).nonzero().flatten()
    assert torch.equal(rows, nonzero)


def test_no_gradients_clip_to_zero():
    assert clip_grad_norm([nn.Parameter(torch.ones(3))], 1.0).item() == 0.0
