// Argument checks shared by the CPU and CUDA pair_scores entry points.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "pairs_args.h"

namespace sentfuse {

// a [N, D], b [M, D] or none (a against itself), rows / cols [P] int64 indices into a / b.
inline void check_pair_scores_args(const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& rows,
                                   const at::Tensor& cols) {
  check_pair_matrices("pair_scores", a, b);
  for (const auto* t : {&rows, &cols}) {
    const char* name = t == &rows ? "rows" : "cols";
    TORCH_CHECK_VALUE(t->dim() == 1, "pair_scores: ", name, " must be 1-D, got shape ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == at::kLong, "pair_scores: ", name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == a.device(), "pair_scores: ", name, " is on ", t->device(), " but a is on ",
                      a.device());
  }
  TORCH_CHECK_VALUE(rows.size(0) == cols.size(0), "pair_scores: rows ", rows.sizes(), " and cols ", cols.sizes(),
                    " must have the same length");
  const int64_t n = a.size(0), m = b.has_value() ? b->size(0) : n;
  if (rows.numel() > 0) {
    // One reduction each: out-of-range indices are an error, never a wild read.
    const auto [rmin, rmax] = at::aminmax(rows);
    const auto [cmin, cmax] = at::aminmax(cols);
    const int64_t r0 = rmin.item<int64_t>(), r1 = rmax.item<int64_t>();
    const int64_t c0 = cmin.item<int64_t>(), c1 = cmax.item<int64_t>();
    TORCH_CHECK_INDEX(r0 >= 0 && r1 < n, "pair_scores: rows must lie in [0, ", n, "), got values in [", r0, ", ",
                      r1, "]");
    TORCH_CHECK_INDEX(c0 >= 0 && c1 < m, "pair_scores: cols must lie in [0, ", m, "), got values in [", c0, ", ",
                      c1, "]");
  }
}

}  // namespace sentfuse
