// fp32 numeric bounds shared by every op (host and device code; no torch headers, nothing that throws).
#pragma once

#include <limits>

namespace sentfuse {

// F.normalize's eps: a norm below it divides by eps instead.
constexpr float kNormEps = 1e-12f;

// A double threshold as the fp32 value scores are compared with, as the reference's fp32 tensor vs python
// float comparison does: beyond the fp32 range it saturates to +-inf (a plain cast would be undefined).
inline float fp32_bound(double v) {
  constexpr double big = std::numeric_limits<float>::max();
  if (v > big) return std::numeric_limits<float>::infinity();
  if (v < -big) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

}  // namespace sentfuse
