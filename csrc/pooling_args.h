// Argument parsing and checks shared by the CPU and CUDA pooling entry points, so both backends
// accept and reject exactly the same inputs with the same messages.
#pragma once

#include <optional>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

namespace sentfuse {

enum class PoolMode : int { Mean = 0, Max, Cls, LastToken, MeanSqrtLen, WeightedMean };

inline PoolMode parse_pool_mode(c10::string_view mode) {
  if (mode == "mean") return PoolMode::Mean;
  if (mode == "max") return PoolMode::Max;
  if (mode == "cls") return PoolMode::Cls;
  if (mode == "lasttoken") return PoolMode::LastToken;
  if (mode == "mean_sqrt_len_tokens") return PoolMode::MeanSqrtLen;
  if (mode == "weightedmean") return PoolMode::WeightedMean;
  TORCH_CHECK_VALUE(false, "masked_pool: mode must be one of mean, max, cls, lasttoken, mean_sqrt_len_tokens, "
                           "weightedmean; got '", std::string(mode), "'");
}

inline void check_float_input(const char* op, const char* name, const at::Tensor& t) {
  auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", dt);
}

inline void check_masked_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, int64_t skip_tokens) {
  TORCH_CHECK_VALUE(hidden.dim() == 3, "masked_pool: hidden must be [batch, seq, hidden], got shape ",
                    hidden.sizes());
  TORCH_CHECK_VALUE(attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
                        attention_mask.size(1) == hidden.size(1),
                    "masked_pool: attention_mask must be [batch, seq] = [", hidden.size(0), ", ", hidden.size(1),
                    "] to match hidden ", hidden.sizes(), ", got ", attention_mask.sizes());
  check_float_input("masked_pool", "hidden", hidden);
  TORCH_CHECK_TYPE(!attention_mask.is_complex(), "masked_pool: attention_mask must be integer, bool or float, got ",
                   attention_mask.scalar_type());
  TORCH_CHECK_VALUE(attention_mask.device() == hidden.device(), "masked_pool: attention_mask is on ",
                    attention_mask.device(), " but hidden is on ", hidden.device());
  TORCH_CHECK_VALUE(skip_tokens >= 0, "masked_pool: skip_tokens must be >= 0, got ", skip_tokens);
}

inline void check_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens, int64_t skip_tokens) {
  TORCH_CHECK_VALUE(hidden.dim() == 2, "masked_pool_varlen: hidden must be [total_tokens, hidden], got shape ",
                    hidden.sizes());
  check_float_input("masked_pool_varlen", "hidden", hidden);
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1,
                    "masked_pool_varlen: cu_seqlens must be [batch + 1] offsets, got shape ", cu_seqlens.sizes());
  TORCH_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong,
                   "masked_pool_varlen: cu_seqlens must be int32 or int64, got ", cu_seqlens.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens.device() == hidden.device(), "masked_pool_varlen: cu_seqlens is on ",
                    cu_seqlens.device(), " but hidden is on ", hidden.device());
  TORCH_CHECK_VALUE(skip_tokens >= 0, "masked_pool_varlen: skip_tokens must be >= 0, got ", skip_tokens);
}

// Feature count kept by l2_normalize: all D, or the first `dim` (Matryoshka truncation).
inline int64_t check_l2_normalize_args(const at::Tensor& x, std::optional<int64_t> dim) {
  TORCH_CHECK_VALUE(x.dim() == 2, "l2_normalize: x must be [rows, features], got shape ", x.sizes());
  check_float_input("l2_normalize", "x", x);
  if (!dim.has_value()) return x.size(1);
  TORCH_CHECK_VALUE(*dim >= 1 && *dim <= x.size(1), "l2_normalize: dim must be in [1, ", x.size(1),
                    "] for x of shape ", x.sizes(), ", got ", *dim);
  return *dim;
}

// Kernels read hidden with arbitrary batch/token strides but need unit stride along features.
inline at::Tensor with_unit_feature_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace sentfuse
