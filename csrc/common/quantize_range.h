// smooth_quantize's one formula from a tensor's range to its uint8 codes, shared by the CPU and CUDA hosts and
// mirrored by reference.smooth_quantize: asymmetric, the range widened to hold 0 (so 0 is exact), 255 steps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sentfuse {

struct Quint8Range {
  float scale;          // a code step, in x's units
  float inverse_scale;  // codes are round(x * inverse_scale) + zero_point, clamped to [0, 255]
  int32_t zero_point;
};

inline Quint8Range quint8_range(float lo, float hi) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  float scale = (hi - lo) / 255.0f;
  if (!(scale > 0.0f) || !std::isfinite(1.0f / scale)) scale = 1.0f;  // all zeros (or denormal): any scale is exact
  const float zero = std::nearbyint(-lo / scale);
  return {scale, 1.0f / scale, static_cast<int32_t>(std::clamp(zero, 0.0f, 255.0f))};
}

}  // namespace sentfuse
