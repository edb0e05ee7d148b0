// CUDA pair_scores: the fp32 score of each listed (row, col) pair (semantics: reference.py pair_scores).
// One warp per pair: lanes stride over the features, fp32 partial sums, one shuffle reduction.
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dispatch.h"
#include "ops.h"
#include "pair_scores_args.h"

namespace sentfuse {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// x [N, D], y [M, D], rows / cols [P] -> out [P]
template <typename scalar_t>
__global__ void pair_scores_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                   const int64_t* __restrict__ rows, const int64_t* __restrict__ cols,
                                   float* __restrict__ out, int64_t P, int64_t D, bool normalized) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (p >= P) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* u = x + rows[p] * D;
  const scalar_t* v = y + cols[p] * D;
  float dot = 0.f, uu = 0.f, vv = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float a = static_cast<float>(u[d]), b = static_cast<float>(v[d]);
    dot += a * b;
    uu += a * a;
    vv += b * b;
  }
  dot = warp_sum(dot);
  if (!normalized) {
    uu = warp_sum(uu);
    vv = warp_sum(vv);
  }
  // A zero vector scores 0; NaN input stays NaN so that the host check sees it.
  if (lane == 0)
    out[p] = normalized ? dot : (uu > 0.f && vv > 0.f ? dot * rsqrtf(uu) * rsqrtf(vv) : (isfinite(uu + vv) ? 0.f : NAN));
}

}  // namespace

at::Tensor pair_scores_cuda(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in,
                            const at::Tensor& rows_in, const at::Tensor& cols_in, bool normalized) {
  check_pair_scores_args(a_in, b_in, rows_in, cols_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.has_value() ? b_in->contiguous() : a;
  const at::Tensor rows = rows_in.contiguous(), cols = cols_in.contiguous();
  const int64_t P = rows.size(0), D = a.size(1);
  at::Tensor out = at::empty({P}, a.options().dtype(at::kFloat));
  if (P == 0) return out;
  const int64_t blocks = (P + kWarpsPerBlock - 1) / kWarpsPerBlock;
  SENTFUSE_DISPATCH_FLOAT_TYPES(a.scalar_type(), "sentfuse_pair_scores_cuda", [&] {
    pair_scores_kernel<scalar_t><<<blocks, kWarpsPerBlock * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), cols.data_ptr<int64_t>(),
        out.data_ptr<float>(), P, D, normalized);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(at::isfinite(out).all().item<bool>(), "pair_scores: a or b contain NaN or inf in a listed row");
  return out;
}

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("pair_scores", &pair_scores_cuda); }

}  // namespace sentfuse
