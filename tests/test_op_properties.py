"""Property tests: every op against sentfuse.reference on random inputs (hypothesis), on every device.

Shapes include 0 and 1, inputs come with odd strides and storage offsets, every dtype, both padding sides,
NaN / inf placed in valid and padded positions, k around N and thresholds at +-1. Examples are few per op
(MAX_EXAMPLES) so that the whole file stays within seconds on two cores; hypothesis shrinks a failure to a
minimal input.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_devices import device  # noqa: F401  (fixture)
from sentfuse import _ops, reference
from test_pairs import assert_same_pairs
from test_pooling import TOL
from test_topk import assert_same_topk

# Fewer under the sanitizers (make sanitize), where every example runs several times slower.
MAX_EXAMPLES = int(os.environ.get("SENTFUSE_PROPERTY_EXAMPLES", "200"))
PROPERTY = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@st.composite
def laid_out(draw, shape, dtype, values=None):
    """A tensor of `shape` on CPU with a random layout: contiguous, a storage offset, or strided rows."""
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    full = list(shape)
    layout = draw(st.sampled_from(["contiguous", "offset", "strided"]))
    if layout == "strided" and full:
        full[0] *= 2
    if layout == "offset" and full:
        full[-1] += 1
    data = torch.randn(*full, generator=g) if values is None else torch.randint(-values, values + 1, full, generator=g)
    data = data.to(dtype)
    if layout == "strided" and full:
        data = data[::2]
    if layout == "offset" and full:
        data = data[..., 1:]
    return data


def place_non_finite(draw, x, where):
    """Writes one NaN / inf / -inf into x at a position drawn from `where` (a bool mask of candidates)."""
    positions = where.nonzero()
    if len(positions) == 0:
        return None
    pos = tuple(positions[draw(st.integers(0, len(positions) - 1))].tolist())
    x[pos] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return pos


@st.composite
def pooling_case(draw):
    batch, seq_len, hidden = draw(st.integers(0, 4)), draw(st.integers(0, 9)), draw(st.integers(1, 40))
    dtype = draw(DTYPES)
    x = draw(laid_out((batch, seq_len, hidden), dtype)).clone()
    lengths = [draw(st.integers(0, seq_len)) for _ in range(batch)]
    left = draw(st.booleans())
    pos = torch.arange(seq_len).unsqueeze(0)
    lengths_t = torch.tensor(lengths, dtype=torch.long).view(batch, 1)
    mask = (pos >= seq_len - lengths_t) if left else (pos < lengths_t)
    if draw(st.booleans()) and batch and seq_len:  # holes inside a row
        mask[0, draw(st.integers(0, seq_len - 1))] = False
    if draw(st.booleans()) and batch and seq_len and hidden:  # NaN / inf in a padded position is never read
        place_non_finite(draw, x, (~mask).unsqueeze(-1).expand_as(x))
    return x, mask.long(), draw(st.sampled_from(reference.POOLING_MODES)), draw(st.booleans()), \
        draw(st.integers(0, 4))


@PROPERTY
@given(case=pooling_case())
def test_masked_pool_property(device, case):  # noqa: F811
    hidden, mask, mode, normalize, skip = case
    got = _ops.masked_pool(hidden.to(device), mask.to(device), mode, normalize, skip)
    clean = hidden.masked_fill(mask.unsqueeze(-1) == 0, 0)  # padding is never read, whatever it holds
    expected = reference.masked_pool(clean, mask, mode, normalize, skip)
    torch.testing.assert_close(got.cpu().float(), expected.float(), equal_nan=True, **TOL[hidden.dtype])


@PROPERTY
@given(lengths=st.lists(st.integers(0, 6), max_size=4), hidden=st.integers(1, 24), dtype=DTYPES,
       mode=st.sampled_from(reference.POOLING_MODES), normalize=st.booleans(), skip=st.integers(0, 3),
       offsets_dtype=st.sampled_from([torch.int32, torch.int64]), data=st.data())
def test_masked_pool_varlen_property(device, lengths, hidden, dtype, mode, normalize, skip, offsets_dtype,  # noqa: F811
                                     data):
    x = data.draw(laid_out((sum(lengths), hidden), dtype))
    cu = torch.tensor([0] + lengths).cumsum(0)
    got = _ops.masked_pool_varlen(x.to(device), cu.to(device, offsets_dtype), mode, normalize, skip)
    expected = reference.masked_pool_varlen(x, cu, mode, normalize, skip)
    torch.testing.assert_close(got.cpu().float(), expected.float(), **TOL[dtype])


@PROPERTY
@given(rows=st.integers(0, 5), features=st.integers(1, 40), dtype=DTYPES, data=st.data())
def test_l2_normalize_property(device, rows, features, dtype, data):  # noqa: F811
    x = data.draw(laid_out((rows, features), dtype))
    dim = data.draw(st.none() | st.integers(1, features))
    got = _ops.l2_normalize(x.to(device), dim)
    torch.testing.assert_close(got.cpu().float(), reference.l2_normalize(x, dim).float(), **TOL[dtype])


# Small integer values: exact dot products, many exact ties and zero vectors.
@PROPERTY
@given(m=st.integers(0, 5), n=st.integers(0, 12), dim=st.integers(1, 9), dtype=DTYPES,
       metric=st.sampled_from(["cosine", "dot"]), exclude_self=st.booleans(), data=st.data())
def test_cosine_topk_property(device, m, n, dim, dtype, metric, exclude_self, data):  # noqa: F811
    queries = data.draw(laid_out((m, dim), dtype, values=3))
    corpus = data.draw(laid_out((n, dim), dtype, values=3))
    k = data.draw(st.integers(0, n + 2))  # around N
    # Cutoffs off every exact score of small-integer rows: a score equal to the cutoff may round either way.
    min_score = data.draw(st.none() | st.sampled_from([-1.5, -0.2487, 0.0013, 0.5013, 0.9991]))
    offsets = dict(query_offset=data.draw(st.integers(0, 3)), corpus_offset=data.draw(st.integers(0, 3)))
    kw = dict(metric=metric, exclude_self=exclude_self, min_score=min_score, **offsets)
    got = _ops.cosine_topk(queries.to(device), corpus.to(device), k, bf16_rescore=data.draw(st.booleans()), **kw)
    assert_same_topk(tuple(t.cpu() for t in got), reference.cosine_topk(queries, corpus, k, **kw), atol=1e-5)


@PROPERTY
@given(n=st.integers(0, 9), m=st.none() | st.integers(0, 9), dim=st.integers(1, 6), dtype=DTYPES,
       metric=st.sampled_from(["cosine", "dot"]), data=st.data())
def test_threshold_pairs_property(device, n, m, dim, dtype, metric, data):  # noqa: F811
    a = data.draw(laid_out((n, dim), dtype, values=2))
    b = None if m is None else data.draw(laid_out((m, dim), dtype, values=2))
    threshold = data.draw(st.sampled_from([-1.0, 1.0, 0.5, 0.0]) if metric == "cosine"
                          else st.sampled_from([-4.0, 0.0, 1.0, 3.0]))
    max_pairs = data.draw(st.none() | st.integers(0, 6))
    got = _ops.threshold_pairs(a.to(device), None if b is None else b.to(device), threshold, metric=metric,
                               max_pairs=max_pairs)
    assert_same_pairs(got, a, b, threshold, metric=metric, max_pairs=max_pairs)


@PROPERTY
@given(n=st.integers(1, 7), m=st.none() | st.integers(1, 7), dim=st.integers(1, 33), pairs=st.integers(0, 9),
       dtype=DTYPES, metric=st.sampled_from(["cosine", "dot"]), data=st.data())
def test_pair_scores_property(device, n, m, dim, pairs, dtype, metric, data):  # noqa: F811
    a = data.draw(laid_out((n, dim), dtype))
    b = None if m is None else data.draw(laid_out((m, dim), dtype))
    rows = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=pairs, max_size=pairs)), dtype=torch.long)
    cols = torch.tensor(data.draw(st.lists(st.integers(0, (m or n) - 1), min_size=pairs, max_size=pairs)),
                        dtype=torch.long)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    got = _ops.pair_scores(move(a), move(b), move(rows), move(cols), metric=metric)
    expected = reference.pair_scores(a, b, rows, cols, metric=metric)
    scale = 1.0 if metric == "cosine" else float(dim)
    torch.testing.assert_close(got.cpu(), expected, atol=2e-5 * scale, rtol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 6), dim=st.integers(1, 8), data=st.data())
def test_non_finite_inputs_raise(device, n, dim, data):  # noqa: F811
    x = data.draw(laid_out((n, dim), torch.float32)).clone()
    place_non_finite(data.draw, x, torch.ones_like(x, dtype=torch.bool))
    x_dev = x.to(device)
    with pytest.raises(ValueError, match="NaN or inf"):
        _ops.cosine_topk(x_dev, x_dev, 1)
    if n >= 2:
        with pytest.raises(ValueError, match="NaN or inf"):
            _ops.threshold_pairs(x_dev, x_dev, 0.5)
