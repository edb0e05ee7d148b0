"""Every bad argument to every op, on every device, raises a Python exception that names the argument.

The checks are shared by the CPU and CUDA entry points (csrc/common/checks.cpp); running the same table on
each device shows that no backend crashes or lets a bad argument through.
"""

from __future__ import annotations

import pytest
import torch

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops


def _cases(dev):
    t = lambda *shape, dtype=torch.float32: torch.randn(*shape).to(device=dev, dtype=dtype)  # noqa: E731
    ids = lambda *v: torch.tensor(v, device=dev)  # noqa: E731
    h, mask, x = t(2, 3, 8), torch.ones(2, 3, device=dev), t(3, 8)
    w, vb = t(20, 8), t(20)  # a SPLADE projection: weight [vocab, hidden], bias [vocab]
    other = "cpu" if dev != "cpu" else "meta"
    return [
        ("masked_pool mode", ValueError, "mode", lambda: _ops.masked_pool(h, mask, "median")),
        ("masked_pool hidden dim", ValueError, "hidden", lambda: _ops.masked_pool(h[0], mask, "mean")),
        ("masked_pool mask shape", ValueError, "attention_mask", lambda: _ops.masked_pool(h, mask[:, :2], "mean")),
        ("masked_pool dtype", TypeError, "hidden must be float32", lambda: _ops.masked_pool(h.double(), mask, "mean")),
        ("masked_pool mask complex", TypeError, "attention_mask",
         lambda: _ops.masked_pool(h, mask.to(torch.complex64), "mean")),
        ("masked_pool skip", ValueError, "skip_tokens", lambda: _ops.masked_pool(h, mask, "mean", False, -1)),
        ("masked_pool device", ValueError, "attention_mask is on", lambda: _ops.masked_pool(h, mask.to(other), "mean")),
        ("varlen hidden dim", ValueError, "hidden", lambda: _ops.masked_pool_varlen(h, ids(0, 3), "mean")),
        ("varlen offsets dtype", TypeError, "cu_seqlens",
         lambda: _ops.masked_pool_varlen(x, ids(0.0, 3.0), "mean")),
        ("varlen offsets shape", ValueError, "cu_seqlens",
         lambda: _ops.masked_pool_varlen(x, ids(0, 3)[:0], "mean")),
        ("varlen mode", ValueError, "mode", lambda: _ops.masked_pool_varlen(x, ids(0, 3), "sum")),
        ("varlen skip", ValueError, "skip_tokens", lambda: _ops.masked_pool_varlen(x, ids(0, 3), "mean", False, -2)),
        ("varlen device", ValueError, "cu_seqlens is on",
         lambda: _ops.masked_pool_varlen(x, ids(0, 3).to(other), "mean")),
        ("l2_normalize dim high", ValueError, "dim must be in", lambda: _ops.l2_normalize(x, 9)),
        ("l2_normalize dim zero", ValueError, "dim must be in", lambda: _ops.l2_normalize(x, 0)),
        ("l2_normalize rank", ValueError, "x must be", lambda: _ops.l2_normalize(h)),
        ("l2_normalize dtype", TypeError, "x must be float32", lambda: _ops.l2_normalize(x.long())),
        ("topk k", ValueError, "k must be", lambda: _ops.cosine_topk(x, x, -1)),
        ("topk metric", ValueError, "metric", lambda: _ops.cosine_topk(x, x, 1, metric="l2")),
        ("topk dim", ValueError, "same embedding dimension", lambda: _ops.cosine_topk(x, t(3, 7), 1)),
        ("topk rank", ValueError, "queries must be", lambda: _ops.cosine_topk(x[0], x, 1)),
        ("topk dtypes", TypeError, "queries are", lambda: _ops.cosine_topk(x, x.half(), 1)),
        ("topk dtype", TypeError, "queries must be float32", lambda: _ops.cosine_topk(x.int(), x.int(), 1)),
        ("topk min_score", ValueError, "min_score", lambda: _ops.cosine_topk(x, x, 1, min_score=float("nan"))),
        ("topk device", ValueError, "corpus is on", lambda: _ops.cosine_topk(x, x.to(other), 1)),
        ("topk non-finite", ValueError, "NaN or inf", lambda: _ops.cosine_topk(x, torch.full_like(x, float("nan")), 1)),
        ("pairs threshold", ValueError, "threshold", lambda: _ops.threshold_pairs(x, None, 1.5)),
        ("pairs threshold nan", ValueError, "threshold",
         lambda: _ops.threshold_pairs(x, None, float("nan"), metric="dot")),
        ("pairs metric", ValueError, "metric", lambda: _ops.threshold_pairs(x, None, 0.5, metric="cos")),
        ("pairs max_pairs", ValueError, "max_pairs", lambda: _ops.threshold_pairs(x, None, 0.5, max_pairs=-1)),
        ("pairs b dim", ValueError, "same embedding dimension", lambda: _ops.threshold_pairs(x, t(3, 7), 0.5)),
        ("pairs b dtype", TypeError, "b is", lambda: _ops.threshold_pairs(x, x.half(), 0.5)),
        ("pairs a rank", ValueError, "a must be", lambda: _ops.threshold_pairs(h, None, 0.5)),
        ("pairs device", ValueError, "b is on", lambda: _ops.threshold_pairs(x, x.to(other), 0.5)),
        ("pairs non-finite", ValueError, "NaN or inf",
         lambda: _ops.threshold_pairs(torch.full_like(x, float("inf")), None, 0.5)),
        ("pair_scores rows range", IndexError, "rows must lie", lambda: _ops.pair_scores(x, None, ids(3), ids(0))),
        ("pair_scores cols range", IndexError, "cols must lie", lambda: _ops.pair_scores(x, x[:2], ids(0), ids(2))),
        ("pair_scores negative", IndexError, "rows must lie", lambda: _ops.pair_scores(x, None, ids(-1), ids(0))),
        ("pair_scores rows dtype", TypeError, "rows must be int64",
         lambda: _ops.pair_scores(x, None, ids(0).int(), ids(0))),
        ("pair_scores lengths", ValueError, "same length", lambda: _ops.pair_scores(x, None, ids(0, 1), ids(0))),
        ("pair_scores rows rank", ValueError, "rows must be 1-D",
         lambda: _ops.pair_scores(x, None, ids(0).view(1, 1), ids(0).view(1, 1))),
        ("pair_scores metric", ValueError, "metric", lambda: _ops.pair_scores(x, None, ids(0), ids(1), metric="x")),
        ("pair_scores device", ValueError, "rows is on",
         lambda: _ops.pair_scores(x, None, ids(0).to(other), ids(1))),
        ("pair_scores non-finite", ValueError, "NaN or inf",
         lambda: _ops.pair_scores(torch.full_like(x, float("nan")), None, ids(0), ids(1))),
        ("splade weight shape", ValueError, "weight must be", lambda: _ops.splade_pool(h, mask, t(20, 7), vb)),
        ("splade bias shape", ValueError, "bias must be", lambda: _ops.splade_pool(h, mask, w, vb[:5])),
        ("splade weight dtype", TypeError, "weight must have hidden's dtype",
         lambda: _ops.splade_pool(h, mask, w.double(), vb)),
        ("splade hidden dtype", TypeError, "hidden must be float32",
         lambda: _ops.splade_pool(h.double(), mask, w.double(), vb)),
        ("splade bias dtype", TypeError, "bias must be float32", lambda: _ops.splade_pool(h, mask, w, vb.long())),
        ("splade activation", ValueError, "activation must be 'relu' or 'log1p_relu', got 'gelu'",
         lambda: _ops.splade_pool(h, mask, w, vb, "gelu")),
        ("splade pooling", ValueError, "pooling must be 'max' or 'sum', got 'mean'",
         lambda: _ops.splade_pool(h, mask, w, vb, "relu", "mean")),
        ("splade hidden rank", ValueError, "hidden must be", lambda: _ops.splade_pool(x, mask, w, vb)),
        ("splade mask shape", ValueError, "attention_mask must be", lambda: _ops.splade_pool(h, mask[:, :2], w, vb)),
        ("splade mask device", ValueError, "attention_mask is on",
         lambda: _ops.splade_pool(h, mask.to(other), w, vb)),
        ("splade weight device", ValueError, "weight is on", lambda: _ops.splade_pool(h, mask, w.to(other), vb)),
        ("splade non-finite", ValueError, "hidden holds NaN or inf",
         lambda: _ops.splade_pool(torch.full_like(h, float("nan")), mask, w, vb)),
        ("splade varlen decreasing", ValueError, "cu_seqlens must be non-decreasing",
         lambda: _ops.splade_pool_varlen(h[0], ids(0, 2, 1), w, vb)),
        ("splade varlen beyond", ValueError, "cu_seqlens must be non-decreasing",
         lambda: _ops.splade_pool_varlen(h[0], ids(0, 4), w, vb)),
        ("splade varlen offsets dtype", TypeError, "cu_seqlens must be int32",
         lambda: _ops.splade_pool_varlen(h[0], ids(0.0, 3.0), w, vb)),
        ("splade varlen hidden rank", ValueError, "hidden must be",
         lambda: _ops.splade_pool_varlen(h, ids(0, 3), w, vb)),
        ("splade varlen device", ValueError, "cu_seqlens is on",
         lambda: _ops.splade_pool_varlen(h[0], ids(0, 3).to(other), w, vb)),
    ]


CASE_NAMES = [name for name, *_ in _cases("cpu")]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_argument_raises_naming_it(device, case):  # noqa: F811
    if device == "cpu" and "device" in case:
        pytest.skip("a CPU tensor beside a meta tensor dispatches to the meta kernel, not the CPU checks")
    name, error, message, call = next(c for c in _cases(device) if c[0] == case)
    with pytest.raises(error, match=message):
        call()


def test_deprecated_normalized_keyword_still_works():
    x = torch.randn(5, 8)
    with pytest.warns(DeprecationWarning, match="metric='dot'"):
        old = _ops.cosine_topk(x, x, 2, normalized=True)
    new = _ops.cosine_topk(x, x, 2, metric="dot")
    assert all(torch.equal(o, n) for o, n in zip(old, new))
    with pytest.warns(DeprecationWarning):
        assert torch.equal(_ops.pair_scores(x, None, torch.tensor([0]), torch.tensor([1]), normalized=False),
                           _ops.pair_scores(x, None, torch.tensor([0]), torch.tensor([1])))
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="contradicts"):
        _ops.threshold_pairs(x, None, 0.5, metric="dot", normalized=False)


def test_scoring_ops_name_a_non_tensor_argument_and_take_float64():
    import numpy as np

    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"cosine_topk: corpus must be a torch.Tensor, got numpy.ndarray \(torch.from_numpy"):
        _ops.cosine_topk(x, x.numpy(), 3)
    with pytest.raises(TypeError, match="threshold_pairs: b must be a torch.Tensor, got builtins.list"):
        _ops.threshold_pairs(x, [[0.0] * 8], 0.5)
    # float64 is scored in float32, as semantic_search scores it.
    for got, want in ((_ops.cosine_topk(x.double(), x.double(), 3), _ops.cosine_topk(x, x, 3)),
                      (_ops.threshold_pairs(x.double(), None, 0.1), _ops.threshold_pairs(x, None, 0.1))):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
