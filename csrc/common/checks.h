// Argument checks shared by the CPU and CUDA host entry points, so both backends accept and reject exactly
// the same inputs with the same messages (ValueError / TypeError / IndexError in Python, naming the argument).
//
// Declared here, defined once in common/checks.cpp, which only the C++ compiler builds: no check is ever
// compiled by nvcc, and none is an inline function with one copy per translation unit.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "common/metric.h"

namespace sentfuse {

// Pooling modes, in reference.py's POOLING_MODES order.
enum class PoolMode : int { Mean = 0, Max, Cls, LastToken, MeanSqrtLen, WeightedMean };

// hidden [B, L, H] float, attention_mask [B, L]: returns the parsed mode.
PoolMode check_masked_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, c10::string_view mode,
                                int64_t skip_tokens);
// hidden [T, H] float, cu_seqlens [B + 1] int32/int64: returns the parsed mode. Offsets are checked by the
// kernels' callers where reading them costs no device sync.
PoolMode check_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens, c10::string_view mode,
                           int64_t skip_tokens);
// cu_seqlens values [B + 1] (host copy): non-decreasing offsets within [0, total_tokens]; op names the caller.
void check_varlen_offsets(const int64_t* offsets, int64_t batch, int64_t total_tokens,
                          const char* op = "masked_pool_varlen");
// x [N, D] float: returns the feature count kept, all D or the first `dim` (Matryoshka truncation).
int64_t check_l2_normalize_args(const at::Tensor& x, std::optional<int64_t> dim);

struct TopkArgs {
  int64_t k_out;  // result columns, min(k, N)
  Metric metric;
};
TopkArgs check_cosine_topk_args(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                c10::string_view metric, std::optional<double> min_score);

struct PairsArgs {
  float threshold;  // as scores are compared with it (>=), see fp32_bound
  Metric metric;
};
PairsArgs check_threshold_pairs_args(const at::Tensor& a, const std::optional<at::Tensor>& b, double threshold,
                                     c10::string_view metric, std::optional<int64_t> max_pairs);
// Pairs are ordered and ranked by the key row * num_cols + col, which must fit in int64.
void check_pair_keys_fit(int64_t num_rows, int64_t num_cols);

// a [N, D], b [M, D] or none, rows / cols [P] int64 within range: returns the metric.
Metric check_pair_scores_args(const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& rows,
                              const at::Tensor& cols, c10::string_view metric);

// Activation applied to each logit before pooling, in reference.py's SPLADE_ACTIVATIONS order:
// relu -> log1p(relu(x)); log1p_relu -> log1p(log1p(relu(x))) (sentence-transformers' SpladePooling).
enum class SpladeActivation : int { Relu = 0, Log1pRelu };
// How token activations are reduced over a sequence, in reference.py's SPLADE_POOLINGS order.
enum class SpladePooling : int { Max = 0, Sum };

struct SpladeArgs {
  SpladeActivation activation;
  SpladePooling pooling;
  int log1p_count() const { return activation == SpladeActivation::Relu ? 1 : 2; }
};

// hidden [B, L, H], attention_mask [B, L], weight [V, H], bias [V] or none.
SpladeArgs check_splade_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                                  c10::string_view pooling);
// hidden [T, H], cu_seqlens [B + 1] int32/int64, weight [V, H], bias [V] or none.
SpladeArgs check_splade_pool_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens,
                                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                         c10::string_view activation, c10::string_view pooling);
// NaN or inf in the pooled tokens, the weight or the bias raise an error naming the argument (padding is
// never read, so it may hold anything).
void check_splade_finite(const char* op, const at::Tensor& tokens, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias);

// An op's kernels found a non-finite score: the inputs hold NaN or inf.
[[noreturn]] void fail_non_finite(const char* op, const char* inputs);

// Kernels read rows with arbitrary outer strides but need unit stride along features.
at::Tensor with_unit_feature_stride(const at::Tensor& t);

// grad_out [rows, features] with like's dtype and device: the incoming gradient of a pooled or normalized
// output (the backward ops of masked_pool, masked_pool_varlen and l2_normalize).
void check_grad_out(const char* op, const at::Tensor& grad_out, int64_t rows, int64_t features, const at::Tensor& like);

// anchors [B, D], candidates [B * (1 + n), D] (the positives, then n blocks of B hard negatives), one float dtype
// and device, B >= 1, finite scale: returns B.
int64_t check_contrastive_loss_args(const at::Tensor& anchors, const at::Tensor& candidates, double scale);
// contrastive_loss_backward's grad_loss (one element) and the forward's row_lse [B] and col_lse ([B] when
// symmetric, else [0]), fp32 on anchors' device.
void check_contrastive_loss_saved(const at::Tensor& grad_loss, const at::Tensor& row_lse, const at::Tensor& col_lse,
                                  int64_t batch, bool symmetric, const at::Tensor& anchors);

}  // namespace sentfuse

// ---- maxsim (late interaction) ----
namespace sentfuse {

// How a query's per-token maxima combine: summed (MaxSim) or averaged over its valid tokens (MeanMaxSim),
// spelled as sentence-transformers' similarity_fn_name ("maxsim" / "meanmaxsim").
enum class MaxSimScore : int { Sum = 0, Mean };

struct MaxSimArgs {
  MaxSimScore score;
  int64_t num_docs;  // N, from cu_seqlens [N + 1]
};
// queries [Q, L, D] float, query_mask [Q, L] or none, docs [T, D] of queries' dtype, cu_seqlens [N + 1]
// int32/int64, all on one device. `op` names the caller in messages.
MaxSimArgs check_maxsim_args(const char* op, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                             const at::Tensor& docs, const at::Tensor& cu_seqlens, c10::string_view score);
// cu_seqlens values [N + 1] (host copy): starts at 0, ends at total_tokens, every document non-empty.
void check_maxsim_offsets(const char* op, const int64_t* offsets, int64_t num_docs, int64_t total_tokens);
// maxsim_topk's k >= 0.
void check_maxsim_k(int64_t k);
// candidates [Q, C] int64 on queries' device, values in [0, num_docs).
void check_maxsim_candidates(const at::Tensor& candidates, const at::Tensor& queries, int64_t num_docs);
// Queries and documents must be finite (one min / max reduction each), so the kernels never have to tell a
// NaN apart from a lost max.
void check_maxsim_finite(const char* op, const at::Tensor& queries, const at::Tensor& docs);

}  // namespace sentfuse

// ---- packed_attention (self-attention heads of a packed QKV product) ----
namespace sentfuse {

struct PackedAttentionArgs {
  int64_t rows, width, heads, head_size;
  at::ScalarType out_dtype;
};
// qkv [rows, width, 3 * heads * head_size] float (q, k, v, each heads x head_size), lengths [rows] int32/int64 on
// qkv's device, heads >= 1, finite scale, out_dtype float32 or qkv's dtype (none: qkv's).
PackedAttentionArgs check_packed_attention_args(const at::Tensor& qkv, const at::Tensor& lengths, int64_t heads,
                                                double scale, std::optional<at::ScalarType> out_dtype);

}  // namespace sentfuse

// ---- smooth_quantize (the int8 compute mode's input quantization) ----
namespace sentfuse {

// x [..., K] float32 with K >= 1, inverse_smooth [K] float32 on x's device or none,
// max_code in [1, 255].
void check_smooth_quantize_args(const at::Tensor& x, const std::optional<at::Tensor>& inverse_smooth,
                                int64_t max_code);
// The range found: x (times inverse_smooth) must be finite, since its codes would be meaningless.
void check_smooth_quantize_range(float lo, float hi);

}  // namespace sentfuse

// ---- dropout ----
namespace sentfuse {

// x float, p in [0, 1], residual none or x's shape, float, on x's device; dtype none or a float type.
// Returns the output dtype: dtype, else the promoted type of x and residual.
at::ScalarType check_dropout_args(const at::Tensor& x, double p, const std::optional<at::Tensor>& residual,
                                  std::optional<at::ScalarType> dtype);

}  // namespace sentfuse
