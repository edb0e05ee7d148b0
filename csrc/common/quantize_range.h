// smooth_quantize's one formula from a tensor's range to its uint8 codes, shared by the CPU and CUDA hosts and
// mirrored by reference.smooth_quantize: asymmetric, the range widened to hold 0 (so 0 is exact), max_code steps
// (255 by default).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace sentfuse {

struct Quint8Range {
  float scale;          // a code step, in x's units
  float inverse_scale;  // codes are round(x * inverse_scale) + zero_point, clamped to [0, max_code]
  int32_t zero_point;
  int32_t max_code;
};

// max_code: the largest code, 255 (uint8), or 127 where the codes must stay 7-bit (int8 products on CPUs without
// VNNI, whose u8 x s8 pair sums saturate at int16: 2 x 127 x 127 fits).
inline Quint8Range quint8_range(float lo, float hi, int32_t max_code = 255) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  const float top = static_cast<float>(max_code);
  float scale = (hi - lo) / top;
  if (!(scale > 0.0f) || !std::isfinite(1.0f / scale)) scale = 1.0f;  // all zeros (or denormal): any scale is exact
  const float zero = std::nearbyint(-lo / scale);
  return {scale, 1.0f / scale, static_cast<int32_t>(std::clamp(zero, 0.0f, top)), max_code};
}

}  // namespace sentfuse
