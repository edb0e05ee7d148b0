// Widening loads from fp32/fp16/bf16 storage, written so that the compiler can vectorize them.
#pragma once

#include <cstdint>
#include <cstring>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace sentfuse {

inline float load_float(const float* p, int64_t i) { return p[i]; }
// bf16 is the top half of an fp32.
inline float load_float(const c10::BFloat16* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float load_float(const c10::Half* p, int64_t i) { return static_cast<float>(p[i]); }

}  // namespace sentfuse
