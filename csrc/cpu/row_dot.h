// One fp32 dot product of two stored rows (fp32/fp16/bf16), shared by pair_scores and top-k's rescoring.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/load_float.h"

namespace sentfuse {

constexpr int kDotLanes = 8;  // independent partial sums, so the loop vectorizes without reassociating

// x . y over D features with fp32 accumulation; with kNorms the cosine (a zero row scores 0, NaN stays NaN).
template <bool kNorms, typename x_t, typename y_t>
inline float row_dot(const x_t* x, const y_t* y, int64_t D) {
  float dot[kDotLanes] = {}, xx[kDotLanes] = {}, yy[kDotLanes] = {};
  int64_t d = 0;
  for (; d + kDotLanes <= D; d += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) {
      const float u = load_float(x, d + l), v = load_float(y, d + l);
      dot[l] += u * v;
      if (kNorms) xx[l] += u * u, yy[l] += v * v;
    }
  }
  for (int l = 0; d < D; ++d, ++l) {
    const float u = load_float(x, d), v = load_float(y, d);
    dot[l] += u * v;
    if (kNorms) xx[l] += u * u, yy[l] += v * v;
  }
  float s = 0.f, nx = 0.f, ny = 0.f;
  for (int l = 0; l < kDotLanes; ++l) s += dot[l], nx += xx[l], ny += yy[l];
  if (!kNorms) return s;
  if (nx > 0.f && ny > 0.f) return s / (std::sqrt(nx) * std::sqrt(ny));
  return std::isfinite(nx + ny) ? 0.f : NAN;
}

}  // namespace sentfuse
