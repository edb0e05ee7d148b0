// The one definition of every argument check (see checks.h for why this file is C++-compiler only).
#include "common/message.h"
#include "common/checks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include <ATen/ATen.h>

#include "common/bounds.h"

namespace sentfuse {

void throw_value_error(const char* func, const char* file, uint32_t line, std::string msg) {
  throw c10::ValueError({func, file, line}, std::move(msg));
}
void throw_type_error(const char* func, const char* file, uint32_t line, std::string msg) {
  throw c10::TypeError({func, file, line}, std::move(msg));
}
void throw_index_error(const char* func, const char* file, uint32_t line, std::string msg) {
  throw c10::IndexError({func, file, line}, std::move(msg));
}

namespace {

PoolMode parse_pool_mode(const char* op, c10::string_view mode) {
  if (mode == "mean") return PoolMode::Mean;
  if (mode == "max") return PoolMode::Max;
  if (mode == "cls") return PoolMode::Cls;
  if (mode == "lasttoken") return PoolMode::LastToken;
  if (mode == "mean_sqrt_len_tokens") return PoolMode::MeanSqrtLen;
  if (mode == "weightedmean") return PoolMode::WeightedMean;
  SENTFUSE_CHECK_VALUE(false, op, ": mode must be one of mean, max, cls, lasttoken, mean_sqrt_len_tokens, "
                    "weightedmean; got '", std::string(mode), "'");
}

Metric parse_metric(const char* op, c10::string_view metric) {
  if (metric == "cosine") return Metric::Cosine;
  if (metric == "dot") return Metric::Dot;
  SENTFUSE_CHECK_VALUE(false, op, ": metric must be 'cosine' or 'dot', got '", std::string(metric), "'");
}

void check_float_input(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  SENTFUSE_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", dt);
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  SENTFUSE_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

void check_skip_tokens(const char* op, int64_t skip_tokens) {
  SENTFUSE_CHECK_VALUE(skip_tokens >= 0, op, ": skip_tokens must be >= 0, got ", skip_tokens);
}

// a [N, D] and b [M, D] (or none: a against itself): 2-D float matrices of one dtype, dimension and device.
void check_pair_matrices(const char* op, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  SENTFUSE_CHECK_VALUE(a.dim() == 2, op, ": a must be [rows, dim], got shape ", a.sizes());
  check_float_input(op, "a", a);
  if (!b.has_value()) return;
  SENTFUSE_CHECK_VALUE(b->dim() == 2, op, ": b must be [rows, dim], got shape ", b->sizes());
  SENTFUSE_CHECK_VALUE(a.size(1) == b->size(1), op, ": a ", a.sizes(), " and b ", b->sizes(),
                    " must have the same embedding dimension");
  check_float_input(op, "b", *b);
  SENTFUSE_CHECK_TYPE(a.scalar_type() == b->scalar_type(), op, ": a is ", a.scalar_type(), " but b is ",
                   b->scalar_type());
  check_same_device(op, "b", *b, "a", a);
}

SpladeActivation parse_activation(const char* op, c10::string_view activation) {
  if (activation == "relu") return SpladeActivation::Relu;
  if (activation == "log1p_relu") return SpladeActivation::Log1pRelu;
  SENTFUSE_CHECK_VALUE(false, op, ": activation must be 'relu' or 'log1p_relu', got '", std::string(activation), "'");
}

SpladePooling parse_splade_pooling(const char* op, c10::string_view pooling) {
  if (pooling == "max") return SpladePooling::Max;
  if (pooling == "sum") return SpladePooling::Sum;
  SENTFUSE_CHECK_VALUE(false, op, ": pooling must be 'max' or 'sum', got '", std::string(pooling), "'");
}

// weight [V, H] with H = hidden's last dim, hidden's dtype and device; bias [V] or none.
SpladeArgs check_splade_projection(const char* op, const at::Tensor& hidden, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, c10::string_view activation,
                                   c10::string_view pooling) {
  check_float_input(op, "hidden", hidden);
  const int64_t H = hidden.size(-1);
  SENTFUSE_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == H, op, ": weight must be [vocab, hidden] = [V, ", H,
                    "] to match hidden ", hidden.sizes(), ", got ", weight.sizes());
  SENTFUSE_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), op, ": weight must have hidden's dtype ",
                   hidden.scalar_type(), ", got ", weight.scalar_type());
  check_same_device(op, "weight", weight, "hidden", hidden);
  if (bias.has_value()) {
    SENTFUSE_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [vocab] = [",
                      weight.size(0), "] to match weight ", weight.sizes(), ", got ", bias->sizes());
    check_float_input(op, "bias", *bias);
    check_same_device(op, "bias", *bias, "hidden", hidden);
  }
  return {parse_activation(op, activation), parse_splade_pooling(op, pooling)};
}

}  // namespace

PoolMode check_masked_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, c10::string_view mode,
                                int64_t skip_tokens) {
  constexpr const char* op = "masked_pool";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 3, op, ": hidden must be [batch, seq, hidden], got shape ", hidden.sizes());
  SENTFUSE_CHECK_VALUE(attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
                        attention_mask.size(1) == hidden.size(1),
                    op, ": attention_mask must be [batch, seq] = [", hidden.size(0), ", ", hidden.size(1),
                    "] to match hidden ", hidden.sizes(), ", got ", attention_mask.sizes());
  check_float_input(op, "hidden", hidden);
  SENTFUSE_CHECK_TYPE(!attention_mask.is_complex(), op, ": attention_mask must be integer, bool or float, got ",
                   attention_mask.scalar_type());
  check_same_device(op, "attention_mask", attention_mask, "hidden", hidden);
  check_skip_tokens(op, skip_tokens);
  return parse_pool_mode(op, mode);
}

PoolMode check_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens, c10::string_view mode,
                           int64_t skip_tokens) {
  constexpr const char* op = "masked_pool_varlen";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 2, op, ": hidden must be [total_tokens, hidden], got shape ", hidden.sizes());
  check_float_input(op, "hidden", hidden);
  SENTFUSE_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
                    ": cu_seqlens must be [batch + 1] offsets, got shape ", cu_seqlens.sizes());
  SENTFUSE_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
                   ": cu_seqlens must be int32 or int64, got ", cu_seqlens.scalar_type());
  check_same_device(op, "cu_seqlens", cu_seqlens, "hidden", hidden);
  check_skip_tokens(op, skip_tokens);
  return parse_pool_mode(op, mode);
}

void check_varlen_offsets(const int64_t* offsets, int64_t batch, int64_t total_tokens, const char* op) {
  for (int64_t b = 0; b < batch; ++b) {
    SENTFUSE_CHECK_VALUE(offsets[b] >= 0 && offsets[b] <= offsets[b + 1] && offsets[b + 1] <= total_tokens,
                      op, ": cu_seqlens must be non-decreasing offsets within [0, ", total_tokens,
                      "] (hidden has ", total_tokens, " tokens), got cu_seqlens[", b, "]=", offsets[b],
                      ", cu_seqlens[", b + 1, "]=", offsets[b + 1]);
  }
}

int64_t check_l2_normalize_args(const at::Tensor& x, std::optional<int64_t> dim) {
  SENTFUSE_CHECK_VALUE(x.dim() == 2, "l2_normalize: x must be [rows, features], got shape ", x.sizes());
  check_float_input("l2_normalize", "x", x);
  if (!dim.has_value()) return x.size(1);
  SENTFUSE_CHECK_VALUE(*dim >= 1 && *dim <= x.size(1), "l2_normalize: dim must be in [1, ", x.size(1),
                    "] for x of shape ", x.sizes(), ", got ", *dim);
  return *dim;
}

TopkArgs check_cosine_topk_args(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                c10::string_view metric, std::optional<double> min_score) {
  constexpr const char* op = "cosine_topk";
  SENTFUSE_CHECK_VALUE(queries.dim() == 2, op, ": queries must be [num_queries, dim], got shape ", queries.sizes());
  SENTFUSE_CHECK_VALUE(corpus.dim() == 2, op, ": corpus must be [corpus_size, dim], got shape ", corpus.sizes());
  SENTFUSE_CHECK_VALUE(queries.size(1) == corpus.size(1), op, ": queries ", queries.sizes(), " and corpus ",
                    corpus.sizes(), " must have the same embedding dimension");
  check_float_input(op, "queries", queries);
  check_float_input(op, "corpus", corpus);
  SENTFUSE_CHECK_TYPE(queries.scalar_type() == corpus.scalar_type(), op, ": queries are ", queries.scalar_type(),
                   " but corpus is ", corpus.scalar_type());
  check_same_device(op, "corpus", corpus, "queries", queries);
  SENTFUSE_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  SENTFUSE_CHECK_VALUE(!min_score.has_value() || !std::isnan(*min_score), op, ": min_score is NaN");
  return {std::min(k, corpus.size(0)), parse_metric(op, metric)};
}

PairsArgs check_threshold_pairs_args(const at::Tensor& a, const std::optional<at::Tensor>& b, double threshold,
                                     c10::string_view metric, std::optional<int64_t> max_pairs) {
  constexpr const char* op = "threshold_pairs";
  check_pair_matrices(op, a, b);
  const Metric m = parse_metric(op, metric);
  SENTFUSE_CHECK_VALUE(std::isfinite(threshold), op, ": threshold must be finite, got ", threshold);
  SENTFUSE_CHECK_VALUE(m == Metric::Dot || (threshold >= -1.0 && threshold <= 1.0), op,
                    ": threshold must be in [-1, 1] for metric='cosine', got ", threshold);
  SENTFUSE_CHECK_VALUE(!max_pairs.has_value() || *max_pairs >= 0, op, ": max_pairs must be >= 0, got ",
                    max_pairs.value_or(0));
  return {fp32_bound(threshold), m};
}

void check_pair_keys_fit(int64_t num_rows, int64_t num_cols) {
  SENTFUSE_CHECK_VALUE(num_cols == 0 || num_rows <= std::numeric_limits<int64_t>::max() / num_cols,
                    "threshold_pairs: ", num_rows, " x ", num_cols, " pairs overflow int64 pair keys");
}

Metric check_pair_scores_args(const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& rows,
                              const at::Tensor& cols, c10::string_view metric) {
  constexpr const char* op = "pair_scores";
  check_pair_matrices(op, a, b);
  const Metric m = parse_metric(op, metric);
  for (const auto* t : {&rows, &cols}) {
    const char* name = t == &rows ? "rows" : "cols";
    SENTFUSE_CHECK_VALUE(t->dim() == 1, op, ": ", name, " must be 1-D, got shape ", t->sizes());
    SENTFUSE_CHECK_TYPE(t->scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", t->scalar_type());
    check_same_device(op, name, *t, "a", a);
  }
  SENTFUSE_CHECK_VALUE(rows.size(0) == cols.size(0), op, ": rows ", rows.sizes(), " and cols ", cols.sizes(),
                    " must have the same length");
  const int64_t n = a.size(0), num_cols = b.has_value() ? b->size(0) : n;
  if (rows.numel() > 0) {
    // One reduction each: out-of-range indices are an error, never a wild read.
    const auto [rmin, rmax] = at::aminmax(rows);
    const auto [cmin, cmax] = at::aminmax(cols);
    const int64_t r0 = rmin.item<int64_t>(), r1 = rmax.item<int64_t>();
    const int64_t c0 = cmin.item<int64_t>(), c1 = cmax.item<int64_t>();
    SENTFUSE_CHECK_INDEX(r0 >= 0 && r1 < n, op, ": rows must lie in [0, ", n, "), got values in [", r0, ", ", r1, "]");
    SENTFUSE_CHECK_INDEX(c0 >= 0 && c1 < num_cols, op, ": cols must lie in [0, ", num_cols, "), got values in [", c0,
                      ", ", c1, "]");
  }
  return m;
}

SpladeArgs check_splade_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                                  c10::string_view pooling) {
  constexpr const char* op = "splade_pool";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 3, op, ": hidden must be [batch, seq, hidden], got shape ", hidden.sizes());
  SENTFUSE_CHECK_VALUE(attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
                        attention_mask.size(1) == hidden.size(1),
                    op, ": attention_mask must be [batch, seq] = [", hidden.size(0), ", ", hidden.size(1),
                    "] to match hidden ", hidden.sizes(), ", got ", attention_mask.sizes());
  SENTFUSE_CHECK_TYPE(!attention_mask.is_complex(), op, ": attention_mask must be integer, bool or float, got ",
                   attention_mask.scalar_type());
  check_same_device(op, "attention_mask", attention_mask, "hidden", hidden);
  return check_splade_projection(op, hidden, weight, bias, activation, pooling);
}

SpladeArgs check_splade_pool_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens,
                                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                         c10::string_view activation, c10::string_view pooling) {
  constexpr const char* op = "splade_pool_varlen";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 2, op, ": hidden must be [total_tokens, hidden], got shape ", hidden.sizes());
  SENTFUSE_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
                    ": cu_seqlens must be [batch + 1] offsets, got shape ", cu_seqlens.sizes());
  SENTFUSE_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
                   ": cu_seqlens must be int32 or int64, got ", cu_seqlens.scalar_type());
  check_same_device(op, "cu_seqlens", cu_seqlens, "hidden", hidden);
  return check_splade_projection(op, hidden, weight, bias, activation, pooling);
}

void check_splade_finite(const char* op, const at::Tensor& tokens, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  SENTFUSE_CHECK_VALUE(at::isfinite(tokens).all().item<bool>(), op,
                    ": hidden holds NaN or inf at a token the mask marks valid");
  SENTFUSE_CHECK_VALUE(at::isfinite(weight).all().item<bool>(), op, ": weight holds NaN or inf");
  SENTFUSE_CHECK_VALUE(!bias.has_value() || at::isfinite(*bias).all().item<bool>(), op, ": bias holds NaN or inf");
}

void fail_non_finite(const char* op, const char* inputs) {
  SENTFUSE_CHECK_VALUE(false, op, ": ", inputs, " contain NaN or inf (a score came out non-finite)");
  std::abort();  // unreachable: keeps [[noreturn]] honest for compilers that do not see through the macro
}

at::Tensor with_unit_feature_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void check_grad_out(const char* op, const at::Tensor& grad_out, int64_t rows, int64_t features, const at::Tensor& like) {
  SENTFUSE_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == rows && grad_out.size(1) == features, op,
                       ": grad_out must be [", rows, ", ", features, "], got shape ", grad_out.sizes());
  SENTFUSE_CHECK_TYPE(grad_out.scalar_type() == like.scalar_type(), op, ": grad_out is ", grad_out.scalar_type(),
                      " but the forward input is ", like.scalar_type());
  check_same_device(op, "grad_out", grad_out, "the forward input", like);
}

int64_t check_contrastive_loss_args(const at::Tensor& anchors, const at::Tensor& candidates, double scale) {
  constexpr const char* op = "contrastive_loss";
  SENTFUSE_CHECK_VALUE(anchors.dim() == 2, op, ": anchors must be [batch, dim], got shape ", anchors.sizes());
  SENTFUSE_CHECK_VALUE(candidates.dim() == 2, op, ": candidates must be [batch * (1 + negatives), dim], got shape ",
                       candidates.sizes());
  SENTFUSE_CHECK_VALUE(anchors.size(1) == candidates.size(1), op, ": anchors ", anchors.sizes(), " and candidates ",
                       candidates.sizes(), " must have the same embedding dimension");
  check_float_input(op, "anchors", anchors);
  check_float_input(op, "candidates", candidates);
  SENTFUSE_CHECK_TYPE(anchors.scalar_type() == candidates.scalar_type(), op, ": anchors are ", anchors.scalar_type(),
                      " but candidates are ", candidates.scalar_type());
  check_same_device(op, "candidates", candidates, "anchors", anchors);
  const int64_t batch = anchors.size(0), rows = candidates.size(0);
  SENTFUSE_CHECK_VALUE(batch >= 1, op, ": anchors must hold at least one row, got shape ", anchors.sizes());
  SENTFUSE_CHECK_VALUE(rows >= batch && rows % batch == 0, op, ": candidates must hold the ", batch,
                       " positives then whole blocks of ", batch, " hard negatives, got ", rows, " rows");
  SENTFUSE_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  return batch;
}

void check_contrastive_loss_saved(const at::Tensor& grad_loss, const at::Tensor& row_lse, const at::Tensor& col_lse,
                                  int64_t batch, bool symmetric, const at::Tensor& anchors) {
  constexpr const char* op = "contrastive_loss_backward";
  SENTFUSE_CHECK_VALUE(grad_loss.numel() == 1, op, ": grad_loss must hold one value, got shape ", grad_loss.sizes());
  const int64_t cols = symmetric ? batch : 0;
  SENTFUSE_CHECK_VALUE(row_lse.dim() == 1 && row_lse.size(0) == batch, op, ": row_lse must be [", batch,
                       "], got shape ", row_lse.sizes());
  SENTFUSE_CHECK_VALUE(col_lse.dim() == 1 && col_lse.size(0) == cols, op, ": col_lse must be [", cols,
                       "] with symmetric=", symmetric, ", got shape ", col_lse.sizes());
  for (const auto* t : {&grad_loss, &row_lse, &col_lse}) {
    const char* name = t == &grad_loss ? "grad_loss" : (t == &row_lse ? "row_lse" : "col_lse");
    SENTFUSE_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t->scalar_type());
    check_same_device(op, name, *t, "anchors", anchors);
  }
}

}  // namespace sentfuse

// ---- maxsim (late interaction) ----
namespace sentfuse {
namespace {

MaxSimScore parse_maxsim_score(const char* op, c10::string_view score) {
  if (score == "maxsim") return MaxSimScore::Sum;
  if (score == "meanmaxsim") return MaxSimScore::Mean;
  SENTFUSE_CHECK_VALUE(false, op, ": score must be 'maxsim' or 'meanmaxsim', got '", std::string(score), "'");
}

}  // namespace

MaxSimArgs check_maxsim_args(const char* op, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                             const at::Tensor& docs, const at::Tensor& cu_seqlens, c10::string_view score) {
  SENTFUSE_CHECK_VALUE(queries.dim() == 3, op, ": queries must be [num_queries, query_tokens, dim], got shape ",
                       queries.sizes());
  SENTFUSE_CHECK_VALUE(docs.dim() == 2, op, ": docs must be packed [total_tokens, dim], got shape ", docs.sizes());
  SENTFUSE_CHECK_VALUE(queries.size(2) == docs.size(1), op, ": queries ", queries.sizes(), " and docs ", docs.sizes(),
                       " must have the same embedding dimension");
  check_float_input(op, "queries", queries);
  check_float_input(op, "docs", docs);
  SENTFUSE_CHECK_TYPE(queries.scalar_type() == docs.scalar_type(), op, ": queries are ", queries.scalar_type(),
                      " but docs are ", docs.scalar_type());
  check_same_device(op, "docs", docs, "queries", queries);
  if (query_mask.has_value()) {
    SENTFUSE_CHECK_VALUE(query_mask->dim() == 2 && query_mask->size(0) == queries.size(0) &&
                             query_mask->size(1) == queries.size(1),
                         op, ": query_mask must be [num_queries, query_tokens] = [", queries.size(0), ", ",
                         queries.size(1), "], got ", query_mask->sizes());
    SENTFUSE_CHECK_TYPE(!query_mask->is_complex(), op, ": query_mask must be bool, integer or float, got ",
                        query_mask->scalar_type());
    check_same_device(op, "query_mask", *query_mask, "queries", queries);
  }
  SENTFUSE_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
                       ": cu_seqlens must be [num_docs + 1] offsets, got shape ", cu_seqlens.sizes());
  SENTFUSE_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
                      ": cu_seqlens must be int32 or int64, got ", cu_seqlens.scalar_type());
  check_same_device(op, "cu_seqlens", cu_seqlens, "queries", queries);
  return {parse_maxsim_score(op, score), cu_seqlens.size(0) - 1};
}

void check_maxsim_offsets(const char* op, const int64_t* offsets, int64_t num_docs, int64_t total_tokens) {
  SENTFUSE_CHECK_VALUE(offsets[0] == 0 && offsets[num_docs] == total_tokens, op,
                       ": cu_seqlens must start at 0 and end at docs' token count ", total_tokens, ", got ",
                       offsets[0], " and ", offsets[num_docs]);
  for (int64_t d = 0; d < num_docs; ++d) {
    SENTFUSE_CHECK_VALUE(offsets[d] < offsets[d + 1], op, ": document ", d, " is empty or reversed (cu_seqlens[", d,
                         "]=", offsets[d], ", cu_seqlens[", d + 1, "]=", offsets[d + 1],
                         "); every document needs at least one token");
  }
}

void check_maxsim_k(int64_t k) { SENTFUSE_CHECK_VALUE(k >= 0, "maxsim_topk: k must be >= 0, got ", k); }

void check_maxsim_candidates(const at::Tensor& candidates, const at::Tensor& queries, int64_t num_docs) {
  constexpr const char* op = "maxsim_candidates";
  SENTFUSE_CHECK_VALUE(candidates.dim() == 2 && candidates.size(0) == queries.size(0), op,
                       ": candidates must be [num_queries, num_candidates] with num_queries = ", queries.size(0),
                       ", got shape ", candidates.sizes());
  SENTFUSE_CHECK_TYPE(candidates.scalar_type() == at::kLong, op, ": candidates must be int64, got ",
                      candidates.scalar_type());
  check_same_device(op, "candidates", candidates, "queries", queries);
  if (candidates.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(candidates);
  const int64_t c0 = lo.item<int64_t>(), c1 = hi.item<int64_t>();
  SENTFUSE_CHECK_INDEX(c0 >= 0 && c1 < num_docs, op, ": candidates must lie in [0, ", num_docs,
                       ") (the number of documents), got values in [", c0, ", ", c1, "]");
}

void check_maxsim_finite(const char* op, const at::Tensor& queries, const at::Tensor& docs) {
  for (const auto* t : {&queries, &docs}) {
    if (t->numel() == 0) continue;
    // min and max propagate NaN and show an inf, and reduce without a temporary the size of the input.
    const auto [lo, hi] = at::aminmax(*t);
    const bool finite = std::isfinite(lo.item<double>()) && std::isfinite(hi.item<double>());
    SENTFUSE_CHECK_VALUE(finite, op, ": ", t == &queries ? "queries" : "docs", " contain NaN or inf");
  }
}

}  // namespace sentfuse

// ---- packed_attention ----
namespace sentfuse {

PackedAttentionArgs check_packed_attention_args(const at::Tensor& qkv, const at::Tensor& lengths, int64_t heads,
                                                double scale, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "packed_attention";
  SENTFUSE_CHECK_VALUE(qkv.dim() == 3, op, ": qkv must be [rows, width, 3 * hidden], got shape ", qkv.sizes());
  check_float_input(op, "qkv", qkv);
  SENTFUSE_CHECK_VALUE(heads >= 1, op, ": heads must be >= 1, got ", heads);
  SENTFUSE_CHECK_VALUE(qkv.size(2) > 0 && qkv.size(2) % (3 * heads) == 0, op, ": qkv's last dimension must be 3 x ",
                       heads, " heads x head size, got shape ", qkv.sizes());
  SENTFUSE_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == qkv.size(0), op, ": lengths must be [", qkv.size(0),
                       "] (one per row of qkv), got shape ", lengths.sizes());
  SENTFUSE_CHECK_TYPE(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt, op,
                      ": lengths must be int32 or int64, got ", lengths.scalar_type());
  check_same_device(op, "lengths", lengths, "qkv", qkv);
  SENTFUSE_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  const at::ScalarType out = out_dtype.value_or(qkv.scalar_type());
  SENTFUSE_CHECK_TYPE(out == at::kFloat || out == qkv.scalar_type(), op, ": out_dtype must be float32 or qkv's dtype (",
                      qkv.scalar_type(), "), got ", out);
  return {qkv.size(0), qkv.size(1), heads, qkv.size(2) / (3 * heads), out};
}

}  // namespace sentfuse

namespace sentfuse {

void check_smooth_quantize_args(const at::Tensor& x, const std::optional<at::Tensor>& inverse_smooth,
                                int64_t max_code) {
  constexpr const char* op = "smooth_quantize";
  SENTFUSE_CHECK_VALUE(max_code >= 1 && max_code <= 255, op, ": max_code must be in [1, 255], got ", max_code);
  SENTFUSE_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  SENTFUSE_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, op, ": x must be [..., K] with K >= 1, got shape ",
                       x.sizes());
  if (!inverse_smooth.has_value()) return;
  const at::Tensor& s = *inverse_smooth;
  SENTFUSE_CHECK_TYPE(s.scalar_type() == at::kFloat, op, ": inverse_smooth must be float32, got ", s.scalar_type());
  SENTFUSE_CHECK_VALUE(s.dim() == 1 && s.size(0) == x.size(-1), op, ": inverse_smooth must be [", x.size(-1),
                       "] (x's last dimension), got shape ", s.sizes());
  check_same_device(op, "inverse_smooth", s, "x", x);
}

void check_smooth_quantize_range(float lo, float hi) {
  SENTFUSE_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi), "smooth_quantize: x (times inverse_smooth) contains "
                       "NaN or inf");
}

}  // namespace sentfuse

// ---- dropout ----
namespace sentfuse {

at::ScalarType check_dropout_args(const at::Tensor& x, double p, const std::optional<at::Tensor>& residual,
                                  std::optional<at::ScalarType> dtype) {
  check_float_input("dropout", "x", x);
  SENTFUSE_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout: p must be in [0, 1], got ", p);
  at::ScalarType out = x.scalar_type();
  if (residual.has_value()) {
    check_float_input("dropout", "residual", *residual);
    check_same_device("dropout", "residual", *residual, "x", x);
    SENTFUSE_CHECK_VALUE(residual->sizes() == x.sizes(), "dropout: residual must have x's shape ", x.sizes(),
                         ", got ", residual->sizes());
    out = at::promote_types(out, residual->scalar_type());
  }
  if (dtype.has_value()) {
    const auto dt = *dtype;
    SENTFUSE_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                        "dropout: dtype must be float32, float16 or bfloat16, got ", dt);
    out = dt;
  }
  return out;
}

}  // namespace sentfuse
