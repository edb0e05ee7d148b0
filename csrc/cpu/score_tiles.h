// Shared by the CPU kernels that scan tiles of cosine scores (cpu/topk.cpp, cpu/pairs.cpp).
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>

namespace sentfuse {
namespace tiles {

// Tile shape, measured: BLAS reaches its peak near 1024 x 4096; smaller tiles lose up to 30%.
constexpr int64_t kRows = 1024;          // left-hand rows per tile at most
constexpr int64_t kFloats = 1 << 22;     // scores per tile at most: 16 MB
constexpr int64_t kMinCols = 2048;       // right-hand rows per tile at least
constexpr int64_t kRejectChunk = 16;     // scores tested per vectorized reject step

// Columns per tile for `rows` rows per tile and `cols` right-hand rows in all.
inline int64_t columns(int64_t rows, int64_t cols) { return std::min(cols, std::max(kMinCols, kFloats / rows)); }

// 1 / ||row|| per row of x [R, D] as fp32; 0 for a zero row, so that it scores 0 rather than NaN.
inline at::Tensor inverse_norms(const at::Tensor& x) {
  const at::Tensor norms = at::linalg_vector_norm(x, 2, {1}, false, at::kFloat);
  return at::where(norms > 0, norms.reciprocal(), at::zeros_like(norms));
}

// One branch-free pass over scores[0:n]: true when any score passes the threshold (>= when kInclusive,
// else >) or is NaN/inf (|s| <= FLT_MAX fails), so that most chunks are rejected without a branch each.
template <bool kInclusive>
inline bool chunk_needs_look(const float* scores, int64_t n, float threshold) {
  int hit = 0;
  for (int64_t t = 0; t < n; ++t)
    hit |= (kInclusive ? scores[t] >= threshold : scores[t] > threshold) | !(std::fabs(scores[t]) <= FLT_MAX);
  return hit != 0;
}

}  // namespace tiles
}  // namespace sentfuse
