// CUDA pair_scores kernel (semantics: reference.py pair_scores). One warp per pair: lanes stride over the
// features, fp32 partial sums, one shuffle reduction, then the cosine epilogue threshold_pairs uses.
#include <cmath>
#include <cstdint>

#include "cuda/pair_scores.h"
#include "cuda/reduce.cuh"

namespace sentfuse {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename scalar_t>
__global__ void pair_scores_kernel(const scalar_t* __restrict__ x,     // [N, D]
                                   const scalar_t* __restrict__ y,     // [M, D]
                                   const int64_t* __restrict__ rows,   // [P]
                                   const int64_t* __restrict__ cols,   // [P]
                                   int64_t P, int64_t D, Metric metric,
                                   float* __restrict__ out) {          // [P]
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (p >= P) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* u = x + rows[p] * D;
  const scalar_t* v = y + cols[p] * D;
  float dot = 0.f, uu = 0.f, vv = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float a = static_cast<float>(u[d]), b = static_cast<float>(v[d]);
    dot = fmaf(a, b, dot);
    uu = fmaf(a, a, uu);
    vv = fmaf(b, b, vv);
  }
  dot = warp_sum(dot);
  if (metric == Metric::Cosine) {
    uu = warp_sum(uu);
    vv = warp_sum(vv);
  }
  if (lane != 0) return;
  // A non-finite dot product (NaN or inf input) stays visible to the host check.
  if (!isfinite(dot) || metric == Metric::Dot) {
    out[p] = dot;
  } else {
    out[p] = cosine_from_dot(dot, norm_from_sum_sq(uu), norm_from_sum_sq(vv));
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_pair_scores(const scalar_t* x, const scalar_t* y, const int64_t* rows, const int64_t* cols,
                               int64_t P, int64_t D, Metric metric, float* out, cudaStream_t stream) {
  const int64_t blocks = (P + kWarpsPerBlock - 1) / kWarpsPerBlock;
  pair_scores_kernel<scalar_t><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(x, y, rows, cols, P, D, metric, out);
  return cudaGetLastError();
}

template cudaError_t launch_pair_scores<float>(const float*, const float*, const int64_t*, const int64_t*, int64_t,
                                               int64_t, Metric, float*, cudaStream_t);
template cudaError_t launch_pair_scores<c10::Half>(const c10::Half*, const c10::Half*, const int64_t*,
                                                   const int64_t*, int64_t, int64_t, Metric, float*, cudaStream_t);
template cudaError_t launch_pair_scores<c10::BFloat16>(const c10::BFloat16*, const c10::BFloat16*, const int64_t*,
                                                       const int64_t*, int64_t, int64_t, Metric, float*,
                                                       cudaStream_t);

}  // namespace sentfuse
