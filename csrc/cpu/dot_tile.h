// Single-threaded fp32 dot-product tile, safe to call from inside at::parallel_for.
#pragma once

#include <cstdint>

namespace sentfuse {

// out[r * ldo + c] = dot(q[r * ldq : + D], x[c * ldx : + D]) for r < m, c < n.
// q: [m, D] row stride ldq; x: [n, D] row stride ldx; out: [m, n] row stride ldo.
void dot_tile(const float* q, int64_t ldq, int64_t m, const float* x, int64_t ldx, int64_t n, int64_t D, float* out,
              int64_t ldo);

}  // namespace sentfuse
