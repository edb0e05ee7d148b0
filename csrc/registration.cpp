// Every sentfuse schema in one place. Implementations register per backend (TORCH_LIBRARY_IMPL) in the
// host files of cpu/ and cuda/; fake (meta) kernels are registered in python/sentfuse/_ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifdef SENTFUSE_WITH_AMX
#include "cpu/amx_tiles.h"
#endif

namespace sentfuse {
void bind_wordpiece(pybind11::module_& m);  // text/wordpiece.cpp
}

TORCH_LIBRARY(sentfuse, m) {
  // hidden [B, L, H], attention_mask [B, L] -> [B, H]
  m.def("masked_pool(Tensor hidden, Tensor attention_mask, str mode, bool normalize=False, int skip_tokens=0) "
        "-> Tensor");
  // hidden [T, H], cu_seqlens [B + 1] -> [B, H]
  m.def("masked_pool_varlen(Tensor hidden, Tensor cu_seqlens, str mode, bool normalize=False, "
        "int skip_tokens=0) -> Tensor");
  // x [N, D] -> [N, dim or D]
  m.def("l2_normalize(Tensor x, int? dim=None) -> Tensor");
  // metric: "cosine" (dot / (|a| |b|), zero vectors score 0) or "dot" (the raw dot product).
  // queries [M, D], corpus [N, D] -> (scores [M, min(k, N)] fp32, indices [M, min(k, N)] int64), best first.
  // Corpus row j is reported as j + corpus_offset; exclude_self drops i + query_offset == j + corpus_offset.
  m.def("cosine_topk(Tensor queries, Tensor corpus, int k, *, str metric=\"cosine\", bool exclude_self=False, "
        "float? min_score=None, int query_offset=0, int corpus_offset=0, bool bf16_rescore=False) "
        "-> (Tensor, Tensor)");
  // a [N, D], b [M, D] or None (a against itself, pairs i < j) -> (rows, cols int64, scores fp32) [P], every
  // pair scoring >= threshold, sorted by (row, col); max_pairs keeps the best ones (ties: smaller (row, col)).
  m.def("threshold_pairs(Tensor a, Tensor? b, float threshold, *, str metric=\"cosine\", int? max_pairs=None) "
        "-> (Tensor rows, Tensor cols, Tensor scores)");
  // a [N, D], b [M, D] or None (a against itself), rows / cols [P] int64 -> scores [P] fp32: the score of
  // each listed pair (a[rows[p]], b[cols[p]]), as threshold_pairs defines it. Rescores candidate pairs.
  m.def("pair_scores(Tensor a, Tensor? b, Tensor rows, Tensor cols, *, str metric=\"cosine\") -> Tensor");
  // hidden [B, L, H] (or packed [T, H] with cu_seqlens [B + 1]), weight [V, H], bias [V] -> [B, V] fp32: the
  // vocabulary logits of each valid token, activated (relu / log1p_relu) and pooled (max / sum) tile by tile.
  m.def("splade_pool(Tensor hidden, Tensor attention_mask, Tensor weight, Tensor? bias, str activation=\"relu\", "
        "str pooling=\"max\") -> Tensor");
  m.def("splade_pool_varlen(Tensor hidden, Tensor cu_seqlens, Tensor weight, Tensor? bias, str activation=\"relu\", "
        "str pooling=\"max\") -> Tensor");
  // Backward ops (registered as the autograd formulas in python/sentfuse/_ops.py): grad_out [B, H] -> the
  // gradient of hidden ([B, L, H] / [T, H], contiguous) or x ([N, D], zeros beyond dim). max sends each
  // feature's gradient to the first valid token holding the maximum.
  m.def("masked_pool_backward(Tensor grad_out, Tensor hidden, Tensor attention_mask, str mode, bool normalize, "
        "int skip_tokens) -> Tensor");
  m.def("masked_pool_varlen_backward(Tensor grad_out, Tensor hidden, Tensor cu_seqlens, str mode, bool normalize, "
        "int skip_tokens) -> Tensor");
  m.def("l2_normalize_backward(Tensor grad_out, Tensor x, int? dim) -> Tensor");
  // anchors [B, D], candidates [B * (1 + n), D] (positives, then n blocks of B hard negatives) -> (loss [] fp32,
  // row_lse [B] fp32, col_lse [B] fp32 when symmetric else [0]): the mean cross-entropy of scale * cos(anchor i,
  // candidates) with label i, averaged with that of scale * cos(positive i, anchors) when symmetric. The logits
  // are computed tile by tile and never kept; the backward op recomputes them from the saved logsumexps.
  m.def("contrastive_loss(Tensor anchors, Tensor candidates, float scale=20.0, bool symmetric=False) "
        "-> (Tensor loss, Tensor row_lse, Tensor col_lse)");
  m.def("contrastive_loss_backward(Tensor grad_loss, Tensor anchors, Tensor candidates, Tensor row_lse, "
        "Tensor col_lse, float scale, bool symmetric) -> (Tensor grad_anchors, Tensor grad_candidates)");
  // Late interaction. queries [Q, L, D] with query_mask [Q, L] (None: every token valid), docs packed [T, D]
  // with document n at rows cu_seqlens[n]:cu_seqlens[n + 1] (none empty). score "maxsim": for each valid query
  // token its best dot product with the document's tokens, summed; "meanmaxsim": averaged over the valid query
  // tokens. fp32 results. maxsim -> [Q, N]; maxsim_topk -> (scores [Q, min(k, N)], indices int64), best first,
  // ties to the lower index; maxsim_candidates: candidates [Q, C] int64 document ids -> [Q, C].
  m.def("maxsim(Tensor queries, Tensor? query_mask, Tensor docs, Tensor cu_seqlens, *, str score=\"maxsim\") "
        "-> Tensor");
  // bf16_rescore (CPU, fp32 inputs, AMX): bf16 score tiles with a provable bound, candidates rescored in fp32.
  m.def("maxsim_topk(Tensor queries, Tensor? query_mask, Tensor docs, Tensor cu_seqlens, int k, *, "
        "str score=\"maxsim\", bool bf16_rescore=False) -> (Tensor, Tensor)");
  m.def("maxsim_candidates(Tensor queries, Tensor? query_mask, Tensor docs, Tensor cu_seqlens, Tensor candidates, *, "
        "str score=\"maxsim\") -> Tensor");
  // Self-attention heads from a packed QKV product. qkv [rows, width, 3 * heads * head_size] (q, k, v, each heads x
  // head_size), lengths [rows]: row r's tokens 0..lengths[r] - 1 are valid (clamped to [0, width]) -> context
  // [rows, width, heads * head_size] in out_dtype (float32 or qkv's dtype; none: qkv's): softmax(scale q kᵀ) v over
  // the valid keys for each valid query, zeros at the padded queries.
  m.def("packed_attention(Tensor qkv, Tensor lengths, int heads, float scale, *, ScalarType? out_dtype=None) "
        "-> Tensor");
  // The int8 compute mode's input quantization. x [..., K] float32, inverse_smooth [K] float32 or None (ones) ->
  // (codes [..., K] uint8, scale [] float32, zero_point [] int32): v = x * inverse_smooth, its range widened to hold
  // 0 split into 255 steps, codes = clamp(round(v / scale) + zero_point, 0, 255) (ties to even).
  // per_row: each row of v its own range (scale and zero_point of x's leading shape); max_code: codes in
  // [0, max_code] (1..255), max_code steps.
  m.def("smooth_quantize(Tensor x, Tensor? inverse_smooth, *, bool per_row=False, int max_code=255) -> (Tensor codes, "
        "Tensor scale, Tensor zero_point)");
  // Training dropout. x [...] -> [...] (dtype: given, else x's promoted with residual's): x * keep / (1 - p),
  // plus residual when given; element i (row-major) is kept when dropout_bits(seed, i) >= round(p * 2^32)
  // (common/dropout_hash.h), so a seed repeats its mask on every device and the backward pass is this op
  // on the gradient with the same seed.
  m.def("dropout(Tensor x, float p, int seed, Tensor? residual=None, ScalarType? dtype=None) -> Tensor");
}

// Importing sentfuse._C loads this library, which runs the registrations above.
PYBIND11_MODULE(_C, m) {
  m.doc() = "sentfuse native ops (registered under torch.ops.sentfuse)";
#ifdef SENTFUSE_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  sentfuse::bind_wordpiece(m);
  // What scores the CPU's bf16 blocks in this process: "amx", "avx512_bf16" or "none" (cpu/amx_tiles.h), so
  // that the tests can hold cpu_features.bf16_block_unit() to the kernels' own choice.
  m.def("cpu_block_unit", [] {
#ifdef SENTFUSE_WITH_AMX
    switch (sentfuse::amx::block_unit()) {
      case sentfuse::amx::BlockUnit::kTiles: return "amx";
      case sentfuse::amx::BlockUnit::kVector: return "avx512_bf16";
      default: break;
    }
#endif
    return "none";
  });
}
