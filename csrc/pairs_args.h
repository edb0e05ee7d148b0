// Argument checks shared by the CPU and CUDA threshold_pairs and pair_scores entry points.
#pragma once

#include <cmath>
#include <limits>
#include <optional>

#include <ATen/ATen.h>

#include "pooling_args.h"

namespace sentfuse {

// a [N, D] and b [M, D] (or none: a against itself): 2-D float matrices of one dtype, dimension and device.
inline void check_pair_matrices(const char* op, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  TORCH_CHECK_VALUE(a.dim() == 2, op, ": a must be [rows, dim], got shape ", a.sizes());
  check_float_input(op, "a", a);
  if (!b.has_value()) return;
  TORCH_CHECK_VALUE(b->dim() == 2, op, ": b must be [rows, dim], got shape ", b->sizes());
  TORCH_CHECK_VALUE(a.size(1) == b->size(1), op, ": a ", a.sizes(), " and b ", b->sizes(),
                    " must have the same embedding dimension");
  check_float_input(op, "b", *b);
  TORCH_CHECK_TYPE(a.scalar_type() == b->scalar_type(), op, ": a is ", a.scalar_type(), " but b is ",
                   b->scalar_type());
  TORCH_CHECK_VALUE(a.device() == b->device(), op, ": a is on ", a.device(), " but b is on ", b->device());
}

// Checks threshold_pairs' arguments and returns the threshold as the fp32 value
// scores are compared with (>=), as the reference's fp32 tensor >= python float does.
inline float check_threshold_pairs_args(const at::Tensor& a, const std::optional<at::Tensor>& b, double threshold,
                                        bool normalized, std::optional<int64_t> max_pairs) {
  check_pair_matrices("threshold_pairs", a, b);
  TORCH_CHECK_VALUE(std::isfinite(threshold), "threshold_pairs: threshold must be finite, got ", threshold);
  TORCH_CHECK_VALUE(normalized || (threshold >= -1.0 && threshold <= 1.0),
                    "threshold_pairs: threshold must be in [-1, 1] for cosine scores (normalized=False), got ",
                    threshold);
  TORCH_CHECK_VALUE(!max_pairs.has_value() || *max_pairs >= 0, "threshold_pairs: max_pairs must be >= 0, got ",
                    max_pairs.value_or(0));
  // A dot-product threshold beyond the fp32 range compares as +-inf, as it does in the reference.
  const double big = std::numeric_limits<float>::max();
  if (threshold > big) return std::numeric_limits<float>::infinity();
  if (threshold < -big) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(threshold);
}

// Pairs are ordered and ranked by the key row * num_cols + col, which must fit in int64.
inline void check_pair_keys_fit(int64_t num_rows, int64_t num_cols) {
  TORCH_CHECK_VALUE(num_cols == 0 || num_rows <= std::numeric_limits<int64_t>::max() / num_cols,
                    "threshold_pairs: ", num_rows, " x ", num_cols, " pairs overflow int64 pair keys");
}

}  // namespace sentfuse
