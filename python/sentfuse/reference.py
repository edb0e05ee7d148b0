"""Plain-PyTorch versions of every sentfuse op: the oracle for tests and benchmarks.

Written for clarity, not speed. The semantics are those of sentence-transformers' Pooling and
Normalize modules, with one deliberate difference: a row with no valid token pools to zeros in every
mode (sentence-transformers gives -inf for max and token 0 for cls/lasttoken).

Valid tokens of a row: positions t with mask[t] != 0 and t >= first + skip_tokens, where first is
the row's first position with mask != 0 (so left-padded rows skip their padding before the prompt).
weightedmean weighs position t by t + 1 - first, as sentence-transformers does.

Every function here is differentiable and computes in fp32 (fp64 for fp64 input, so that
torch.autograd.gradcheck can check it); these gradients are the oracle for the kernels' backward ops.
max pooling sends each feature's gradient to the first valid token holding the maximum (torch.amax
would share it among ties), as the kernels do.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "max", "cls", "lasttoken", "mean_sqrt_len_tokens", "weightedmean")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the references compute in: fp32, or fp64 for fp64 input."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def valid_token_mask(attention_mask: torch.Tensor, skip_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid[B, L] bool, first[B] int64): which tokens a row pools, and where its first token sits."""
    present = attention_mask != 0
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len, device=attention_mask.device).unsqueeze(0)
    first = torch.where(present.any(dim=1), present.int().argmax(dim=1), seq_len)
    valid = present & (positions >= (first + skip_tokens).unsqueeze(1))
    return valid, first


def masked_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """hidden [B, L, H], attention_mask [B, L] -> [B, H] in hidden's dtype (fp32 arithmetic)."""
    if mode not in POOLING_MODES:
        raise ValueError(f"mode must be one of {POOLING_MODES}, got {mode!r}")
    x = hidden.to(compute_dtype(hidden))
    batch, seq_len, _ = x.shape
    if seq_len == 0:  # no token anywhere: every row is empty (a sum over no token, which keeps the graph)
        return hidden.sum(dim=1)
    valid, first = valid_token_mask(attention_mask, skip_tokens)
    count = valid.sum(dim=1, keepdim=True).float()
    positions = torch.arange(seq_len, device=x.device).unsqueeze(0)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total = (x * valid.unsqueeze(-1)).sum(dim=1)
        denom = count if mode == "mean" else count.sqrt()
        out = total / denom.clamp(min=1e-9)
    elif mode == "weightedmean":
        weights = (positions + 1 - first.unsqueeze(1)).float() * valid
        out = (x * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
    elif mode == "max":
        out = _first_max(x, valid, positions)
        out = torch.where(count > 0, out, torch.zeros_like(out))
    else:
        if mode == "cls":
            index = torch.where(valid, positions, seq_len).amin(dim=1)
        else:
            index = torch.where(valid, positions, -1).amax(dim=1)
        picked = x[torch.arange(batch, device=x.device), index.clamp(0, seq_len - 1)]
        out = torch.where(count > 0, picked, torch.zeros_like(picked))
    if normalize:
        out = torch.nn.functional.normalize(out, p=2.0, dim=-1)
    return out.to(hidden.dtype)


def _first_max(x: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, L, H] -> [B, H]: the max over valid tokens, gathered from the first token holding it so that the
    gradient goes there alone. A NaN maximum (no token equals it) is returned as is, without gradient."""
    filled = x.detach().masked_fill(~valid.unsqueeze(-1), float("-inf"))
    top = filled.amax(dim=1, keepdim=True)
    is_top = valid.unsqueeze(-1) & (filled == top)
    seq_len = x.shape[1]
    index = torch.where(is_top, positions.unsqueeze(-1), seq_len).amin(dim=1, keepdim=True)
    picked = x.gather(1, index.clamp(max=seq_len - 1)).squeeze(1)
    return torch.where(is_top.any(dim=1), picked, top.squeeze(1))


def _pad_varlen(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed tokens hidden [T, H] (sequence i at rows cu_seqlens[i]:cu_seqlens[i+1]) as a zero-padded
    batch [B, L, H] and its attention mask [B, L]."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    max_len = max(lengths, default=0)
    padded = hidden.new_zeros(len(lengths), max_len, hidden.shape[-1])
    mask = torch.zeros(len(lengths), max_len, dtype=torch.long, device=hidden.device)
    for i, (start, n) in enumerate(zip(cu_seqlens[:-1].tolist(), lengths)):
        padded[i, :n] = hidden[start : start + n]
        mask[i, :n] = 1
    return padded, mask


def masked_pool_varlen(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """Packed tokens hidden [T, H] with sequence i at rows cu_seqlens[i]:cu_seqlens[i+1] -> [B, H]."""
    return masked_pool(*_pad_varlen(hidden, cu_seqlens), mode, normalize, skip_tokens)


def l2_normalize(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Keep the first `dim` features of x [N, D] (all if None), then scale rows to unit L2 norm."""
    if dim is not None:
        x = x[..., :dim]
    return torch.nn.functional.normalize(x.to(compute_dtype(x)), p=2.0, dim=-1).to(x.dtype)


METRICS = ("cosine", "dot")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def pair_matrix(x: torch.Tensor, y: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """fp32 x [N, D], y [M, D] -> [N, M] scores: dot products, or cosines with zero vectors scoring 0."""
    _check_metric(metric)
    dots = x @ y.T
    if metric == "dot":
        return dots
    return torch.nan_to_num(dots / (x.norm(dim=1, keepdim=True) * y.norm(dim=1).unsqueeze(0)), nan=0.0)


def cosine_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    metric: str = "cosine",
    exclude_self: bool = False,
    min_score: float | None = None,
    query_offset: int = 0,
    corpus_offset: int = 0,
    bf16_rescore: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full [M, N] fp32 score matrix, then a stable sort (ties: lower index first).

    Returns (scores [M, min(k, N)] fp32, indices int64), best first; a query with fewer than min(k, N)
    candidates left by exclude_self / min_score is padded with score -inf and index -1.
    bf16_rescore is accepted for signature parity: the exact answer is the same either way.
    """
    q, c = queries.float(), corpus.float()
    scores = pair_matrix(q, c, metric)
    rows = torch.arange(q.shape[0], device=q.device).unsqueeze(1) + query_offset
    cols = torch.arange(c.shape[0], device=q.device).unsqueeze(0) + corpus_offset
    if exclude_self:
        scores = scores.masked_fill(rows == cols, float("-inf"))
    if min_score is not None:
        scores = scores.masked_fill(scores < min_score, float("-inf"))
    k_out = min(k, c.shape[0])
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    values, order = values[:, :k_out], order[:, :k_out]
    indices = torch.where(values == float("-inf"), -1, order + corpus_offset)
    return values, indices


def threshold_pairs(
    a: torch.Tensor,
    b: torch.Tensor | None,
    threshold: float,
    *,
    metric: str = "cosine",
    max_pairs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brute force: the full [N, M] fp32 score matrix, masked by score >= threshold (and i < j when b is None).

    Returns (rows int64, cols int64, scores fp32), sorted by (row, col). With max_pairs, the max_pairs
    highest scores are kept (ties: smaller (row, col) first), still in (row, col) order.
    """
    _check_metric(metric)
    if not (abs(threshold) <= 1.0 or (metric == "dot" and abs(threshold) < float("inf"))):
        raise ValueError(f"threshold must be finite, and in [-1, 1] unless metric='dot'; got {threshold}")
    x = a.float()
    y = x if b is None else b.float()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("threshold_pairs: inputs contain NaN or inf")
    scores = pair_matrix(x, y, metric)
    mask = scores >= threshold
    if b is None:
        mask = mask.triu(diagonal=1)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major: sorted by (row, col)
    values = scores[rows, cols]
    if max_pairs is not None and values.numel() > max_pairs:
        best = torch.sort(values, descending=True, stable=True).indices[:max_pairs]
        keep = best.sort().values
        rows, cols, values = rows[keep], cols[keep], values[keep]
    return rows, cols, values


def pair_scores(
    a: torch.Tensor,
    b: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    metric: str = "cosine",
) -> torch.Tensor:
    """Brute force: gather the listed rows and score each pair in fp32 (cosine, zero vectors scoring 0,
    or the dot product with metric="dot")."""
    _check_metric(metric)
    x = a.float()[rows]
    y = (a if b is None else b).float()[cols]
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("pair_scores: a or b contain NaN or inf in a listed row")
    dots = (x * y).sum(dim=1)
    if metric == "dot":
        return dots
    return torch.nan_to_num(dots / (x.norm(dim=1) * y.norm(dim=1)), nan=0.0)


SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
SPLADE_POOLINGS = ("max", "sum")


def splade_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "relu",
    pooling: str = "max",
) -> torch.Tensor:
    """The full [B, L, V] fp32 logits hidden @ weight.T + bias, log1p(relu(.)) (twice log1p for log1p_relu),
    zeroed at padding, then max or sum over tokens -> [B, V] fp32 (rows without valid tokens: zeros)."""
    if activation not in SPLADE_ACTIVATIONS:
        raise ValueError(f"activation must be one of {SPLADE_ACTIVATIONS}, got {activation!r}")
    if pooling not in SPLADE_POOLINGS:
        raise ValueError(f"pooling must be one of {SPLADE_POOLINGS}, got {pooling!r}")
    valid = attention_mask != 0
    finite = torch.isfinite(hidden[valid]).all() and torch.isfinite(weight).all()
    if not finite or (bias is not None and not torch.isfinite(bias).all()):
        raise ValueError("splade_pool: hidden (at a valid token), weight or bias holds NaN or inf")
    logits = hidden.float().masked_fill(~valid.unsqueeze(-1), 0) @ weight.float().T  # padding may hold anything
    if bias is not None:
        logits = logits + bias.float()
    x = torch.log1p(torch.relu(logits))
    if activation == "log1p_relu":
        x = torch.log1p(x)
    x = x * valid.unsqueeze(-1)  # activations are >= 0, so zeros never win a max
    return x.amax(dim=1) if pooling == "max" and x.shape[1] else x.sum(dim=1)


def splade_pool_varlen(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "relu",
    pooling: str = "max",
) -> torch.Tensor:
    """Packed tokens hidden [T, H] with sequence i at rows cu_seqlens[i]:cu_seqlens[i+1] -> [B, V]."""
    return splade_pool(*_pad_varlen(hidden, cu_seqlens), weight, bias, activation, pooling)


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: float = 20.0,
    symmetric: bool = False,
) -> torch.Tensor:
    """The plain formula: the whole [B, B * (1 + n)] matrix of scale * cosines, then cross-entropy with the
    diagonal as labels (averaged with the positives-vs-anchors direction when symmetric). 0-dim, fp32 (fp64 for
    fp64 input)."""
    batch = anchors.shape[0]
    if batch == 0 or candidates.shape[0] < batch or candidates.shape[0] % batch:
        raise ValueError(f"candidates must hold the {batch} positives then whole blocks of {batch} hard negatives, "
                         f"got {candidates.shape[0]} rows")
    dtype = compute_dtype(anchors)
    a = torch.nn.functional.normalize(anchors.to(dtype), p=2.0, dim=1)
    c = torch.nn.functional.normalize(candidates.to(dtype), p=2.0, dim=1)
    scores = scale * (a @ c.T)
    labels = torch.arange(batch, device=scores.device)
    loss = torch.nn.functional.cross_entropy(scores, labels)
    if symmetric:
        loss = (loss + torch.nn.functional.cross_entropy(scores[:, :batch].T, labels)) / 2
    return loss
MAXSIM_SCORES = ("maxsim", "meanmaxsim")


def maxsim(
    queries: torch.Tensor,
    query_mask: torch.Tensor | None,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    score: str = "maxsim",
) -> torch.Tensor:
    """queries [Q, L, D] (query_mask [Q, L], None: all valid) against packed docs [T, D] (document n at rows
    cu_seqlens[n]:cu_seqlens[n+1], none empty) -> [Q, N] fp32. For each valid query token the best dot
    product with the document's tokens (in the input dtype, as an einsum rounds it), summed in fp32
    ("maxsim") or averaged over the valid query tokens ("meanmaxsim"; a query without one scores 0)."""
    if score not in MAXSIM_SCORES:
        raise ValueError(f"maxsim: score must be one of {MAXSIM_SCORES}, got {score!r}")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if len(lengths) and int(lengths.min()) <= 0:
        raise ValueError("maxsim: every document needs at least one token (cu_seqlens)")
    valid = torch.ones(queries.shape[:2], dtype=torch.bool) if query_mask is None else query_mask != 0
    valid = valid.to(queries.device)
    if not torch.isfinite(queries[valid]).all() or not torch.isfinite(docs).all():
        raise ValueError("maxsim: queries or docs contain NaN or inf")
    padded, doc_mask = _pad_varlen(docs, cu_seqlens)
    sims = torch.einsum("qsd,ntd->qnst", queries, padded)
    sims = sims.masked_fill(doc_mask[None, :, None, :] == 0, float("-inf"))
    best = sims.amax(dim=-1).float() if sims.shape[-1] else sims.new_zeros(sims.shape[:-1]).float()
    out = torch.where(valid[:, None, :], best, 0.0).sum(dim=-1)
    if score == "meanmaxsim":
        out = out / valid.sum(dim=-1, keepdim=True).clamp(min=1)
    return out


def maxsim_topk(
    queries: torch.Tensor,
    query_mask: torch.Tensor | None,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    k: int,
    *,
    score: str = "maxsim",
    bf16_rescore: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best min(k, N) documents per query by maxsim: (scores fp32, indices int64) [Q, min(k, N)], best
    first, ties to the lower index. bf16_rescore is accepted for signature parity: the exact answer is the same."""
    if k < 0:
        raise ValueError(f"maxsim_topk: k must be >= 0, got {k}")
    scores = maxsim(queries, query_mask, docs, cu_seqlens, score=score)
    n = scores.shape[1]
    # A stable sort of the negated scores keeps equal scores in index order.
    order = torch.sort(-scores, dim=1, stable=True).indices[:, : min(k, n)]
    return scores.gather(1, order), order


def maxsim_candidates(
    queries: torch.Tensor,
    query_mask: torch.Tensor | None,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    candidates: torch.Tensor,
    *,
    score: str = "maxsim",
) -> torch.Tensor:
    """Query q against its own candidate documents candidates[q] (int64 ids) -> [Q, C] fp32 maxsim scores."""
    n = cu_seqlens.shape[0] - 1
    if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= n):
        raise IndexError(f"maxsim_candidates: candidates must lie in [0, {n})")
    return maxsim(queries, query_mask, docs, cu_seqlens, score=score).gather(1, candidates)


def packed_attention(qkv: torch.Tensor, lengths: torch.Tensor, heads: int, scale: float, *,
                     out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Self-attention heads of a packed QKV product in float32: softmax(scale q kᵀ) v over each row's valid keys
    (positions < lengths[row]) for each valid query; padded queries, and every query of a row without valid keys,
    get zeros."""
    rows, width, packed = qkv.shape
    head_size = packed // (3 * heads)
    q, k, v = qkv.float().view(rows, width, 3, heads, head_size).permute(2, 0, 3, 1, 4)
    valid = torch.arange(width, device=qkv.device)[None] < lengths.to(qkv.device, torch.int64)[:, None]
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # no valid key: a row of NaN, zeroed below anyway
    context = (probs @ v).transpose(1, 2).reshape(rows, width, heads * head_size)
    return context.masked_fill(~valid[..., None], 0.0).to(out_dtype or qkv.dtype)


def smooth_quantize(
    x: torch.Tensor, inverse_smooth: torch.Tensor | None = None, *, per_row: bool = False, max_code: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The range of v = x * inverse_smooth (per_row: of each row of v, scale and zero point of x's leading shape),
    widened to hold 0, in max_code steps; codes round(v / step) + zero point (ties to even), clamped to
    [0, max_code]; all in float32 as the kernels compute it."""
    if x.dtype != torch.float32 or x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError("smooth_quantize: x must be float32 [..., K] with K >= 1")
    if not 1 <= max_code <= 255:
        raise ValueError(f"smooth_quantize: max_code must be in [1, 255], got {max_code}")
    v = x if inverse_smooth is None else x * inverse_smooth
    if v.numel() and not torch.isfinite(v).all():
        raise ValueError("smooth_quantize: x (times inverse_smooth) contains NaN or inf")
    if per_row:
        rows = v.reshape(-1, v.shape[-1])
        parts = [smooth_quantize(row, max_code=max_code) for row in rows]
        lead = v.shape[:-1]
        if not parts:
            return (torch.empty(v.shape, dtype=torch.uint8), torch.empty(lead), torch.empty(lead, dtype=torch.int32))
        codes, scales, zeros = (torch.stack(t) for t in zip(*parts))
        return codes.reshape(v.shape), scales.reshape(lead), zeros.reshape(lead)
    zero = torch.zeros((), dtype=torch.float32)
    lo = torch.minimum(v.min(), zero) if v.numel() else zero
    hi = torch.maximum(v.max(), zero) if v.numel() else zero
    scale = (hi - lo) / max_code
    if not (scale > 0 and torch.isfinite(1 / scale)):
        scale = torch.ones((), dtype=torch.float32)
    zero_point = torch.round(-lo / scale).clamp(0, max_code)
    t = (v * (1 / scale)).clamp(-512, 512).round()
    codes = (t + zero_point).clamp(0, max_code).to(torch.uint8)
    return codes, scale, zero_point.to(torch.int32)


_U32 = 0xFFFFFFFF


def _mul_u32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 x holding 32-bit values, in 16-bit halves so nothing overflows int64."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _U32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul_u32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul_u32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_bits(seed: int, numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[numel] int64: the 32 mask bits of elements 0..numel-1 under seed (csrc/common/dropout_hash.h)."""
    seed &= 0xFFFFFFFFFFFFFFFF
    index = torch.arange(numel, dtype=torch.int64, device=device)
    first = _lowbias32((index & _U32) ^ (seed & _U32))
    return _lowbias32(first ^ (seed >> 32) ^ _mul_u32(index >> 32, 0x9E3779B9))


def dropout(x: torch.Tensor, p: float, seed: int, residual: torch.Tensor | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """x * keep / (1 - p) (+ residual) in dtype (default: x's promoted with residual's), element i (row-major)
    kept when dropout_bits(seed, i) >= round(p * 2**32); arithmetic in float32."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if dtype is None:
        dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    threshold = int(p * 2**32 + 0.5)
    keep = (dropout_bits(seed, x.numel(), x.device) >= threshold).view(x.shape)
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1.0 else 0.0, dtype=compute_dtype(x))
    out = torch.where(keep, x.to(scale.dtype) * scale, 0.0)
    if residual is not None:
        out = out + residual.to(dtype).to(scale.dtype)
    return out.to(dtype)
