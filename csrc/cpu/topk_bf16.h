// cosine_topk's bf16 scan on the CPU (bf16_rescore): bf16 score tiles on the matrix units find a provable
// superset of the answer, which is rescored in fp32, so the result is the fp32 path's.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/metric.h"
#include "cpu/topk_select.h"

namespace sentfuse {

// Bound on |bf16-tile cosine - fp32 score| for unit rows: both inputs rounded to bf16 (2u + u^2), the
// product rounded to bf16 once more (u) where the tile stores bf16 scores (ATen's GEMM; sentfuse's blocks keep
// their fp32 accumulators), fp32 accumulation over D terms in both the tile and the fp32 path's score, and
// 1% slack (which also covers the unit rows' own fp32 rounding).
inline float bf16_error_bound(int64_t D, bool bf16_scores) {
  const double u = std::ldexp(1.0, -8);  // bf16 unit roundoff
  return static_cast<float>(1.01 * ((bf16_scores ? 3 : 2) * u + u * u + D * std::ldexp(1.0, -23)));
}

// q [M, D] fp32 (unit rows under Metric::Cosine), corpus [N, D] as given: feeds each query's candidates for its
// top-k  with their exact fp32 scores, in increasing index order, to tops[i]. exclude_self skips the pair
// i + query_offset == j + corpus_offset; min_score (fp32 bound, -inf for none) is the lowest score wanted.
// Returns false on a non-finite score.
bool bf16_scan(const at::Tensor& q, const at::Tensor& corpus, int64_t k, Metric metric, bool exclude_self,
               int64_t query_offset, int64_t corpus_offset, float min_score, std::vector<TopK>& tops);

}  // namespace sentfuse
