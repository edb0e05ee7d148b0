"""Thin wrappers over torch.ops.sentfuse.* and the fake kernels that let them trace under torch.compile."""

from __future__ import annotations

import warnings

import torch

from . import _C  # noqa: F401  (loading the library registers the ops)
from . import cpu_features

WITH_CUDA: bool = bool(_C.WITH_CUDA)

METRICS = ("cosine", "dot")


def _metric(op: str, metric: str, normalized: bool | None) -> str:
    """The metric to pass on; `normalized=` is the pre-0.2 spelling (True meant score by raw dot product)."""
    if normalized is None:
        return metric
    warnings.warn(
        f"{op}(normalized=...) is deprecated and will be removed in the next release; pass "
        f"metric='dot' (was normalized=True) or metric='cosine' (was normalized=False)",
        DeprecationWarning,
        stacklevel=3,
    )
    old = "dot" if normalized else "cosine"
    if metric != "cosine" and metric != old:
        raise TypeError(f"{op}: normalized={normalized} contradicts metric={metric!r}; pass metric only")
    return old


def _scored_input(op: str, name: str, x: object) -> torch.Tensor:
    """x as the scoring ops take it: a tensor (float64 scored in float32, as semantic_search does), or a
    TypeError naming the argument instead of the dispatcher's schema."""
    if not isinstance(x, torch.Tensor):
        hint = " (torch.from_numpy converts a numpy array)" if type(x).__module__.startswith("numpy") else ""
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}{hint}")
    return x.float() if x.dtype == torch.float64 else x


def masked_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """Pool hidden [B, L, H] over the tokens attention_mask [B, L] marks valid -> [B, H], hidden's dtype.

    mode: mean, max, cls, lasttoken, mean_sqrt_len_tokens or weightedmean (sentence-transformers'
    semantics; left- and right-padded batches). skip_tokens drops each row's first N valid tokens
    (a prompt, as include_prompt=False does). normalize fuses L2 normalization. A row with no valid
    token gives zeros.
    """
    return torch.ops.sentfuse.masked_pool.default(hidden, attention_mask, mode, normalize, skip_tokens)


def masked_pool_varlen(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str = "mean",
    normalize: bool = False,
    skip_tokens: int = 0,
) -> torch.Tensor:
    """masked_pool for packed tokens hidden [T, H]; sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]."""
    return torch.ops.sentfuse.masked_pool_varlen.default(hidden, cu_seqlens, mode, normalize, skip_tokens)


def l2_normalize(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Rows of x [N, D] scaled to unit L2 norm, keeping only the first `dim` features when given."""
    return torch.ops.sentfuse.l2_normalize.default(x, dim)


@torch.library.register_fake("sentfuse::masked_pool")
def _masked_pool_fake(hidden, attention_mask, mode, normalize=False, skip_tokens=0):
    torch._check(hidden.dim() == 3, lambda: f"masked_pool: hidden must be 3-D, got {hidden.dim()}-D")
    torch._check(attention_mask.dim() == 2, lambda: "masked_pool: attention_mask must be 2-D")
    return hidden.new_empty((hidden.shape[0], hidden.shape[2]))


@torch.library.register_fake("sentfuse::masked_pool_varlen")
def _masked_pool_varlen_fake(hidden, cu_seqlens, mode, normalize=False, skip_tokens=0):
    torch._check(hidden.dim() == 2, lambda: f"masked_pool_varlen: hidden must be 2-D, got {hidden.dim()}-D")
    return hidden.new_empty((cu_seqlens.shape[0] - 1, hidden.shape[1]))


@torch.library.register_fake("sentfuse::l2_normalize")
def _l2_normalize_fake(x, dim=None):
    torch._check(x.dim() == 2, lambda: f"l2_normalize: x must be 2-D, got {x.dim()}-D")
    return x.new_empty((x.shape[0], x.shape[1] if dim is None else dim))


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
    bf16_rescore: bool | None = None,
    normalized: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k of queries [M, D] against corpus [N, D] -> (scores fp32, indices int64) [M, min(k, N)].

    Best first; ties go to the lower index. Working memory is bounded by the tile size, never M x N.
    metric="dot" scores by the raw dot product (no norms: for unit-length inputs it is the cosine, or for
    dot-product models); "cosine" divides by both norms, zero vectors scoring 0. exclude_self drops pairs with
    i + query_offset == j + corpus_offset; min_score drops candidates scoring below it; a query left
    with fewer than min(k, N) candidates is padded with (-inf, -1). Returned indices are
    j + corpus_offset. bf16_rescore scores tiles in bfloat16 and rescores the candidates in fp32, so
    the answer stays exact; None (default): on CPU cpu_features.topk_bf16_default() decides (fp32 tiles
    unless enabled there or by SENTFUSE_CPU_TOPK=bf16), CUDA chooses by size; True / False force it.
    float64 inputs are scored in float32. NaN or inf in the inputs raises an error. normalized= is
    deprecated (normalized=True is metric="dot").
    """
    if bf16_rescore is None:
        bf16_rescore = queries.device.type == "cpu" and cpu_features.topk_bf16_default(len(queries))
    return torch.ops.sentfuse.cosine_topk.default(
        _scored_input("cosine_topk", "queries", queries), _scored_input("cosine_topk", "corpus", corpus), k,
        metric=_metric("cosine_topk", metric, normalized), exclude_self=exclude_self, min_score=min_score,
        query_offset=query_offset, corpus_offset=corpus_offset, bf16_rescore=bf16_rescore,
    )


@torch.library.register_fake("sentfuse::cosine_topk")
def _cosine_topk_fake(queries, corpus, k, *, metric="cosine", exclude_self=False, min_score=None,
                      query_offset=0, corpus_offset=0, bf16_rescore=False):
    torch._check(queries.dim() == 2 and corpus.dim() == 2, lambda: "cosine_topk: queries and corpus must be 2-D")
    k_out = min(k, corpus.shape[0])
    return (queries.new_empty((queries.shape[0], k_out), dtype=torch.float32),
            queries.new_empty((queries.shape[0], k_out), dtype=torch.int64))


def threshold_pairs(
    a: torch.Tensor,
    b: torch.Tensor | None,
    threshold: float,
    *,
    metric: str = "cosine",
    max_pairs: int | None = None,
    normalized: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (i, j) of a [N, D] and b [M, D] with cosine >= threshold -> (rows, cols int64, scores fp32) [P].

    Passing None as b compares a with itself and reports each pair once, i < j (b has no default:
    threshold_pairs(a, None, 0.9)). Pairs come sorted by (row, col)
    ascending, so the result is deterministic. Scores are computed in fp32 from the stored values:
    dot / (|a_i| |b_j|) with zero vectors scoring 0, or the plain dot product with metric="dot"
    (then threshold may be any finite value; otherwise it must lie in [-1, 1]). Work is done tile by
    tile, so memory grows with the number of pairs found, never N x M. When more than max_pairs pairs
    qualify, the max_pairs highest-scoring ones are kept (ties: smaller (row, col) first), still
    returned in (row, col) order. NaN or inf in the inputs raises an error. normalized= is deprecated
    (normalized=True is metric="dot").
    """
    return torch.ops.sentfuse.threshold_pairs.default(
        _scored_input("threshold_pairs", "a", a), None if b is None else _scored_input("threshold_pairs", "b", b),
        threshold, metric=_metric("threshold_pairs", metric, normalized), max_pairs=max_pairs
    )


@torch.library.register_fake("sentfuse::threshold_pairs")
def _threshold_pairs_fake(a, b, threshold, *, metric="cosine", max_pairs=None):
    torch._check(a.dim() == 2 and (b is None or b.dim() == 2), lambda: "threshold_pairs: a and b must be 2-D")
    pairs = torch.library.get_ctx().new_dynamic_size()
    return (a.new_empty((pairs,), dtype=torch.int64), a.new_empty((pairs,), dtype=torch.int64),
            a.new_empty((pairs,), dtype=torch.float32))


def pair_scores(
    a: torch.Tensor,
    b: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    metric: str = "cosine",
    normalized: bool | None = None,
) -> torch.Tensor:
    """Scores of listed pairs: a [N, D], b [M, D] (None: a itself), rows / cols [P] int64 -> scores [P] fp32.

    scores[p] is the cosine of a[rows[p]] and b[cols[p]] (zero vectors score 0), or their plain dot
    product with metric="dot", accumulated in fp32: what threshold_pairs would report for that pair.
    Out-of-range indices, NaN or inf in a listed row raise an error. normalized= is deprecated
    (normalized=True is metric="dot").
    """
    return torch.ops.sentfuse.pair_scores.default(
        a, b, rows, cols, metric=_metric("pair_scores", metric, normalized)
    )


@torch.library.register_fake("sentfuse::pair_scores")
def _pair_scores_fake(a, b, rows, cols, *, metric="cosine"):
    torch._check(rows.dim() == 1 and rows.shape == cols.shape, lambda: "pair_scores: rows and cols must be [P]")
    return a.new_empty(rows.shape, dtype=torch.float32)


def splade_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "relu",
    pooling: str = "max",
) -> torch.Tensor:
    """SPLADE vectors [B, V] fp32 from hidden [B, L, H] (after the MLM head's transform), the decoder
    weight [V, H] and bias [V].

    Each valid token's logits hidden @ weight.T + bias go through log1p(relu(x)) (activation "relu") or
    log1p(log1p(relu(x))) ("log1p_relu") and are pooled over the tokens attention_mask marks valid by
    "max" or "sum", as sentence-transformers' SpladePooling does. The vocabulary is projected tile by tile,
    so the [B, L, V] logits never exist; padding never contributes, and a row without valid tokens gives
    zeros. weight must have hidden's dtype; accumulation is fp32. NaN or inf in a valid token, the weight or
    the bias raises an error.
    """
    return torch.ops.sentfuse.splade_pool.default(hidden, attention_mask, weight, bias, activation, pooling)


def splade_pool_varlen(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "relu",
    pooling: str = "max",
) -> torch.Tensor:
    """splade_pool for packed tokens hidden [T, H]; sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]."""
    return torch.ops.sentfuse.splade_pool_varlen.default(hidden, cu_seqlens, weight, bias, activation, pooling)


@torch.library.register_fake("sentfuse::splade_pool")
def _splade_pool_fake(hidden, attention_mask, weight, bias=None, activation="relu", pooling="max"):
    torch._check(hidden.dim() == 3, lambda: f"splade_pool: hidden must be 3-D, got {hidden.dim()}-D")
    torch._check(weight.dim() == 2, lambda: f"splade_pool: weight must be 2-D, got {weight.dim()}-D")
    return hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=torch.float32)


@torch.library.register_fake("sentfuse::splade_pool_varlen")
def _splade_pool_varlen_fake(hidden, cu_seqlens, weight, bias=None, activation="relu", pooling="max"):
    torch._check(hidden.dim() == 2, lambda: f"splade_pool_varlen: hidden must be 2-D, got {hidden.dim()}-D")
    torch._check(weight.dim() == 2, lambda: f"splade_pool_varlen: weight must be 2-D, got {weight.dim()}-D")
    return hidden.new_empty((cu_seqlens.shape[0] - 1, weight.shape[0]), dtype=torch.float32)


# ---- Gradients: masked_pool, masked_pool_varlen and l2_normalize ------------------------------------------
# Each backward op recomputes what it needs (the pooled row, max's argmax, the norm) from the saved inputs, so
# autograd keeps nothing beyond them. Tie rule for max: a feature's gradient goes to the first valid token
# holding its maximum (reference.masked_pool's rule).


@torch.library.register_fake("sentfuse::masked_pool_backward")
def _masked_pool_backward_fake(grad_out, hidden, attention_mask, mode, normalize, skip_tokens):
    torch._check(hidden.dim() == 3, lambda: f"masked_pool_backward: hidden must be 3-D, got {hidden.dim()}-D")
    return hidden.new_empty(hidden.shape)


@torch.library.register_fake("sentfuse::masked_pool_varlen_backward")
def _masked_pool_varlen_backward_fake(grad_out, hidden, cu_seqlens, mode, normalize, skip_tokens):
    torch._check(hidden.dim() == 2, lambda: f"masked_pool_varlen_backward: hidden must be 2-D, got {hidden.dim()}-D")
    return hidden.new_empty(hidden.shape)


@torch.library.register_fake("sentfuse::l2_normalize_backward")
def _l2_normalize_backward_fake(grad_out, x, dim):
    torch._check(x.dim() == 2, lambda: f"l2_normalize_backward: x must be 2-D, got {x.dim()}-D")
    return x.new_empty(x.shape)


def _pool_setup_context(ctx, inputs, output):
    hidden, index, mode, normalize, skip_tokens = inputs  # index: attention_mask or cu_seqlens
    ctx.save_for_backward(hidden, index)
    ctx.pool_args = (mode, normalize, skip_tokens)


def _masked_pool_backward(ctx, grad):
    hidden, attention_mask = ctx.saved_tensors
    grad_hidden = torch.ops.sentfuse.masked_pool_backward.default(grad, hidden, attention_mask, *ctx.pool_args)
    return grad_hidden, None, None, None, None


def _masked_pool_varlen_backward(ctx, grad):
    hidden, cu_seqlens = ctx.saved_tensors
    grad_hidden = torch.ops.sentfuse.masked_pool_varlen_backward.default(grad, hidden, cu_seqlens, *ctx.pool_args)
    return grad_hidden, None, None, None, None


def _l2_normalize_setup_context(ctx, inputs, output):
    x, dim = inputs
    ctx.save_for_backward(x)
    ctx.dim = dim


def _l2_normalize_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.sentfuse.l2_normalize_backward.default(grad, x, ctx.dim), None


torch.library.register_autograd("sentfuse::masked_pool", _masked_pool_backward, setup_context=_pool_setup_context)
torch.library.register_autograd("sentfuse::masked_pool_varlen", _masked_pool_varlen_backward,
                                setup_context=_pool_setup_context)
torch.library.register_autograd("sentfuse::l2_normalize", _l2_normalize_backward,
                                setup_context=_l2_normalize_setup_context)


# ---- In-batch contrastive loss --------------------------------------------------------------------------------


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: float = 20.0,
    symmetric: bool = False,
) -> torch.Tensor:
    """In-batch contrastive loss of anchors [B, D] against candidates [B * (1 + n), D] -> 0-dim fp32 tensor.

    candidates holds each anchor's positive (row i for anchor i), then n blocks of B hard negatives. The loss
    is the mean cross-entropy of scale * cos(anchor i, every candidate) with label i (sentence-transformers'
    MultipleNegativesRankingLoss); symmetric=True averages it with that of scale * cos(positive i, every
    anchor) (MultipleNegativesSymmetricRankingLoss). Differentiable in both inputs; the [B, B * (1 + n)]
    logits are computed tile by tile and never kept for the backward pass, which recomputes them.
    """
    return torch.ops.sentfuse.contrastive_loss.default(anchors, candidates, scale, symmetric)[0]


@torch.library.register_fake("sentfuse::contrastive_loss")
def _contrastive_loss_fake(anchors, candidates, scale=20.0, symmetric=False):
    torch._check(anchors.dim() == 2 and candidates.dim() == 2,
                 lambda: "contrastive_loss: anchors and candidates must be 2-D")
    batch = anchors.shape[0]
    return (anchors.new_empty((), dtype=torch.float32), anchors.new_empty((batch,), dtype=torch.float32),
            anchors.new_empty((batch if symmetric else 0,), dtype=torch.float32))


@torch.library.register_fake("sentfuse::contrastive_loss_backward")
def _contrastive_loss_backward_fake(grad_loss, anchors, candidates, row_lse, col_lse, scale, symmetric):
    return anchors.new_empty(anchors.shape), candidates.new_empty(candidates.shape)


def _contrastive_loss_setup_context(ctx, inputs, output):
    anchors, candidates, scale, symmetric = inputs
    _, row_lse, col_lse = output
    ctx.mark_non_differentiable(row_lse, col_lse)  # by-products kept for the backward pass
    ctx.save_for_backward(anchors, candidates, row_lse, col_lse)
    ctx.loss_args = (scale, symmetric)


def _contrastive_loss_backward(ctx, grad_loss, _grad_row_lse, _grad_col_lse):
    anchors, candidates, row_lse, col_lse = ctx.saved_tensors
    grad_anchors, grad_candidates = torch.ops.sentfuse.contrastive_loss_backward.default(
        grad_loss, anchors, candidates, row_lse, col_lse, *ctx.loss_args
    )
    return grad_anchors, grad_candidates, None, None


torch.library.register_autograd("sentfuse::contrastive_loss", _contrastive_loss_backward,
                                setup_context=_contrastive_loss_setup_context)

def maxsim(
    queries: torch.Tensor,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    query_mask: torch.Tensor | None = None,
    score: str = "maxsim",
) -> torch.Tensor:
    """Late-interaction scores of queries [Q, L, D] against packed documents docs [T, D] -> [Q, N] fp32.

    Document n is rows cu_seqlens[n]:cu_seqlens[n+1] of docs (no padding; an empty document is an error).
    score="maxsim": for each query token (query_mask [Q, L] nonzero; None: all) the best dot product with
    the document's tokens, summed; "meanmaxsim": averaged over the query's valid tokens. Computed tile by
    tile: memory is O(tile), never [query tokens, document tokens]. NaN or inf in the inputs is an error.
    """
    return torch.ops.sentfuse.maxsim.default(queries, query_mask, docs, cu_seqlens, score=score)


def maxsim_topk(
    queries: torch.Tensor,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    k: int,
    *,
    query_mask: torch.Tensor | None = None,
    score: str = "maxsim",
    bf16_rescore: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best min(k, N) documents per query by maxsim -> (scores fp32, indices int64) [Q, min(k, N)], best
    first, ties to the lower index; exact. bf16_rescore (CPU, float32 inputs, AMX CPUs; elsewhere ignored)
    scores bf16 tiles with a provable error bound and rescores the candidates in fp32, so the answer stays
    exact; None (default): cpu_features.maxsim_bf16_default() decides on CPU."""
    if bf16_rescore is None:
        bf16_rescore = queries.device.type == "cpu" and cpu_features.maxsim_bf16_default()
    return torch.ops.sentfuse.maxsim_topk.default(queries, query_mask, docs, cu_seqlens, k, score=score,
                                                  bf16_rescore=bf16_rescore)


def maxsim_candidates(
    queries: torch.Tensor,
    docs: torch.Tensor,
    cu_seqlens: torch.Tensor,
    candidates: torch.Tensor,
    *,
    query_mask: torch.Tensor | None = None,
    score: str = "maxsim",
) -> torch.Tensor:
    """Query q against its own candidate documents candidates[q, :] (int64 ids) -> [Q, C] fp32 maxsim scores
    (the reranking form; query i vs document i is candidates = arange(Q)[:, None])."""
    return torch.ops.sentfuse.maxsim_candidates.default(queries, query_mask, docs, cu_seqlens, candidates,
                                                        score=score)


@torch.library.register_fake("sentfuse::maxsim")
def _maxsim_fake(queries, query_mask, docs, cu_seqlens, *, score="maxsim"):
    torch._check(queries.dim() == 3 and docs.dim() == 2, lambda: "maxsim: queries must be 3-D and docs 2-D")
    return queries.new_empty((queries.shape[0], cu_seqlens.shape[0] - 1), dtype=torch.float32)


@torch.library.register_fake("sentfuse::maxsim_topk")
def _maxsim_topk_fake(queries, query_mask, docs, cu_seqlens, k, *, score="maxsim", bf16_rescore=False):
    torch._check(queries.dim() == 3 and docs.dim() == 2, lambda: "maxsim_topk: queries must be 3-D and docs 2-D")
    k_out = min(k, cu_seqlens.shape[0] - 1)
    return (queries.new_empty((queries.shape[0], k_out), dtype=torch.float32),
            queries.new_empty((queries.shape[0], k_out), dtype=torch.int64))


@torch.library.register_fake("sentfuse::maxsim_candidates")
def _maxsim_candidates_fake(queries, query_mask, docs, cu_seqlens, candidates, *, score="maxsim"):
    torch._check(queries.dim() == 3 and docs.dim() == 2, lambda: "maxsim_candidates: queries must be 3-D")
    return queries.new_empty(tuple(candidates.shape), dtype=torch.float32)


def packed_attention(
    qkv: torch.Tensor,
    lengths: torch.Tensor,
    heads: int,
    scale: float,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Self-attention heads from a packed QKV product: qkv [rows, width, 3 * heads * head_size] (q, k, v, each heads
    x head_size), lengths [rows] (row r's tokens 0..lengths[r] - 1 valid) -> context [rows, width, heads *
    head_size] in out_dtype (float32 or qkv's dtype; None: qkv's), zeros at padded queries. On CPUs with AMX, bf16
    qkv and head sizes of whole tile depths (32, 64, 96, 128) run sentfuse's tile kernel (softmax in float32, the
    probabilities as two bf16 terms for P V); elsewhere SDPA runs."""
    return torch.ops.sentfuse.packed_attention.default(qkv, lengths, heads, scale, out_dtype=out_dtype)


@torch.library.register_fake("sentfuse::packed_attention")
def _packed_attention_fake(qkv, lengths, heads, scale, *, out_dtype=None):
    rows, width, packed = qkv.shape
    return qkv.new_empty((rows, width, packed // 3), dtype=out_dtype or qkv.dtype)


def smooth_quantize(
    x: torch.Tensor, inverse_smooth: torch.Tensor | None = None, *, per_row: bool = False, max_code: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The int8 compute mode's input quantization, in one pass for the range and one for the codes.

    x [..., K] float32, inverse_smooth [K] float32 (per-channel factors, None: ones) -> (codes [..., K] uint8,
    scale [] float32, zero_point [] int32): v = x * inverse_smooth, its range widened to hold 0 split into 255
    steps, codes = clamp(round(v / scale) + zero_point, 0, 255), so v ~ (codes - zero_point) * scale. per_row:
    each row of v [..., K] quantized from its own range, scale [...] and zero_point [...] (x's leading shape).
    max_code (1..255): codes in [0, max_code], max_code steps (127: 7-bit codes). Raises ValueError when v holds
    NaN or inf.
    """
    return torch.ops.sentfuse.smooth_quantize.default(x, inverse_smooth, per_row=per_row, max_code=max_code)


@torch.library.register_fake("sentfuse::smooth_quantize")
def _smooth_quantize_fake(x, inverse_smooth, *, per_row=False, max_code=255):
    torch._check(x.dim() >= 1, lambda: "smooth_quantize: x must be [..., K]")
    lead = x.shape[:-1] if per_row else ()
    return (x.new_empty(x.shape, dtype=torch.uint8), x.new_empty(lead, dtype=torch.float32),
            x.new_empty(lead, dtype=torch.int32))


# ---- Dropout --------------------------------------------------------------------------------------------------


def dropout(x: torch.Tensor, p: float, seed: int, residual: torch.Tensor | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """x * keep / (1 - p), plus residual when given, in dtype (default: x's type promoted with residual's).
    Element i (row-major) is kept when a hash of (seed, i) clears round(p * 2**32) (csrc/common/dropout_hash.h):
    the mask is a function of the seed, identical on every device, and nothing is stored for the backward."""
    return torch.ops.sentfuse.dropout.default(x, p, seed, residual, dtype)


@torch.library.register_fake("sentfuse::dropout")
def _dropout_fake(x, p, seed, residual=None, dtype=None):
    # A meta residual with a real x dispatches here: the device check the kernels share must hold here too.
    torch._check_value(residual is None or residual.device == x.device,
                       lambda: f"dropout: residual is on {residual.device} but x is on {x.device}")
    if dtype is None:
        dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return x.new_empty(x.shape, dtype=dtype)


def _dropout_setup_context(ctx, inputs, output):
    x, p, seed, residual, _ = inputs
    ctx.mask_args = (p, seed)
    ctx.dtypes = (x.dtype, None if residual is None else residual.dtype)


def _dropout_backward(ctx, grad):
    # The same mask from the same seed: the gradient of x is this op on the incoming gradient.
    x_dtype, residual_dtype = ctx.dtypes
    grad_x = torch.ops.sentfuse.dropout.default(grad, *ctx.mask_args, None, x_dtype)
    return grad_x, None, None, None if residual_dtype is None else grad.to(residual_dtype), None


torch.library.register_autograd("sentfuse::dropout", _dropout_backward, setup_context=_dropout_setup_context)
