// Single-threaded fp32 dot-product tiles for the top-k and similarity kernels.
//
// Why not at::mm: these tiles run inside at::parallel_for, and a BLAS call there either spawns its
// own threads on top of torch's (oversubscription) or pays a fork/join per small tile. This kernel
// needs no packing: a 3 x 4 block of (query, corpus) pairs is accumulated along D in 8-wide
// vectors (12 accumulators, 3 query registers, 1 corpus register), so each corpus load feeds 3 FMAs
// and each query load 4. Built twice, AVX2+FMA and baseline, picked once at run time.
#include "cpu/dot_tile.h"

#include <algorithm>

namespace sentfuse {
namespace {

typedef float v8f __attribute__((vector_size(32)));

inline __attribute__((always_inline)) v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline __attribute__((always_inline)) float hsum(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// out[r][c] = dot(q[r], x[c]) for r < MR, c < NR.
template <int MR, int NR>
inline __attribute__((always_inline)) void micro_tile(const float* q, int64_t ldq, const float* x, int64_t ldx,
                                                      int64_t D, float* out, int64_t ldo) {
  v8f acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = v8f{};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    v8f qv[MR];
    for (int r = 0; r < MR; ++r) qv[r] = load8(q + r * ldq + d);
    for (int c = 0; c < NR; ++c) {
      const v8f xv = load8(x + c * ldx + d);
      for (int r = 0; r < MR; ++r) acc[r][c] += qv[r] * xv;
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t t = d; t < D; ++t) s += q[r * ldq + t] * x[c * ldx + t];
      out[r * ldo + c] = s;
    }
  }
}

template <int MR>
inline __attribute__((always_inline)) void row_block(const float* q, int64_t ldq, const float* x, int64_t ldx,
                                                     int64_t n, int64_t D, float* out, int64_t ldo) {
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) micro_tile<MR, 4>(q, ldq, x + c * ldx, ldx, D, out + c, ldo);
  switch (n - c) {
    case 3: micro_tile<MR, 3>(q, ldq, x + c * ldx, ldx, D, out + c, ldo); break;
    case 2: micro_tile<MR, 2>(q, ldq, x + c * ldx, ldx, D, out + c, ldo); break;
    case 1: micro_tile<MR, 1>(q, ldq, x + c * ldx, ldx, D, out + c, ldo); break;
    default: break;
  }
}

inline __attribute__((always_inline)) void dot_tile_impl(const float* q, int64_t ldq, int64_t m, const float* x,
                                                         int64_t ldx, int64_t n, int64_t D, float* out,
                                                         int64_t ldo) {
  // 64 corpus rows at a time stay in L1/L2 while every query row block passes over them.
  constexpr int64_t kColumnBlock = 64;
  for (int64_t c0 = 0; c0 < n; c0 += kColumnBlock) {
    const int64_t nc = std::min(kColumnBlock, n - c0);
    const float* xb = x + c0 * ldx;
    int64_t r = 0;
    for (; r + 3 <= m; r += 3) row_block<3>(q + r * ldq, ldq, xb, ldx, nc, D, out + r * ldo + c0, ldo);
    if (m - r == 2) row_block<2>(q + r * ldq, ldq, xb, ldx, nc, D, out + r * ldo + c0, ldo);
    if (m - r == 1) row_block<1>(q + r * ldq, ldq, xb, ldx, nc, D, out + r * ldo + c0, ldo);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void dot_tile_avx2(const float* q, int64_t ldq, int64_t m, const float* x,
                                                       int64_t ldx, int64_t n, int64_t D, float* out, int64_t ldo) {
  dot_tile_impl(q, ldq, m, x, ldx, n, D, out, ldo);
}
#endif

void dot_tile_baseline(const float* q, int64_t ldq, int64_t m, const float* x, int64_t ldx, int64_t n, int64_t D,
                       float* out, int64_t ldo) {
  dot_tile_impl(q, ldq, m, x, ldx, n, D, out, ldo);
}

using DotTileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);

DotTileFn pick_dot_tile() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return dot_tile_avx2;
#endif
  return dot_tile_baseline;
}

}  // namespace

void dot_tile(const float* q, int64_t ldq, int64_t m, const float* x, int64_t ldx, int64_t n, int64_t D, float* out,
              int64_t ldo) {
  static const DotTileFn fn = pick_dot_tile();
  fn(q, ldq, m, x, ldx, n, D, out, ldo);
}

}  // namespace sentfuse
